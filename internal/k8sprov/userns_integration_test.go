package k8sprov

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestIntegrationUserNamespaceBuildersBuild provisions builders in user namespaces of their own
// (hostUsers: false, the rootful image, not privileged) for linux/amd64 and linux/arm64 under the
// admission policy's strict mode (allowPrivileged false), checks on the node that root in the
// builder is not root on the node, runs a Dockerfile with a RUN step on each, and logs the
// start-up time beside a rootful builder's measured the same way in the same cluster.
func TestIntegrationUserNamespaceBuildersBuild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, func(p *admissionregistrationv1.ValidatingAdmissionPolicy) {
		variable(t, p, "allowPrivileged").Expression = "false"
	})
	probes := buildArchProbes(t, ctx)

	plan := env.plan(t, "userns-build", Inputs{Platforms: "linux/amd64,linux/arm64"})
	plan.Options.UserNamespaces = true
	prov := env.provisioner(t)
	started := time.Now()
	result, err := prov.Provision(ctx, plan)
	if err != nil {
		t.Fatalf("Provision of user-namespaced builders under the strict admission policy: %v", err)
	}
	t.Logf("user namespaces: both builders usable after %v", time.Since(started).Round(time.Millisecond))
	defer func() {
		if _, err := prov.Teardown(context.WithoutCancel(ctx), env.ns, plan.Key, plan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{result.Secret}}); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	}()
	for _, b := range result.Builders {
		pod, err := env.admin.CoreV1().Pods(env.ns).Get(ctx, b.Pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.Spec.HostUsers == nil || *pod.Spec.HostUsers {
			t.Errorf("%s builder %s: hostUsers %v, want false", b.Platform, b.Pod, pod.Spec.HostUsers)
		}
		// The kubelet and runtime, not just the spec: a runtime without user namespace support
		// (containerd 1.6) would run the pod with the node's identity mapping, 0 0 4294967295.
		out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", env.cluster.Info.Kubeconfig, "exec", "-n", env.ns, b.Pod,
			"-c", ContainerName, "--", "cat", "/proc/self/uid_map").CombinedOutput()
		if err != nil {
			t.Fatalf("%s builder: reading its uid_map: %v\n%s", b.Platform, err, out)
		}
		fields := strings.Fields(string(out))
		if len(fields) != 3 || fields[0] != "0" || fields[1] == "0" {
			t.Errorf("%s builder: uid_map %q: want root (0) mapped to an unprivileged range on the node", b.Platform, strings.TrimSpace(string(out)))
		}
		t.Logf("%s builder: uid_map %s", b.Platform, strings.Join(fields, " "))
	}
	buildOnEach(t, ctx, "user-namespaces", result, probes)
	userns := slowestStartup(result.Builders)
	rootful := logRootfulStartup(t, ctx)
	t.Logf("FIGURE builder start-up, slowest of amd64+arm64, pod created to usable: user namespaces %.2fs, rootful %.2fs",
		userns.Seconds(), rootful.Seconds())
}
