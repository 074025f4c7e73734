package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// chartDir is the Helm chart, seen from this package's directory.
var chartDir = filepath.Join(repoRoot, "deploy", "chart", "setup-ephemeral-buildkit")

// installer is a platform team installing what the runners need into namespace ns, where the
// runners' ServiceAccount "runner" exists: it runs helm and kubectl as the cluster's
// administrator, with a home of its own.
type installer struct {
	c     *localcluster.Cluster
	admin kubernetes.Interface
	ns    string
	home  string
}

func newInstaller(ctx context.Context, t *testing.T, c *localcluster.Cluster, prefix string) *installer {
	t.Helper()
	for _, name := range []string{"helm", "kubectl"} {
		if _, err := os.Stat(filepath.Join(toolsDir(), "bin", name)); err != nil {
			t.Fatalf("%s missing (run `make tools`): %v", name, err)
		}
	}
	in := &installer{c: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig()), ns: c.CreateNamespace(ctx, t, prefix), home: t.TempDir()}
	// The runners' controller (ARC, GitLab Runner) creates this account in a real cluster; the
	// chart and deploy/ only bind it.
	if _, err := in.admin.CoreV1().ServiceAccounts(in.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "runner"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return in
}

func (in *installer) command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(toolsDir(), "bin", tool), args...)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + in.home,
		"KUBECONFIG=" + in.c.Info.Kubeconfig,
	}
	return cmd
}

