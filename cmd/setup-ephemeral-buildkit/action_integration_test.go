package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// These tests run the real action (action.yml, the dist/index.js shim, the binary) under act in
// host mode against the local cluster, as a job in a runner pod would: the workflow is
// testdata/workspace/.github/workflows/e2e.yml.

// archSelectors maps both architectures onto the local node: amd64 natively, arm64 through the
// node's qemu emulation (the default kubernetes.io/arch selector is dropped for it).
func archSelectors(c *localcluster.Cluster) string {
	return "linux/amd64=" + c.Info.ArchNodeLabels["amd64"] + ";linux/arm64=kubernetes.io/arch-," + c.Info.ArchNodeLabels["arm64"]
}

func (w *jobWorld) vars(extra map[string]string) map[string]string {
	vars := map[string]string{
		"E2E_KUBECONFIG":    w.kubeconfig,
		"E2E_NODE_SELECTOR": archSelectors(w.cluster),
		"E2E_TIMEOUT":       "2m",
	}
	for k, v := range extra {
		vars[k] = v
	}
	return vars
}

// TestIntegrationActionMultiArch runs a job that sets up builders for linux/amd64 and
// linux/arm64 and builds both platforms with docker buildx in a later step, then checks that
// each platform ran as its architecture on its own builder, that later steps saw the outputs and
// environment, and that nothing is left once the job is over.
func TestIntegrationActionMultiArch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	w := newJobWorld(ctx, t)
	run := w.startAct(ctx, t, w.vars(map[string]string{"E2E_BUILD": "true"}))
	if err := run.wait(ctx, t); err != nil {
		t.Fatalf("the job failed: %v", err)
	}
	log := run.output.String()

	// Outputs and environment, as a later step saw them.
	name := w.result(t, "OUT_NAME")
	if !strings.HasPrefix(name, "buildkit-") || w.result(t, "BUILDX_BUILDER") != name {
		t.Errorf("output name %q, BUILDX_BUILDER %q", name, w.result(t, "BUILDX_BUILDER"))
	}
	if got := w.result(t, "OUT_DRIVER"); got != "remote" {
		t.Errorf("output driver %q", got)
	}
	if got := w.result(t, "OUT_PLATFORMS"); got != "linux/amd64,linux/arm64" {
		t.Errorf("output platforms %q", got)
	}
	var endpoints map[string]string
	if err := json.Unmarshal([]byte(w.result(t, "OUT_ENDPOINTS")), &endpoints); err != nil {
		t.Fatalf("output endpoints: %v", err)
	}
	if len(endpoints) != 2 || endpoints["linux/amd64"] == endpoints["linux/arm64"] {
		t.Errorf("output endpoints %v", endpoints)
	}
	if got := w.result(t, "BUILDKIT_HOST"); got != endpoints["linux/amd64"] {
		t.Errorf("BUILDKIT_HOST %q, want the linux/amd64 endpoint %q", got, endpoints["linux/amd64"])
	}
	var nodes []map[string]string
	if err := json.Unmarshal([]byte(w.result(t, "OUT_NODES")), &nodes); err != nil {
		t.Fatalf("output nodes: %v", err)
	}
	for i, arch := range []string{"amd64", "arm64"} {
		if nodes[i]["name"] != name+"-"+arch || nodes[i]["status"] != "running" || nodes[i]["buildkit"] != "v0.34.2" ||
			nodes[i]["endpoint"] != endpoints["linux/"+arch] || nodes[i]["node"] != w.cluster.Info.NodeName {
			t.Errorf("nodes[%d] = %v", i, nodes[i])
		}
	}
	tlsDir := w.result(t, "BUILDKIT_TLS_DIR")
	runnerTemp := w.result(t, "RUNNER_TEMP")
	if !strings.HasPrefix(tlsDir, runnerTemp+"/") || w.result(t, "BUILDKIT_TLS_KEY") != filepath.Join(tlsDir, "key.pem") {
		t.Errorf("TLS files %s, %s not in RUNNER_TEMP %s", tlsDir, w.result(t, "BUILDKIT_TLS_KEY"), runnerTemp)
	}
	if got := w.result(t, "key-mode"); got != "600" {
		t.Errorf("client key mode %s, want 600", got)
	}
	if got := w.result(t, "BUILDKIT_TLS_SERVERNAME"); got != "buildkitd.setup-ephemeral-buildkit.local" {
		t.Errorf("BUILDKIT_TLS_SERVERNAME %q", got)
	}

	// Each platform's RUN step ran as its own architecture.
	for _, arch := range []string{"amd64", "arm64"} {
		got := w.result(t, filepath.Join("out", "linux_"+arch, "result"))
		if got != "linux/"+arch {
			t.Errorf("the linux/%s build's RUN step ran as %q", arch, got)
		}
	}

	// Each platform was built on its own builder. buildx names the node of every build record
	// (ref builder/node/id), and each daemon's own history, read with buildctl over the exported
	// TLS files, holds only its platform's build.
	type buildxRecord struct {
		Ref    string `json:"ref"`
		Status string `json:"status"`
	}
	var recordNodes []string
	for _, r := range readJSONLines[buildxRecord](t, filepath.Join(w.results, "buildx-history.jsonl")) {
		parts := strings.Split(r.Ref, "/")
		if len(parts) != 3 || parts[0] != name || r.Status != "Completed" {
			t.Errorf("buildx history record %+v", r)
			continue
		}
		recordNodes = append(recordNodes, parts[1])
	}
	slices.Sort(recordNodes)
	if want := []string{name + "-amd64", name + "-arm64"}; !slices.Equal(recordNodes, want) {
		t.Errorf("builds ran on nodes %v, want one on each of %v", recordNodes, want)
	}
	type daemonRecord struct {
		Record struct {
			FrontendAttrs map[string]string
		} `json:"record"`
	}
	for _, arch := range []string{"amd64", "arm64"} {
		records := readJSONLines[daemonRecord](t, filepath.Join(w.results, "histories-"+arch+".jsonl"))
		var platforms []string
		for _, r := range records {
			platforms = append(platforms, r.Record.FrontendAttrs["platform"])
		}
		if !slices.Equal(platforms, []string{"linux/" + arch}) {
			t.Errorf("the %s builder built platforms %v, want only linux/%s", arch, platforms, arch)
		}
	}

	// The log: phases in groups, live progress, the post step's cleanup.
	for _, s := range []string{"::group::Starting 2 BuildKit pod(s) in namespace " + w.ns, "linux/arm64  ready: BuildKit v0.34.2",
		"Runner pod: runner-pod", "Removed builder " + name + " and everything it used."} {
		if !strings.Contains(log, s) {
			t.Errorf("the job log lacks %q", s)
		}
	}
	if strings.Contains(log, "::warning::") {
		t.Errorf("the job log has warnings:\n%s", log)
	}

	// Nothing is left: no pod, no Secret, no buildx builder config, no certificate file.
	w.waitBuildersGone(ctx, t)
	w.checkNothingLeft(t)
}

