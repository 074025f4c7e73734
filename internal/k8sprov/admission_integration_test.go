package k8sprov

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// admissionPolicyPath is the shipped admission policy these tests apply.
const admissionPolicyPath = "../../deploy/admission-policy.yaml"

// admissionRefusal starts every refusal message of the shipped policy.
const admissionRefusal = "setup-ephemeral-buildkit admission policy:"

// admissionManifest is deploy/admission-policy.yaml: the policy and its binding.
type admissionManifest struct {
	policy  *admissionregistrationv1.ValidatingAdmissionPolicy
	binding *admissionregistrationv1.ValidatingAdmissionPolicyBinding
}

func readAdmissionManifest(t testing.TB) admissionManifest {
	t.Helper()
	data, err := os.ReadFile(admissionPolicyPath)
	if err != nil {
		t.Fatal(err)
	}
	var m admissionManifest
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		var into any
		switch meta.Kind {
		case "ValidatingAdmissionPolicy":
			m.policy = &admissionregistrationv1.ValidatingAdmissionPolicy{}
			into = m.policy
		case "ValidatingAdmissionPolicyBinding":
			m.binding = &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
			into = m.binding
		default:
			t.Fatalf("%s: unexpected kind %q", admissionPolicyPath, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatalf("%s: %s: %v", admissionPolicyPath, meta.Kind, err)
		}
	}
	if m.policy == nil || m.binding == nil {
		t.Fatalf("%s lacks the policy or the binding", admissionPolicyPath)
	}
	return m
}

// variable returns the variable name of policy.
func variable(t testing.TB, policy *admissionregistrationv1.ValidatingAdmissionPolicy, name string) *admissionregistrationv1.Variable {
	t.Helper()
	for i := range policy.Spec.Variables {
		if policy.Spec.Variables[i].Name == name {
			return &policy.Spec.Variables[i]
		}
	}
	t.Fatalf("the policy has no variable %q", name)
	return nil
}

// shippedAccounts is how the shipped policy's match condition begins: the list of restricted
// ServiceAccounts, deploy/rbac.yaml's subject.
const shippedAccounts = "['runner']"

// setAccounts replaces the list of restricted ServiceAccounts in policy's match condition.
func setAccounts(t testing.TB, policy *admissionregistrationv1.ValidatingAdmissionPolicy, accounts string) {
	t.Helper()
	conditions := policy.Spec.MatchConditions
	if len(conditions) != 1 || !strings.HasPrefix(conditions[0].Expression, shippedAccounts+".exists(") {
		t.Fatalf("the policy's match condition does not start with the account list %s: %+v", shippedAccounts, conditions)
	}
	conditions[0].Expression = accounts + strings.TrimPrefix(conditions[0].Expression, shippedAccounts)
}