// run runs tool (helm or kubectl) and fails the test when it fails.
func (in *installer) run(ctx context.Context, t *testing.T, tool string, args ...string) string {
	t.Helper()
	out, err := in.command(ctx, tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s:\n%s", tool, strings.Join(args, " "), out)
	return string(out)
}

// cleanup runs tool at the end of the test, whatever happened, to remove what it installed.
func (in *installer) cleanup(t *testing.T, tool string, args ...string) {
	t.Cleanup(func() { _ = in.command(context.Background(), tool, args...).Run() })
}

// policyScope keeps a cluster-scoped admission policy installed by a test to that test's
// namespace, so tests of other packages that run at the same time are not judged by it.
func policyScope(ns string) string {
	return fmt.Sprintf(`{"matchLabels":{"%s":"%s"}}`, corev1.LabelMetadataName, ns)
}

// provisionAsRunner runs the product as a job does, `up` then `down` as the runners'
// ServiceAccount in w's namespace, and checks that nothing is left.
func provisionAsRunner(ctx context.Context, t *testing.T, w *faultWorld, jobID string) {
	t.Helper()
	state := filepath.Join(w.dir, "state-"+jobID)
	up := w.mustUp(ctx, t, state, jobID)
	if v := exports(t, up); v["BUILDKIT_HOST"] == "" {
		t.Fatalf("up exported no builder")
	}
	requireSuccess(t, "down", w.down(ctx, t, state))
	w.nothingLeft(ctx, t, state)
}

// waitPolicyRefuses runs `up` (with extra flags) as the runner until the admission policy refuses
// it with a message containing want (a policy change takes a moment to reach the API server's
// admission chain), and returns that refusal.
func waitPolicyRefuses(ctx context.Context, t *testing.T, w *faultWorld, want string, extra ...string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		state := filepath.Join(w.dir, fmt.Sprintf("state-refused-%d", i))
		r := w.up(ctx, t, state, fmt.Sprintf("refused-%d", i), extra...)
		// down runs after every up, failed or not, as a job's post step or after_script does.
		requireSuccess(t, "down", w.down(ctx, t, state))
		if r.code() != 0 && strings.Contains(r.out.String(), want) {
			w.nothingLeft(ctx, t, state)
			return firstLine(r.out.String(), want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("up was not refused with %q within 60 s; last run exited %d:\n%s", want, r.code(), r.out.String())
		}
		time.Sleep(time.Second)
	}
}

// ours lists, by kind, the objects labelled with the release that are left in ns and
// cluster-wide.
func ours(ctx context.Context, t *testing.T, admin kubernetes.Interface, ns, selector string) []string {
	t.Helper()
	opts := metav1.ListOptions{LabelSelector: selector}
	var left []string
	add := func(kind string, n int, err error) {
		if err != nil {
			t.Fatalf("listing %s: %v", kind, err)
		}
		if n > 0 {
			left = append(left, fmt.Sprintf("%d %s", n, kind))
		}
	}
	roles, err := admin.RbacV1().Roles(ns).List(ctx, opts)
	add("Roles", len(roles.Items), err)
	bindings, err := admin.RbacV1().RoleBindings(ns).List(ctx, opts)
	add("RoleBindings", len(bindings.Items), err)
	accounts, err := admin.CoreV1().ServiceAccounts(ns).List(ctx, opts)
	add("ServiceAccounts", len(accounts.Items), err)
	crons, err := admin.BatchV1().CronJobs(ns).List(ctx, opts)
	add("CronJobs", len(crons.Items), err)
	policies, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().List(ctx, opts)
	add("ValidatingAdmissionPolicies", len(policies.Items), err)
	policyBindings, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().List(ctx, opts)
	add("ValidatingAdmissionPolicyBindings", len(policyBindings.Items), err)
	return left
}

// TestIntegrationHelmChart installs the chart as a platform team does, runs a job's provisioning
// under what it installed (the runners' Role and the admission policy in force), upgrades it
// with a changed value that the next job meets, and uninstalls it, leaving nothing of ours.
func TestIntegrationHelmChart(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	in := newInstaller(ctx, t, c, "chart")
	admin, ns := in.admin, in.ns
	release := "seb-" + ns
	in.cleanup(t, "helm", "uninstall", release, "--namespace", ns, "--ignore-not-found")
	values := []string{
		"--set-json", fmt.Sprintf(`runners.namespaces=["%s"]`, ns),
		"--set-json", "admissionPolicy.namespaceSelector=" + policyScope(ns),
		"--set-json", fmt.Sprintf(`admissionPolicy.images=["%s"]`, c.Info.Images["buildkit"]),
		"--set", "image.repository=10.213.0.1:5000/platform/setup-ephemeral-buildkit",
	}
	in.run(ctx, t, "helm", append([]string{"install", release, chartDir, "--namespace", ns, "--wait"}, values...)...)

	w := newFaultWorldIn(ctx, t, c, ns)
	// The job's token is bound to its runner pod, as the kubelet mounts it: the admission policy
	// lets such a token handle only builders its own pod owns.
	c.WritePodServiceAccountKubeconfig(ctx, t, w.runner, w.kubeconfig)
	// The policy is in force: the runner may not create a pod that is not a builder.
	runner, err := c.ServiceAccountConfig(ctx, ns, "runner")
	if err != nil {
		t.Fatal(err)
	}
	runnerClient := kubernetes.NewForConfigOrDie(runner)
	waitFor(ctx, t, "the chart's admission policy to refuse a plain pod", func() bool {
		_, err := runnerClient.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "not-a-builder"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "sh", Image: c.Info.Images["buildkit"]}}},
		}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "setup-ephemeral-buildkit admission policy:")
	})
	provisionAsRunner(ctx, t, w, "chart-installed")

	// Upgrade: rootful builders are no longer allowed, the janitor runs every 5 minutes.
	in.run(ctx, t, "helm", append([]string{"upgrade", release, chartDir, "--namespace", ns, "--wait",
		"--set", "admissionPolicy.allowPrivileged=false", "--set", "janitor.schedule=*/5 * * * *"}, values...)...)
	refusal := waitPolicyRefuses(ctx, t, w, "allowPrivileged is false")
	t.Logf("after the upgrade, a rootful job is refused: %s", refusal)
	cron, err := admin.BatchV1().CronJobs(ns).Get(ctx, release+"-setup-ephemeral-buildkit-janitor", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cron.Spec.Schedule != "*/5 * * * *" {
		t.Errorf("the janitor's schedule after the upgrade is %q, want */5 * * * *", cron.Spec.Schedule)
	}
	if got, want := cron.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Image, "10.213.0.1:5000/platform/setup-ephemeral-buildkit:"+chartAppVersion(t); got != want {
		t.Errorf("the janitor's image is %s, want %s", got, want)
	}

	in.run(ctx, t, "helm", "uninstall", release, "--namespace", ns, "--wait")
	if left := ours(ctx, t, admin, ns, "app.kubernetes.io/instance="+release); len(left) > 0 {
		t.Errorf("helm uninstall left %v", left)
	}
	// The runner's own account is the runners' controller's, not ours: it stays.
	if _, err := admin.CoreV1().ServiceAccounts(ns).Get(ctx, "runner", metav1.GetOptions{}); err != nil {
		t.Errorf("the runner's ServiceAccount: %v", err)
	}
	// Without the Role, a job is refused, and told which Role it lacks.
	r := w.up(ctx, t, filepath.Join(w.dir, "state-uninstalled"), "uninstalled")
	if r.code() == 0 || !strings.Contains(r.out.String(), "deploy/rbac.yaml") {
		t.Errorf("up after helm uninstall exited %d, want a refusal naming deploy/rbac.yaml:\n%s", r.code(), r.out.String())
	}
}

