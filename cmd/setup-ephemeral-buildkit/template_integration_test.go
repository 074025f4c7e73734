package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// TestIntegrationClusterTemplate runs the platform team's template end to end through the real
// binary under the shipped Role: a job with one line of inputs inherits the template from the
// real ConfigMap (both platforms start and answer), inputs past it are refused before anything is
// created, the policy the binary generates from the same template makes the API server refuse a
// job whose client did not apply the template, and a malformed template fails the job naming the
// line. Its cache settings too: a cache-size past it is refused, and a job that turns the cache
// on gets the template's size on both platforms, under the generated policy.
func TestIntegrationClusterTemplate(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := localcluster.ForTest(t)
	w := newFaultWorld(ctx, t, c)
	// The job's token is bound to its runner pod, as the kubelet mounts it: the admission policy
	// the test applies lets such a token alone create builders its pod owns.
	c.WritePodServiceAccountKubeconfig(ctx, t, w.runner, w.kubeconfig)

	nodeLabel := func(arch string) string {
		key, value, _ := strings.Cut(c.Info.ArchNodeLabels[arch], "=")
		return "{" + key + ": " + value + "}"
	}
	template := `apiVersion: setup-ephemeral-buildkit.io/v1alpha1
kind: ClusterTemplate
image: ` + c.Info.Images["buildkit"] + `
imagePullPolicy: IfNotPresent
debug: true
openTelemetry: {endpoint: "http://127.0.0.1:4317", protocol: grpc}
resources:
  default: {requests: {memory: 128Mi}}
  maximum: {memory: 1Gi}
maxLifetime: {default: 30m, maximum: 1h}
terminationGracePeriod: {default: 5s, maximum: 2m}
platforms:
  linux/amd64:
    nodeSelector: ` + nodeLabel("amd64") + `
  linux/arm64:
    nodeSelector: ` + nodeLabel("arm64") + `
cache: {size: {default: 1Gi, maximum: 2Gi}, maxSlots: 1}
jobInputs: [node-selector, limits, max-lifetime, cache]
`
	templateFile := filepath.Join(w.dir, "template.yaml")
	if err := os.WriteFile(templateFile, []byte(template), 0o644); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: clustertemplate.DefaultName}, Data: map[string]string{clustertemplate.DataKey: template}}
	if _, err := w.admin.CoreV1().ConfigMaps(w.ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	source := w.ns + "/" + clustertemplate.DefaultName
	up := func(name string, extra ...string) *cliRun {
		t.Helper()
		args := []string{"up", "--state-dir", filepath.Join(w.dir, name), "--kubeconfig", w.kubeconfig, "--namespace", w.ns,
			"--owner-pod", w.runner.Name, "--ci-platform", "github", "--repository", "org/app", "--run-id", "13", "--job-id", name,
			// This node emulates arm64, so the arm64 builder drops the default kubernetes.io/arch
			// selector (a rule names a label with it; the template's, unchanged, may be named).
			"--platforms", "linux/amd64,linux/arm64", "--node-selector", "linux/arm64=kubernetes.io/arch-," + c.Info.ArchNodeLabels["arm64"]}
		return w.start(t, nil, sharedBinary, append(args, extra...)...).wait(ctx, t)
	}
	builderPods := func() []corev1.Pod {
		t.Helper()
		list, err := w.admin.CoreV1().Pods(w.ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
		if err != nil {
			t.Fatal(err)
		}
		return list.Items
	}

	// Defaults inherited from the real ConfigMap.
	r := up("inherits")
	if r.code() != 0 {
		t.Fatalf("up under the template exited %d:\n%s", r.code(), r.out.String())
	}
	t.Logf("up of two builders under the template: %v", r.took().Round(time.Millisecond))
	if !strings.Contains(r.out.String(), "Cluster template: "+source) {
		t.Errorf("up does not name the template:\n%s", r.out.String())
	}
	pods := builderPods()
	if len(pods) != 2 {
		t.Fatalf("%d builder pods, want 2", len(pods))
	}
	for _, pod := range pods {
		ctr := pod.Spec.Containers[0]
		arch := pod.Labels[k8sprov.LabelArch]
		key, value, _ := strings.Cut(c.Info.ArchNodeLabels[arch], "=")
		checks := map[string][2]string{
			"image":          {ctr.Image, c.Info.Images["buildkit"]},
			"memory request": {ctr.Resources.Requests.Memory().String(), "128Mi"},
			"memory limit":   {ctr.Resources.Limits.Memory().String(), "1Gi"},
			"deadline":       {time.Duration(*pod.Spec.ActiveDeadlineSeconds * int64(time.Second)).String(), "30m0s"},
			"grace":          {time.Duration(*pod.Spec.TerminationGracePeriodSeconds * int64(time.Second)).String(), "5s"},
			"node label":     {pod.Spec.NodeSelector[key], value},
			"debug":          {strings.Join(ctr.Args, " "), "--debug"},
			"otel":           {envOf(ctr, "OTEL_EXPORTER_OTLP_ENDPOINT") + " " + envOf(ctr, "OTEL_EXPORTER_OTLP_PROTOCOL"), "http://127.0.0.1:4317 grpc"},
		}
		for what, c := range checks {
			if what == "debug" {
				if !strings.Contains(c[0], c[1]) {
					t.Errorf("%s builder: args %q lack %s", arch, c[0], c[1])
				}
				continue
			}
			if c[0] != c[1] {
				t.Errorf("%s builder %s = %q, want the template's %q", arch, what, c[0], c[1])
			}
		}
	}
	if d := w.down(ctx, t, filepath.Join(w.dir, "inherits")); d.code() != 0 {
		t.Fatalf("down exited %d:\n%s", d.code(), d.out.String())
	}
	// down returns before the kubelet has stopped the pods; what follows counts builder pods.
	for gone := time.Now().Add(time.Minute); len(builderPods()) > 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(gone) {
			t.Fatalf("the builders of the first job are still there a minute after down")
		}
	}

	// Inputs past the template: refused before anything is created, every one named.
	r = up("past", "--limits", "memory=2Gi", "--max-lifetime", "3h", "--image", "registry.example/other/buildkit:v1", "--cache-size", "5Gi")
	if r.code() == 0 {
		t.Fatalf("up past the template succeeded:\n%s", r.out.String())
	}
	for _, want := range []string{
		`input "limits": "memory=2Gi": above the maximum memory=1Gi of cluster template ` + source + ` (resources.maximum)`,
		`input "max-lifetime": "3h": above the maximum 1h0m0s of cluster template ` + source,
		`input "image": "registry.example/other/buildkit:v1": cluster template ` + source + ` does not let jobs set image`,
		`input "cache-size": "5Gi": cluster template ` + source + ` does not let jobs set cache-size`,
	} {
		if !strings.Contains(r.out.String(), want) {
			t.Errorf("up's refusal lacks %q:\n%s", want, r.out.String())
		}
	}
	t.Logf("inputs past the template refused in %v", r.took().Round(time.Millisecond))
	if pods := builderPods(); len(pods) != 0 {
		t.Errorf("refused inputs left %d pods", len(pods))
	}

	// Server-side: the policy the binary generates from the same template.
	gen := w.start(t, nil, sharedBinary, "policy", "--template", templateFile).wait(ctx, t)
	if gen.code() != 0 {
		t.Fatalf("policy --template exited %d:\n%s", gen.code(), gen.out.String())
	}
	c.ApplyAdmissionPolicyIn(ctx, t, w.ns, []byte(gen.stdout.String()))
	// A job whose client does not apply the template (an older binary; here: a Role that cannot
	// read it, which up only warns about) and asks past it is refused by the API server.
	role, err := w.admin.RbacV1().Roles(w.ns).Get(ctx, "setup-ephemeral-buildkit", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	role.Rules = slices.DeleteFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "configmaps") })
	if _, err := w.admin.RbacV1().Roles(w.ns).Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = up("server-side", "--image", c.Info.Images["buildkit"], "--limits", "memory=2Gi")
		if strings.Contains(r.out.String(), "may only create builders within the cluster template") || time.Now().After(deadline) {
			break
		}
		// The policy (or the Role's change) takes a moment to reach the API server.
		w.down(ctx, t, filepath.Join(w.dir, "server-side"))
		time.Sleep(time.Second)
	}
	if r.code() == 0 {
		t.Fatalf("up past the template, without the client's check, succeeded:\n%s", r.out.String())
	}
	for _, want := range []string{"forbidden), using the defaults", "limits.memory 2Gi above the maximum 1Gi", "activeDeadlineSeconds 21600 above the maxLifetime maximum 3600"} {
		if !strings.Contains(r.out.String(), want) {
			t.Errorf("the server-side refusal lacks %q:\n%s", want, r.out.String())
		}
	}
	if pods := builderPods(); len(pods) != 0 {
		t.Errorf("the refused job left %d pods", len(pods))
	}
	if role, err = w.admin.RbacV1().Roles(w.ns).Get(ctx, role.Name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.admin.RbacV1().Roles(w.ns).Update(ctx, restoreConfigMapRule(role), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A job that turns the cache on, under the generated policy: the template's size and slots on
	// both platforms' volumes, no cold fallback.
	r = up("cached", "--cache", "volume")
	if r.code() != 0 || strings.Contains(r.out.String(), "cold builder") {
		t.Fatalf("up with cache volumes under the template and its policy exited %d:\n%s", r.code(), r.out.String())
	}
	claims, err := w.admin.CoreV1().PersistentVolumeClaims(w.ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.CacheSelector()})
	if err != nil {
		t.Fatal(err)
	}
	if len(claims.Items) != 2 {
		t.Errorf("%d cache volumes, want one per platform", len(claims.Items))
	}
	for _, pvc := range claims.Items {
		if size := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; size.String() != "1Gi" || pvc.Labels[k8sprov.LabelCacheSlot] != "0" {
			t.Errorf("cache volume %s: %s, slot %s; want the template's 1Gi, slot 0", pvc.Name, size.String(), pvc.Labels[k8sprov.LabelCacheSlot])
		}
	}
	if d := w.down(ctx, t, filepath.Join(w.dir, "cached")); d.code() != 0 {
		t.Fatalf("down exited %d:\n%s", d.code(), d.out.String())
	}
	for gone := time.Now().Add(time.Minute); len(builderPods()) > 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(gone) {
			t.Fatalf("the builders of the cached job are still there a minute after down")
		}
	}

	// A malformed template fails every job, naming the line, before any pod is created.
	cm.Data[clustertemplate.DataKey] = strings.Replace(template, "maximum: {memory: 1Gi}", "maximum: {memory: lots}", 1)
	if _, err := w.admin.CoreV1().ConfigMaps(w.ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		r = up("malformed")
		if r.code() != 0 && strings.Contains(r.out.String(), "cluster template "+source+", line 9") || time.Now().After(deadline) {
			break
		}
		w.down(ctx, t, filepath.Join(w.dir, "malformed"))
		time.Sleep(time.Second)
	}
	if r.code() == 0 || !strings.Contains(r.out.String(), "cluster template "+source+`, line 9 (resources.maximum): "memory=lots"`) {
		t.Errorf("up under a malformed template (exit %d):\n%s", r.code(), r.out.String())
	}
	if pods := builderPods(); len(pods) != 0 {
		t.Errorf("a malformed template left %d pods", len(pods))
	}
}

func envOf(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func restoreConfigMapRule(role *rbacv1.Role) *rbacv1.Role {
	role = role.DeepCopy()
	role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"},
		ResourceNames: []string{clustertemplate.DefaultName}, Verbs: []string{"get"}})
	return role
}