// TestAdmissionPolicyManifest checks, without a cluster, that the shipped policy fits together
// and pins exactly what the renderer runs in a builder's container; the integration tests below
// prove that the API server agrees.
func TestAdmissionPolicyManifest(t *testing.T) {
	m := readAdmissionManifest(t)
	if m.binding.Spec.PolicyName != m.policy.Name {
		t.Errorf("binding names policy %q, the policy is %q", m.binding.Spec.PolicyName, m.policy.Name)
	}
	if m.policy.Spec.ParamKind != nil || m.binding.Spec.ParamRef != nil {
		t.Errorf("the policy uses parameters (%+v, %+v); the API server loses ConfigMap parameters for good "+
			"once no binding uses them (kubernetes/kubernetes#130887)", m.policy.Spec.ParamKind, m.binding.Spec.ParamRef)
	}
	if !slices.Equal(m.binding.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) {
		t.Errorf("binding validationActions = %v, want [Deny]", m.binding.Spec.ValidationActions)
	}
	if fp := m.policy.Spec.FailurePolicy; fp == nil || *fp != admissionregistrationv1.Fail {
		t.Errorf("policy failurePolicy = %v, want Fail", fp)
	}

	if got, want := variable(t, m.policy, "drainScript").Expression, "'''"+DrainScript+"'''"; got != want {
		t.Errorf("the policy's drainScript is not k8sprov.DrainScript; copy drain.go's script into %s:\n%s",
			admissionPolicyPath, lineDiff(want, got))
	}
	pod, err := RenderPod(testPlan(t, Inputs{Platforms: "linux/amd64"}), platform.MustParse("linux/amd64"))
	if err != nil {
		t.Fatal(err)
	}
	var quoted []string
	for _, arg := range pod.Spec.Containers[0].ReadinessProbe.Exec.Command {
		quoted = append(quoted, "'"+arg+"'")
	}
	if got, want := variable(t, m.policy, "probeCommand").Expression, "["+strings.Join(quoted, ", ")+"]"; got != want {
		t.Errorf("the policy's probeCommand is %s, the renderer's %s", got, want)
	}

	images := variable(t, m.policy, "images").Expression
	for _, image := range []string{DefaultImage, DefaultRootlessImage} {
		if !strings.Contains(images, "'"+image+"'") {
			t.Errorf("the policy's images %s lack the default image %s", images, image)
		}
	}
	if got := variable(t, m.policy, "allowPrivileged").Expression; got != "true" {
		t.Errorf("the policy's allowPrivileged is %s; rootful builders are the default", got)
	}
	setAccounts(t, m.policy.DeepCopy(), "[]")
	// The ServiceAccount deploy/rbac.yaml binds is the one the policy restricts.
	rbac, err := os.ReadFile("../../deploy/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(rbac), "\n---\n") {
		var binding rbacv1.RoleBinding
		if err := yaml.Unmarshal([]byte(doc), &binding); err != nil || binding.Kind != "RoleBinding" {
			continue
		}
		if want := "['" + binding.Subjects[0].Name + "']"; want != shippedAccounts {
			t.Errorf("deploy/rbac.yaml binds ServiceAccount %s, the policy restricts %s", want, shippedAccounts)
		}
	}
}

// admissionEnv is a jobEnv with the shipped policy in force in its namespace.
type admissionEnv struct {
	*jobEnv
	policyName string
	// runnerClient acts as the restricted runner ServiceAccount with a token bound to the runner
	// pod, as a job inside that pod holds it; the provisioner uses the same token.
	runnerClient kubernetes.Interface
	// unboundClient acts as the same ServiceAccount with a token bound to no pod, as a
	// kubeconfig outside the cluster holds it.
	unboundClient kubernetes.Interface
}

// podBoundConfig returns cfg (a ServiceAccount's, with its request counter) with a token bound
// to pod instead, as the kubelet mounts into the pod: the API server then names the pod in the
// requests' userInfo.extra.
func (e *jobEnv) podBoundConfig(t *testing.T, ctx context.Context, cfg *rest.Config, pod *corev1.Pod) *rest.Config {
	t.Helper()
	podCfg, err := e.cluster.PodServiceAccountConfig(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	bound := rest.CopyConfig(cfg)
	bound.BearerToken = podCfg.BearerToken
	return bound
}

// newAdmissionEnv creates a job environment and applies deploy/admission-policy.yaml to it, with
// change applied to the policy first (nil for none). The policy and binding are cluster-scoped,
// so they get names of their own, the binding is limited to this test's namespace (tests in other
// namespaces run on undisturbed), and both are removed when the test ends. The local cluster's
// BuildKit image is added to the allowed images. It returns once the policy refuses a known-bad
// pod.
func newAdmissionEnv(t *testing.T, ctx context.Context, change func(*admissionregistrationv1.ValidatingAdmissionPolicy)) *admissionEnv {
	t.Helper()
	env := newJobEnv(t, ctx)
	m := readAdmissionManifest(t)
	api := env.admin.AdmissionregistrationV1()

	policy := m.policy.DeepCopy()
	policy.Name = m.policy.Name + "-" + env.ns
	images := variable(t, policy, "images")
	images.Expression += " + ['" + env.cluster.Info.Images["buildkit"] + "']"
	if change != nil {
		change(policy)
	}
	if _, err := api.ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the admission policy: %v", err)
	}
	t.Cleanup(func() {
		_ = api.ValidatingAdmissionPolicies().Delete(context.Background(), policy.Name, metav1.DeleteOptions{})
	})
	binding := m.binding.DeepCopy()
	binding.Name = m.binding.Name + "-" + env.ns
	binding.Spec.PolicyName = policy.Name
	if binding.Spec.MatchResources != nil {
		t.Fatalf("the shipped binding has matchResources %+v; this test expects to add its own", binding.Spec.MatchResources)
	}
	binding.Spec.MatchResources = &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
		MatchLabels: map[string]string{corev1.LabelMetadataName: env.ns},
	}}
	if _, err := api.ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the admission policy binding: %v", err)
	}
	t.Cleanup(func() {
		_ = api.ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})
	unbound := env.saConfig
	env.saConfig = env.podBoundConfig(t, ctx, unbound, env.runner)
	a := &admissionEnv{
		jobEnv: env, policyName: policy.Name,
		runnerClient:  kubernetes.NewForConfigOrDie(env.saConfig),
		unboundClient: kubernetes.NewForConfigOrDie(unbound),
	}

	// A new policy takes a moment to reach the API server's admission chain.
	a.waitUntilRefused(t, ctx, a.runnerClient, "lacks the labels", func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "policy-probe"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "probe", Image: env.cluster.Info.Images["buildkit"], SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
			}}},
		}
	})
	return a
}