// TestIntegrationActionCancelledWhileProvisioning cancels the job the way the GitHub runner does,
// by SIGINT to the shim, while the builders start: the step must remove them before it exits,
// well within the 7.5 s the runner waits before SIGTERM. The post step runs too and finds
// nothing left.
func TestIntegrationActionCancelledWhileProvisioning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := newJobWorld(ctx, t)
	run := w.startProvisioningForever(ctx, t)
	shims := w.shimProcesses()
	if len(shims) != 1 {
		t.Fatalf("found %d shim processes, want the main step's one", len(shims))
	}
	signalled := time.Now()
	if err := syscall.Kill(shims[0], syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for len(w.shimProcesses()) > 0 && time.Since(signalled) < 15*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	exited := time.Since(signalled)
	t.Logf("the main step exited %s after SIGINT", exited.Round(time.Millisecond))
	if exited > 7500*time.Millisecond {
		t.Errorf("the main step took %s to exit after SIGINT; the runner sends SIGTERM after 7.5 s", exited)
	}
	if err := run.wait(ctx, t); err == nil {
		t.Error("the cancelled job succeeded")
	}
	log := run.output.String()
	for _, s := range []string{"Cancelled: removing the builders of this job",
		"cancelled while the builders were starting: interrupt signal received",
		"Nothing to clean up: the main step failed and removed its builders itself."} {
		if !strings.Contains(log, s) {
			t.Errorf("the job log lacks %q", s)
		}
	}
	w.waitBuildersGone(ctx, t)
	w.checkNothingLeft(t)
}

