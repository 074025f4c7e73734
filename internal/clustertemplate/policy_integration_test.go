package clustertemplate

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/deploy"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// TestIntegrationPolicyRefusesPastTheTemplate proves the generated policy holds the template's
// limits in the API server: builders as a job renders them under the template are admitted for
// both platforms, and builders of a job that edited its inputs past the template (or dropped it)
// are refused, each naming the limit; the same for its cache volumes (size and slots).
func TestIntegrationPolicyRefusesPastTheTemplate(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := localcluster.ForTest(t)
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	ns := c.CreateNamespace(ctx, t, "tmpl")
	c.ApplyShippedRBAC(ctx, t, ns, "runner", "../../deploy/rbac.yaml")
	runnerPod := c.CreateRunnerPod(ctx, t, ns, "runner-pod", "runner")
	// The token the kubelet mounts into the runner pod, bound to it: the policy lets it create
	// builders (and claim cache volumes) owned by that pod.
	saConfig, err := c.PodServiceAccountConfig(ctx, runnerPod)
	if err != nil {
		t.Fatal(err)
	}
	runner := kubernetes.NewForConfigOrDie(saConfig)

	priorityClass := "seb-" + ns
	if _, err := admin.SchedulingV1().PriorityClasses().Create(ctx, &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: priorityClass}, Value: 1000}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admin.SchedulingV1().PriorityClasses().Delete(context.Background(), priorityClass, metav1.DeleteOptions{})
	})

	tmpl, err := Parse([]byte(`apiVersion: setup-ephemeral-buildkit.io/v1alpha1
kind: ClusterTemplate
image: `+c.Info.Images["buildkit"]+`
openTelemetry: {endpoint: "http://otel-collector.observability:4317"}
resources:
  default: {requests: {memory: 256Mi}}
  maximum: {memory: 2Gi, cpu: "2"}
maxLifetime: {default: 1h, maximum: 2h}
terminationGracePeriod: {default: 5s, maximum: 10m}
platforms:
  linux/arm64:
    nodeSelector: {node.example.com/pool: arm64}
    tolerations: [{key: arch, operator: Equal, value: arm64, effect: NoSchedule}]
    priorityClassName: `+priorityClass+`
cache: {size: {default: 2Gi, maximum: 5Gi}, maxSlots: 2}
jobInputs: [requests, limits, max-lifetime, cache, cache-size]
`), ns+"/setup-ephemeral-buildkit")
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := Policy(deploy.AdmissionPolicy, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	c.ApplyAdmissionPolicyIn(ctx, t, ns, manifest)

	owner := &k8sprov.RunnerPod{Name: runnerPod.Name, Namespace: ns, UID: types.UID(runnerPod.UID)}
	plan := func(jobID string, in k8sprov.Inputs, underTemplate bool) k8sprov.Plan {
		t.Helper()
		in.Platforms = "linux/amd64,linux/arm64"
		opts, err := k8sprov.ParseOptions(testJob, in)
		if err != nil {
			t.Fatal(err)
		}
		opts.Job.JobID = jobID
		if underTemplate {
			if opts, err = tmpl.Apply(in, opts); err != nil {
				t.Fatalf("Apply: %v", err)
			}
		}
		plan, err := k8sprov.NewPlan(opts, k8sprov.Resolution{Namespace: ns, Owner: owner, CreatedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return plan
	}
	render := func(jobID string, in k8sprov.Inputs, underTemplate bool) []*corev1.Pod {
		t.Helper()
		plan := plan(jobID, in, underTemplate)
		var pods []*corev1.Pod
		for _, pl := range plan.Platforms {
			pod, err := k8sprov.RenderPod(plan, pl)
			if err != nil {
				t.Fatal(err)
			}
			pods = append(pods, pod)
		}
		return pods
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	const refusal = "may only create builders within the cluster template "

	// The job edited its inputs past the template and renders without it. The policy takes a
	// moment to reach the admission chain: wait for its first refusal.
	past := render("past", k8sprov.Inputs{Image: c.Info.Images["buildkit"], Limits: "memory=4Gi", MaxLifetime: "6h", TerminationGracePeriod: "30m"}, false)
	deadline := time.Now().Add(30 * time.Second)
	var refused error
	for {
		_, refused = runner.CoreV1().Pods(ns).Create(ctx, past[1], dryRun)
		if refused != nil && strings.Contains(refused.Error(), refusal) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if refused == nil || !apierrors.IsInvalid(refused) {
		t.Fatalf("arm64 builder past the template: %v, want the policy's refusal", refused)
	}
	for _, want := range []string{
		"limits.memory 4Gi above the maximum 2Gi",
		"no limits.cpu (the maximum is 2)",
		"activeDeadlineSeconds 21600 above the maxLifetime maximum 7200",
		"terminationGracePeriodSeconds 1800 above the terminationGracePeriod maximum 600",
		"no node label node.example.com/pool=arm64 in its nodeSelector",
		"priorityClassName (none) instead of " + priorityClass,
	} {
		if !strings.Contains(refused.Error(), want) {
			t.Errorf("the refusal lacks %q:\n%v", want, refused)
		}
	}
	t.Logf("arm64 builder past the template refused: %v", refused)

	// Within the template, both platforms are admitted (the arm64 one with its pool, toleration,
	// priority class and the template's environment).
	for _, pod := range render("within", k8sprov.Inputs{Requests: "cpu=1", Limits: "memory=2Gi", MaxLifetime: "2h"}, true) {
		if _, err := runner.CoreV1().Pods(ns).Create(ctx, pod, dryRun); err != nil {
			t.Errorf("builder %s within the template refused: %v", pod.Labels[k8sprov.LabelArch], err)
		}
	}

	// One edit at a time, each past one limit the client refuses too.
	within := func() *corev1.Pod {
		return render("edit", k8sprov.Inputs{}, true)[1]
	}
	for _, tc := range []struct {
		name string
		edit func(*corev1.Pod)
		want string
	}{
		{"a toleration the template does not give", func(p *corev1.Pod) {
			p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: "gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule})
		}, "a toleration of gpu"},
		{"a request and limit above the maximum", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("3")
			p.Spec.Containers[0].Resources.Limits[corev1.ResourceCPU] = resource.MustParse("3")
		}, "limits.cpu 3 above the maximum 2; requests.cpu 3 above the maximum 2"},
		{"an environment variable of its own", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "LD_PRELOAD", Value: "/tmp/x.so"})
		}, "environment variable LD_PRELOAD"},
		{"another image", func(p *corev1.Pod) { p.Spec.Containers[0].Image = k8sprov.DefaultRootlessImage }, "has image " + k8sprov.DefaultRootlessImage},
	} {
		pod := within()
		if pod.Labels[k8sprov.LabelArch] != platform.MustParse("linux/arm64").Slug() {
			t.Fatalf("pod %s is not arm64's", pod.Name)
		}
		tc.edit(pod)
		_, err := runner.CoreV1().Pods(ns).Create(ctx, pod, dryRun)
		switch {
		case err == nil:
			t.Errorf("%s: admitted", tc.name)
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: refusal lacks %q: %v", tc.name, tc.want, err)
		default:
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}

	// Cache volumes: the template's size and slots, client-side and in the API server.
	amd := platform.MustParse("linux/amd64")
	claim := func(p k8sprov.Plan, slot int) *corev1.PersistentVolumeClaim {
		return k8sprov.RenderCacheVolume(p, amd, p.Options.Cache.Lineage(p.Options.Job, amd), slot, time.Now())
	}
	inherited := plan("cache", k8sprov.Inputs{Cache: "volume"}, true)
	if got := inherited.Options.Cache; got.Size.String() != "2Gi" || got.MaxSlots != 2 {
		t.Errorf("cache settings under the template: %+v, want 2Gi and 2 slots", got)
	}
	if _, err := runner.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim(inherited, 1), dryRun); err != nil {
		t.Errorf("a cache volume within the template refused: %v", err)
	}
	in := k8sprov.Inputs{Platforms: "linux/amd64", Cache: "volume", CacheSize: "10Gi", CacheMaxSlots: "8"}
	opts, err := k8sprov.ParseOptions(testJob, in)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tmpl.Apply(in, opts)
	if err == nil || !strings.Contains(err.Error(), `input "cache-size": "10Gi": above the maximum 5Gi of cluster template `+ns+`/setup-ephemeral-buildkit (cache.size.maximum)`) {
		t.Errorf("cache-size past the template, client-side: %v", err)
	}
	edited := plan("cache-past", k8sprov.Inputs{Cache: "volume", CacheSize: "10Gi", CacheMaxSlots: "8"}, false)
	for _, tc := range []struct {
		name  string
		claim *corev1.PersistentVolumeClaim
		want  string
	}{
		{"a cache volume past the size maximum", claim(edited, 0), "a storage request of 10Gi above the maximum 5Gi"},
		{"a cache volume past the slots", claim(inherited, 2), "a slot past the cache.maxSlots maximum 2"},
	} {
		_, err := runner.CoreV1().PersistentVolumeClaims(ns).Create(ctx, tc.claim, dryRun)
		switch {
		case err == nil:
			t.Errorf("%s: admitted", tc.name)
		case !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want a refusal saying %q", tc.name, err, tc.want)
		default:
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
}