// waitUntilRefused dry-runs creating pod() as client until the policy refuses it with a message
// containing want, after a change of the policy.
func (a *admissionEnv) waitUntilRefused(t *testing.T, ctx context.Context, client kubernetes.Interface, want string, pod func() *corev1.Pod) {
	t.Helper()
	started := time.Now()
	deadline := started.Add(30 * time.Second)
	for {
		_, err := client.CoreV1().Pods(a.ns).Create(ctx, pod(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil && strings.Contains(err.Error(), admissionRefusal) && strings.Contains(err.Error(), want) {
			t.Logf("the policy is in force after %v", time.Since(started).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("the admission policy was not in force after %v: the probe pod got %v", time.Since(started), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// changePolicy applies change to this test's copy of the policy.
func (a *admissionEnv) changePolicy(t *testing.T, ctx context.Context, change func(*admissionregistrationv1.ValidatingAdmissionPolicy)) {
	t.Helper()
	policies := a.admin.AdmissionregistrationV1().ValidatingAdmissionPolicies()
	policy, err := policies.Get(ctx, a.policyName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	change(policy)
	if _, err := policies.Update(ctx, policy, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

var dryRun = metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

// renderJob renders the Secret and every pod of plan, as the provisioner would create them.
func renderJob(t *testing.T, plan Plan) (*corev1.Secret, []*corev1.Pod) {
	t.Helper()
	_, secret := renderTestSecret(t, plan)
	var pods []*corev1.Pod
	for _, pl := range plan.Platforms {
		pod, err := RenderPod(plan, pl)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, pod)
	}
	return secret, pods
}

// assertRefused checks that err is the policy's refusal (422 Invalid) with a message
// containing want, and logs it.
func assertRefused(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: allowed, want the admission policy to refuse it", what)
	case !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), admissionRefusal):
		t.Errorf("%s: %v; want the admission policy's refusal (422 Invalid)", what, err)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: refusal %q does not say %q", what, err, want)
	default:
		t.Logf("%s: refused: %v", what, err)
	}
}

func TestIntegrationAdmissionPolicyLetsTheProvisionerWork(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, nil)
	plan := env.plan(t, "admission-two-arch", Inputs{Platforms: "linux/amd64,linux/arm64"})
	prov := env.provisioner(t)

	result, err := prov.Provision(ctx, plan)
	if err != nil {
		t.Fatalf("Provision under the admission policy: %v", err)
	}
	for _, b := range result.Builders {
		if !b.Platform.ServedBy(b.WorkerPlatforms) {
			t.Errorf("%s builder reports %v", b.Platform, b.WorkerPlatforms)
		}
		t.Logf("%s builder %s answers at %s", b.Platform, b.Pod, b.Endpoint)
	}
	if len(result.Builders) != 2 {
		t.Fatalf("%d builders, want 2", len(result.Builders))
	}
	// The policy holds while the builders run: the runner cannot remove its own pod.
	err = env.runnerClient.CoreV1().Pods(env.ns).Delete(ctx, env.runner.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
	assertRefused(t, "runner deletes the runner pod", err, "lacks the label app.kubernetes.io/managed-by")

	report, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{result.Secret}})
	if err != nil {
		t.Fatalf("Teardown under the admission policy: %v", err)
	}
	if len(report.Deleted) != 3 || len(report.Skipped) != 0 {
		t.Errorf("teardown deleted %v, skipped %v; want two pods and the Secret deleted", report.Deleted, report.Skipped)
	}
	assertNothingLeft(t, ctx, env.jobEnv, plan)

	// A job asking for an image the platform team has not allowed is told so by the policy, not
	// sent to deploy/rbac.yaml for a missing verb, and its Secret is rolled back.
	unvetted := env.plan(t, "admission-unvetted-image", Inputs{Platforms: "linux/amd64", Image: "registry.example/unvetted/buildkit:v1"})
	_, err = prov.Provision(ctx, unvetted)
	var forbidden *ForbiddenError
	switch {
	case err == nil:
		t.Error("Provision with an image outside the allowlist succeeded")
	case !strings.Contains(err.Error(), "has image registry.example/unvetted/buildkit:v1, allowed: "):
		t.Errorf("Provision error does not carry the policy's refusal: %v", err)
	case errors.As(err, &forbidden):
		t.Errorf("the policy's refusal is reported as a missing RBAC verb: %v", err)
	default:
		t.Logf("Provision refused: %v", err)
	}
	assertNothingLeft(t, ctx, env.jobEnv, unvetted)
}

// TestIntegrationAdmissionPolicyAcceptsRenderedPods keeps the policy and the renderer in step:
// whatever RenderPod and RenderSecret produce, for many option sets, the runner may create.
func TestIntegrationAdmissionPolicyAcceptsRenderedPods(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const mirror = "registry.example/mirror/moby/buildkit"
	env := newAdmissionEnv(t, ctx, func(p *admissionregistrationv1.ValidatingAdmissionPolicy) {
		variable(t, p, "images").Expression += " + ['" + mirror + ":*']"
	})

	for name, in := range map[string]Inputs{
		"defaults, two platforms": {Platforms: "linux/amd64,linux/arm64"},
		"rootless":                {Platforms: "linux/amd64,linux/arm64", Rootless: "true"},
		"rootless arm/v7 with buildkitd.toml": {
			Platforms: "linux/arm/v7", Rootless: "true", BuildkitdConfig: "debug = true\n",
		},
		"image from an allowed prefix": {Platforms: "linux/amd64", Image: mirror + ":v0.34.2"},
		"owner none":                   {Platforms: "linux/amd64", OwnerPod: "none"},
		"digest-pinned image from an allowed prefix": {
			Platforms: "linux/arm64", Image: mirror + ":v0.34.2@sha256:" + strings.Repeat("ab", 32),
		},
		"everything set": {
			Platforms:              "linux/amd64,linux/arm64",
			Requests:               "cpu=500m,memory=256Mi",
			Limits:                 "memory=8Gi,ephemeral-storage=20Gi",
			NodeSelector:           "linux/arm64=node.example.com/pool=arm-builders,disk=ssd;*=team=ci",
			Tolerations:            "linux/arm64=arch=arm64:NoSchedule,dedicated:NoSchedule;*=spot=true:NoExecute:300",
			Labels:                 "team=platform,cost-center=ci",
			Annotations:            "example.com/contact=platform@example.com",
			BuildkitdFlags:         `--debug --oci-worker-gc-keepstorage="10000"`,
			BuildkitdConfig:        "[registry.\"docker.io\"]\n  mirrors = [\"mirror.example.com\"]\n",
			Timeout:                "60s",
			MaxLifetime:            "168h", // the longest allowed
			TerminationGracePeriod: "10m",
		},
	} {
		plan := env.plan(t, "rendered-"+strings.ReplaceAll(name, " ", "-"), in)
		secret, pods := renderJob(t, plan)
		// Builders without an owner are made with a token bound to no pod (see
		// TestIntegrationAdmissionPolicyKeepsJobsApart).
		client := env.runnerClient
		if plan.Owner == nil {
			client = env.unboundClient
		}
		if _, err := client.CoreV1().Secrets(env.ns).Create(ctx, secret, dryRun); err != nil {
			t.Errorf("%s: the runner may not create the rendered Secret: %v", name, err)
		}
		for _, pod := range pods {
			if _, err := client.CoreV1().Pods(env.ns).Create(ctx, pod, dryRun); err != nil {
				t.Errorf("%s: the runner may not create the rendered pod %s (image %s): %v", name, pod.Name, pod.Spec.Containers[0].Image, err)
			}
		}
		if !t.Failed() {
			t.Logf("%s: the rendered Secret and %d pod(s) are admitted", name, len(pods))
		}
	}
}

func TestIntegrationAdmissionPolicyRootlessOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, func(p *admissionregistrationv1.ValidatingAdmissionPolicy) {
		variable(t, p, "allowPrivileged").Expression = "false"
	})
	_, rootful := renderJob(t, env.plan(t, "rootful", Inputs{Platforms: "linux/amd64"}))
	_, err := env.runnerClient.CoreV1().Pods(env.ns).Create(ctx, rootful[0], dryRun)
	assertRefused(t, "rootful builder with allowPrivileged false", err, "has a privileged container (allowPrivileged is false")
	_, rootless := renderJob(t, env.plan(t, "rootless", Inputs{Platforms: "linux/amd64,linux/arm64", Rootless: "true"}))
	for _, pod := range rootless {
		if _, err := env.runnerClient.CoreV1().Pods(env.ns).Create(ctx, pod, dryRun); err != nil {
			t.Errorf("rootless builder %s refused with allowPrivileged false: %v", pod.Name, err)
		}
	}
}

func TestIntegrationAdmissionPolicyRefusesEverythingElse(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, nil)
	pods := env.runnerClient.CoreV1().Pods(env.ns)
	secrets := env.runnerClient.CoreV1().Secrets(env.ns)
	buildkitImage := env.cluster.Info.Images["buildkit"]

	plan := env.plan(t, "refusals", Inputs{Platforms: "linux/amd64"})
	secret, rendered := renderJob(t, plan)
	builder := rendered[0]
	// The control: the builder as rendered is admitted, so each refusal below is caused by the
	// one change it makes.
	if _, err := pods.Create(ctx, builder, dryRun); err != nil {
		t.Fatalf("the rendered builder is refused: %v", err)
	}

	for _, tc := range []struct {
		name   string
		change func(*corev1.Pod)
		want   string
	}{
		{"privileged pod without the builder labels", func(p *corev1.Pod) {
			*p = corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "root-on-the-node"}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "shell", Image: buildkitImage, Command: []string{"/bin/sh", "-c", "sleep 1d"},
					SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}},
			}}
		}, "lacks the labels app.kubernetes.io/managed-by=setup-ephemeral-buildkit"},
		{"builder with another image", func(p *corev1.Pod) {
			p.Spec.Containers[0].Image = "docker.io/library/busybox:1.37"
		}, "has image docker.io/library/busybox:1.37, allowed: docker.io/moby/buildkit:v0.34.2"},
		{"builder with a hostPath volume", func(p *corev1.Pod) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "host", MountPath: "/host"})
		}, "has volume(s) host (hostPath /)"},
		{"builder on the host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "uses hostNetwork"},
		{"builder in the host PID namespace", func(p *corev1.Pod) { p.Spec.HostPID = true }, "uses hostPID"},
		{"builder with a command instead of buildkitd", func(p *corev1.Pod) {
			p.Spec.Containers[0].Command = []string{"/bin/sh", "-c", "mount /dev/sda1 /mnt"}
		}, "a command (/bin/sh -c mount /dev/sda1 /mnt)"},
		{"builder with another preStop hook", func(p *corev1.Pod) {
			p.Spec.Containers[0].Lifecycle.PreStop.Exec.Command[2] = "mount /dev/sda1 /mnt"
		}, "lifecycle hooks other than the drain preStop hook"},
		{"builder with a shell in the drain hook's arguments", func(p *corev1.Pod) {
			p.Spec.Containers[0].Lifecycle.PreStop.Exec.Command[5] = "a[$(reboot)]"
		}, "lifecycle hooks other than the drain preStop hook"},
		{"builder with another readiness probe", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe.Exec.Command = []string{"/bin/sh", "-c", "id"}
		}, "a readiness probe other than"},
		{"builder with a sidecar", func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar", Image: buildkitImage,
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}})
		}, "containers buildkitd, sidecar"},
		{"builder with the runner's ServiceAccount token", func(p *corev1.Pod) {
			p.Spec.ServiceAccountName = "runner"
			p.Spec.AutomountServiceAccountToken = ptr.To(true)
		}, "serviceAccountName runner"},
		{"builder mounting another Secret", func(p *corev1.Pod) {
			p.Spec.Volumes[2].Secret.SecretName = "runner-registration-token"
		}, "buildkit-config (secret runner-registration-token)"},
		{"builder owned by a ReplicaSet", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: types.UID("1")}}
		}, "is owned by ReplicaSet rs"},
		{"builder with added capabilities", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext.Capabilities = &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN"}}
		}, "added capabilities SYS_ADMIN"},
		{"builder without a deadline", func(p *corev1.Pod) { p.Spec.ActiveDeadlineSeconds = nil }, "activeDeadlineSeconds"},
		{"builder with a host port", func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].HostPort = 1234 }, "uses a host port"},
	} {
		pod := builder.DeepCopy()
		tc.change(pod)
		_, err := pods.Create(ctx, pod, dryRun)
		assertRefused(t, "runner creates a "+tc.name, err, tc.want)
	}

	// Deleting what is not setup-ephemeral-buildkit's: the runner pod itself, an unlabelled Secret.
	err := pods.Delete(ctx, env.runner.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
	assertRefused(t, "runner deletes the runner pod", err, "pod "+env.runner.Name+" lacks the label app.kubernetes.io/managed-by")
	if _, err := env.admin.CoreV1().Secrets(env.ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-ours"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = secrets.Delete(ctx, "not-ours", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
	assertRefused(t, "runner deletes an unlabelled Secret", err, "Secret not-ours lacks the label")

	// Secrets: only the builders' own, Opaque and labelled.
	_, err = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unlabelled"}, StringData: map[string]string{"a": "b"}}, dryRun)
	assertRefused(t, "runner creates an unlabelled Secret", err, "Secret unlabelled lacks the labels")
	token := secret.DeepCopy()
	token.Name, token.Type, token.Data = "token-of-another-account", corev1.SecretTypeServiceAccountToken, nil
	token.Annotations = map[string]string{corev1.ServiceAccountNameKey: "default"}
	_, err = secrets.Create(ctx, token, dryRun)
	assertRefused(t, "runner creates a labelled ServiceAccount token Secret", err, "has type kubernetes.io/service-account-token")
	if _, err := secrets.Create(ctx, secret, dryRun); err != nil {
		t.Errorf("the rendered Secret is refused: %v", err)
	}

	// Even with a wider Role than deploy/rbac.yaml, the runner can neither change pods and
	// Secrets nor exec into them.
	wider := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "wider"}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"pods", "pods/exec", "pods/ephemeralcontainers", "secrets"},
		Verbs: []string{"get", "create", "update", "patch"},
	}}}
	if _, err := env.admin.RbacV1().Roles(env.ns).Create(ctx, wider, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.admin.RbacV1().RoleBindings(env.ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "wider"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "wider"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "runner", Namespace: env.ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	patch := []byte(`{"metadata":{"labels":{"app.kubernetes.io/managed-by":"setup-ephemeral-buildkit"}}}`)
	patchOpts := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}
	waitForRBAC(t, ctx, func() error {
		_, err := pods.Patch(ctx, env.runner.Name, types.StrategicMergePatchType, patch, patchOpts)
		return err
	})
	_, err = pods.Patch(ctx, env.runner.Name, types.StrategicMergePatchType, patch, patchOpts)
	assertRefused(t, "runner patches the runner pod (wider Role)", err, "refused UPDATE of pods "+env.runner.Name)
	_, err = secrets.Patch(ctx, "not-ours", types.StrategicMergePatchType, patch, patchOpts)
	assertRefused(t, "runner patches a Secret (wider Role)", err, "refused UPDATE of secrets not-ours")
	err = env.runnerClient.CoreV1().RESTClient().Post().Namespace(env.ns).Resource("pods").Name(env.runner.Name).
		SubResource("exec").Param("container", "runner").Param("command", "true").Param("stdout", "true").Do(ctx).Error()
	assertRefused(t, "runner execs into a pod (wider Role)", err, "refused CONNECT of pods/exec "+env.runner.Name)

	// Nobody else is restricted: an administrator, and a ServiceAccount with the same Role that
	// the parameters do not name.
	anyPod := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "any-pod"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "any", Image: env.cluster.Info.Images["pause"], ImagePullPolicy: corev1.PullNever,
		}}}}
	}
	privileged := anyPod()
	privileged.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	if _, err := env.admin.CoreV1().Pods(env.ns).Create(ctx, privileged, dryRun); err != nil {
		t.Errorf("an administrator may not create an unlabelled privileged pod: %v", err)
	}
	other := env.serviceAccountWithShippedRole(t, ctx, "other")
	if _, err := other.CoreV1().Pods(env.ns).Create(ctx, anyPod(), dryRun); err != nil {
		t.Errorf("ServiceAccount other, not named in the parameters, may not create an unlabelled pod: %v", err)
	}
	if err := other.CoreV1().Pods(env.ns).Delete(ctx, env.runner.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("ServiceAccount other may not delete the runner pod: %v", err)
	}
	// Named as "namespace:name", it is restricted too.
	env.changePolicy(t, ctx, func(p *admissionregistrationv1.ValidatingAdmissionPolicy) {
		setAccounts(t, p, "['runner', '"+env.ns+":other']")
	})
	env.waitUntilRefused(t, ctx, other, "lacks the labels", anyPod)
	_, err = other.CoreV1().Pods(env.ns).Create(ctx, anyPod(), dryRun)
	assertRefused(t, "ServiceAccount other, once named, creates an unlabelled pod", err, "system:serviceaccount:"+env.ns+":other may only create builder pods")
}

// serviceAccountWithShippedRole creates ServiceAccount name bound to deploy/rbac.yaml's Role
// (already in the namespace) and returns a client acting as it.
func (e *jobEnv) serviceAccountWithShippedRole(t *testing.T, ctx context.Context, name string) kubernetes.Interface {
	t.Helper()
	if _, err := e.admin.CoreV1().ServiceAccounts(e.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RbacV1().RoleBindings(e.ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "setup-ephemeral-buildkit-" + name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "setup-ephemeral-buildkit"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: e.ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := e.cluster.ServiceAccountConfig(ctx, e.ns, name)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	waitForRBAC(t, ctx, func() error {
		_, err := client.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{Limit: 1})
		return err
	})
	return client
}

// waitForRBAC retries call while RBAC still forbids it: a new RoleBinding reaches the
// authorizer's cache within a moment. The policy's refusals are 422, not 403.
func waitForRBAC(t *testing.T, ctx context.Context, call func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := call()
		if !apierrors.IsForbidden(err) {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("RBAC still forbids the call after 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