// chartAppVersion reads the chart's appVersion, the janitor image's default tag.
func chartAppVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "appVersion: "); ok {
			return strings.Trim(v, `"`)
		}
	}
	t.Fatal("Chart.yaml has no appVersion")
	return ""
}

// TestIntegrationKustomize installs deploy/ with `kubectl apply -k`, as a team on kustomize does
// through an overlay of its own (here: the namespace, the policy kept to it, the local
// BuildKit image allowed), runs a job's provisioning under it, and removes it again with
// `kubectl delete -k`.
func TestIntegrationKustomize(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	in := newInstaller(ctx, t, c, "kustomize")
	admin, ns := in.admin, in.ns
	overlay := writeDeployOverlay(t, ns, c.Info.Images["buildkit"], "")
	in.cleanup(t, "kubectl", "delete", "-k", overlay, "--ignore-not-found")
	in.run(ctx, t, "kubectl", "apply", "-k", overlay)

	w := newFaultWorldIn(ctx, t, c, ns)
	// The job's token is bound to its runner pod, as the kubelet mounts it: the admission policy
	// lets such a token handle only builders its own pod owns.
	c.WritePodServiceAccountKubeconfig(ctx, t, w.runner, w.kubeconfig)
	refusal := waitPolicyRefuses(ctx, t, w, "has image registry.example/unvetted/buildkit:v1, allowed: "+c.Info.Images["buildkit"],
		"--image", "registry.example/unvetted/buildkit:v1")
	t.Logf("an image the overlay does not allow is refused: %s", refusal)
	provisionAsRunner(ctx, t, w, "kustomize-installed")

	in.run(ctx, t, "kubectl", "delete", "-k", overlay, "--wait")
	if left := ours(ctx, t, admin, ns, "test-overlay="+ns); len(left) > 0 {
		t.Errorf("kubectl delete -k left %v", left)
	}
}

// writeDeployOverlay writes a kustomization over deploy/ as a team's own overlay would be: the
// namespace ns, names suffixed with it and labelled test-overlay=ns (the admission policy is
// cluster-scoped, and tests run side by side), the policy kept to ns and allowing buildkitImage.
// extraPatches are more entries of its patches: list. It returns the overlay's directory.
func writeDeployOverlay(t *testing.T, ns, buildkitImage, extraPatches string) string {
	t.Helper()
	overlay := t.TempDir()
	// kustomize takes a base outside the overlay by a relative path only.
	deployDir, err := filepath.Abs(filepath.Join(repoRoot, "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	deploy, err := filepath.Rel(overlay, deployDir)
	if err != nil {
		t.Fatal(err)
	}
	kustomization := fmt.Sprintf(`resources: [%q]
namespace: %s
nameSuffix: -%s
labels:
  - pairs: {test-overlay: %s}
patches:
  - target: {kind: ValidatingAdmissionPolicyBinding}
    patch: |
      - {op: replace, path: /spec/policyName, value: setup-ephemeral-buildkit-%s}
      - {op: add, path: /spec/matchResources, value: {namespaceSelector: %s}}
  - target: {kind: ValidatingAdmissionPolicy}
    patch: |
      - {op: replace, path: /spec/variables/0/expression, value: "['%s']"}
`, deploy, ns, ns, ns, ns, policyScope(ns), buildkitImage) + extraPatches
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o644); err != nil {
		t.Fatal(err)
	}
	return overlay
}