// TestIntegrationActCancelledWhileProvisioning cancels act itself (SIGINT) while the builders
// start. act kills the step's node process outright; the binary, left behind on the step's
// terminal, gets SIGHUP and removes its builders, and act's post step removes anything left.
func TestIntegrationActCancelledWhileProvisioning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := newJobWorld(ctx, t)
	run := w.startProvisioningForever(ctx, t)
	if err := run.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_ = run.wait(ctx, t)
	w.waitBuildersGone(ctx, t)
	w.checkNothingLeft(t)
}

// startProvisioningForever starts a job whose builders run the pause image: they never answer,
// so the main step keeps waiting for them. It returns once both builder pods run.
func (w *jobWorld) startProvisioningForever(ctx context.Context, t *testing.T) *actRun {
	t.Helper()
	run := w.startAct(ctx, t, w.vars(map[string]string{"E2E_IMAGE": w.cluster.Info.Images["pause"], "E2E_TIMEOUT": "4m"}))
	w.waitBuilderPods(ctx, t, 2, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	return run
}

// TestIntegrationActionCancelledDuringLaterStep cancels the job (SIGINT to the runner, here act)
// while a later step runs: the post step still runs and removes everything.
func TestIntegrationActionCancelledDuringLaterStep(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := newJobWorld(ctx, t)
	run := w.startAct(ctx, t, w.vars(map[string]string{"E2E_WAIT": "true"}))
	waitFile(ctx, t, run, filepath.Join(w.results, "waiting"))

	// While the job runs, the builders belong to the runner pod and say whose they are.
	pods := w.waitBuilderPods(ctx, t, 2, func(*corev1.Pod) bool { return true })
	for _, p := range pods {
		refs := p.OwnerReferences
		if len(refs) != 1 || refs[0].Kind != "Pod" || refs[0].Name != w.runner.Name || refs[0].UID != w.runner.UID {
			t.Errorf("pod %s owner references %+v, want the runner pod", p.Name, refs)
		}
		if p.Annotations[k8sprov.AnnotationCIPlatform] != "github" || p.Annotations[k8sprov.AnnotationRunID] == "" ||
			p.Annotations[k8sprov.AnnotationExpiresAt] == "" {
			t.Errorf("pod %s annotations %v", p.Name, p.Annotations)
		}
	}

	if err := run.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_ = run.wait(ctx, t) // act reports the cancelled job as it likes; what matters is the cleanup
	if log := run.output.String(); !strings.Contains(log, "Removed builder ") {
		t.Errorf("the post step did not remove the builder")
	}
	w.waitBuildersGone(ctx, t)
	w.checkNothingLeft(t)
}

// TestIntegrationRunnerPodDeleted deletes the runner pod mid-job and kills the runner outright,
// so no post step runs: Kubernetes' garbage collector removes the builders and their Secret,
// through their owner references.
func TestIntegrationRunnerPodDeleted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := newJobWorld(ctx, t)
	run := w.startAct(ctx, t, w.vars(map[string]string{"E2E_WAIT": "true"}))
	waitFile(ctx, t, run, filepath.Join(w.results, "waiting"))
	if pods, secrets := w.builderObjects(ctx, t); len(pods) != 2 || len(secrets) != 1 {
		t.Fatalf("while the job runs: pods %v, secrets %v", pods, secrets)
	}

	if err := syscall.Kill(-run.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = run.wait(ctx, t)
	if err := w.admin.CoreV1().Pods(w.ns).Delete(ctx, w.runner.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(run.output.String(), "Post ") {
		t.Fatal("a post step ran; this test is about jobs that end without one")
	}
	start := time.Now()
	w.waitBuildersGone(ctx, t)
	t.Logf("the garbage collector removed the builders %s after the runner pod was deleted", time.Since(start).Round(100*time.Millisecond))
	// The workspace of the killed job still holds its certificate files, as a dead runner pod's
	// disk would; they are useless now: the CA's builders are gone.
	_ = os.RemoveAll(w.actCache)
}
