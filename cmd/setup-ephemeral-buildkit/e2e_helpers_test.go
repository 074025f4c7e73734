package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/syncbuf"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

// repoRoot is the repository, seen from this package's directory (where go test runs).
const repoRoot = "../.."

// sharedDir holds what all tests of a run share: the binary under test and the probes.
var (
	sharedDir     string
	sharedOnce    sync.Once
	sharedErr     error
	sharedBinary  string
	sharedProbes  map[string]string
	sharedCleanup []func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, f := range sharedCleanup {
		f()
	}
	os.Exit(code)
}

// toolsDir is where `make tools` puts act, buildctl, kubectl and the docker-buildx plugin.
func toolsDir() string {
	if dir := os.Getenv("CACHE_DIR"); dir != "" {
		return dir
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "setup-ephemeral-buildkit")
}

// buildShared builds, once per test run, the binary the action starts (as `make dist` does, for
// this machine's architecture) and the arch probe for both platforms.
func buildShared(t *testing.T) {
	t.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "seb-e2e-")
		if sharedErr != nil {
			return
		}
		sharedCleanup = append(sharedCleanup, func() { os.RemoveAll(sharedDir) })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		sharedBinary = filepath.Join(sharedDir, "setup-ephemeral-buildkit-linux-"+runtime.GOARCH)
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", version.LDFlags("e2e", ""), "-o", sharedBinary, ".")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			sharedErr = fmt.Errorf("building the binary: %v\n%s", err, out)
			return
		}
		sharedProbes = map[string]string{}
		for _, arch := range []string{"amd64", "arm64"} {
			probe := filepath.Join(sharedDir, "archprobe-"+arch)
			build := exec.CommandContext(ctx, "go", "build", "-o", probe, "./internal/testing/localcluster/testdata/archprobe")
			build.Dir = repoRoot
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
			if out, err := build.CombinedOutput(); err != nil {
				sharedErr = fmt.Errorf("building the arch probe for %s: %v\n%s", arch, err, out)
				return
			}
			sharedProbes[arch] = probe
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
}

// jobWorld is one end-to-end job's world: a namespace with the shipped Role bound to a "runner"
// ServiceAccount, a runner pod (the pause image standing in for an actions-runner pod), a
// kubeconfig for that ServiceAccount, and a workspace act runs the workflow in.
type jobWorld struct {
	cluster    *localcluster.Cluster
	admin      kubernetes.Interface
	ns         string
	runner     *corev1.Pod
	kubeconfig string
	workspace  string
	results    string
	actCache   string
	home       string
}

func newJobWorld(ctx context.Context, t *testing.T) *jobWorld {
	t.Helper()
	c := localcluster.ForTest(t)
	buildShared(t)
	for _, tool := range []string{"act", "buildctl"} {
		if _, err := os.Stat(filepath.Join(toolsDir(), "bin", tool)); err != nil {
			t.Fatalf("%s missing (run `make tools`): %v", tool, err)
		}
	}
	w := &jobWorld{cluster: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig())}
	w.ns = c.CreateNamespace(ctx, t, "e2e")
	c.ApplyShippedRBAC(ctx, t, w.ns, "runner", filepath.Join(repoRoot, "deploy", "rbac.yaml"))
	w.runner = c.CreateRunnerPod(ctx, t, w.ns, "runner-pod", "runner")

	dir := t.TempDir()
	w.workspace = filepath.Join(dir, "workspace")
	w.results = filepath.Join(dir, "results")
	w.actCache = filepath.Join(dir, "act")
	w.home = filepath.Join(dir, "home")
	for _, d := range []string{w.results, w.actCache, filepath.Join(w.home, "docker")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// DOCKER_CONFIG of the job: only the buildx plugin, nothing of this machine's user.
	if err := os.Symlink(filepath.Join(toolsDir(), "docker", "cli-plugins"), filepath.Join(w.home, "docker", "cli-plugins")); err != nil {
		t.Fatal(err)
	}
	w.kubeconfig = filepath.Join(dir, "runner.kubeconfig")
	c.WriteServiceAccountKubeconfig(ctx, t, w.ns, "runner", w.kubeconfig)
	w.makeWorkspace(t)
	return w
}

// makeWorkspace lays out the repository act checks out: the real action.yml and shim, the
// binary in dist/ (as a release commit carries it), the workflow, a Dockerfile and the probes.
func (w *jobWorld) makeWorkspace(t *testing.T) {
	t.Helper()
	copyFile := func(src, dst string, mode fs.FileMode) {
		t.Helper()
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir("testdata/workspace", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel("testdata/workspace", path)
		copyFile(path, filepath.Join(w.workspace, rel), 0o644)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	copyFile(filepath.Join(repoRoot, "action.yml"), filepath.Join(w.workspace, "action.yml"), 0o644)
	copyFile(filepath.Join(repoRoot, "dist", "index.js"), filepath.Join(w.workspace, "dist", "index.js"), 0o644)
	copyFile(sharedBinary, filepath.Join(w.workspace, "dist", filepath.Base(sharedBinary)), 0o755)
	for arch, probe := range sharedProbes {
		copyFile(probe, filepath.Join(w.workspace, "archprobe-"+arch), 0o755)
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"add", "-A"},
		{"-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "commit", "-q", "-m", "e2e"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = w.workspace
		cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
}

// actRun is a running act.
type actRun struct {
	cmd    *exec.Cmd
	output *syncbuf.Buffer
	done   chan struct{}
	err    error
}

// startAct runs the e2e workflow under act in host mode (-P ubuntu-latest=-self-hosted): the
// steps run as processes on this machine, as they would inside a runner pod. Nothing is fetched:
// the local action needs no download, actions/checkout of the local repository is skipped,
// there is no image to pull, no cache server, no version check.
func (w *jobWorld) startAct(ctx context.Context, t *testing.T, vars map[string]string) *actRun {
	t.Helper()
	args := []string{"push",
		"-W", ".github/workflows/e2e.yml",
		"-P", "ubuntu-latest=-self-hosted",
		"--action-offline-mode", "--pull=false", "--no-cache-server",
		"--action-cache-path", w.actCache,
		"--env", "E2E_RESULTS=" + w.results,
		"--env", "ACTIONS_RUNNER_POD_NAME=" + w.runner.Name,
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		args = append(args, "--var", k+"="+vars[k])
	}
	cmd := exec.Command(filepath.Join(toolsDir(), "bin", "act"), args...)
	cmd.Dir = w.workspace
	cmd.Env = []string{
		"PATH=" + filepath.Join(toolsDir(), "bin") + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + w.home,
		"XDG_CONFIG_HOME=" + filepath.Join(w.home, ".config"),
		"XDG_CACHE_HOME=" + filepath.Join(w.home, ".cache"),
		"DOCKER_CONFIG=" + filepath.Join(w.home, "docker"),
		"ACT_DISABLE_VERSION_CHECK=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_CONFIG_NOSYSTEM=1",
		"TMPDIR=" + os.TempDir(),
		// The runner trusts the cluster's registry, as a runner image trusts a private registry's
		// CA: buildx on the runner combines a multi-node push's manifests into one index itself.
		"SSL_CERT_FILE=" + w.cluster.Info.RegistryCAFile,
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	run := &actRun{cmd: cmd, output: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = run.output, run.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting act: %v", err)
	}
	go func() {
		run.err = cmd.Wait()
		close(run.done)
	}()
	t.Cleanup(func() {
		select {
		case <-run.done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-run.done
		}
		if t.Failed() || os.Getenv("E2E_SHOW_ACT") != "" {
			t.Logf("act output:\n%s", run.output.String())
		}
	})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-run.done:
		}
	}()
	return run
}

// wait waits for act to end and returns its error (nil for a successful job).
func (r *actRun) wait(ctx context.Context, t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		t.Fatalf("act did not finish: %v", ctx.Err())
		return nil
	}
}

// waitFile waits until path exists.
func waitFile(ctx context.Context, t *testing.T, run *actRun, path string) {
	t.Helper()
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never appeared: %v", path, ctx.Err())
		case <-run.done:
			t.Fatalf("act ended before %s appeared: %v", path, run.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// result reads a file a step left in the results directory.
func (w *jobWorld) result(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(w.results, name))
	if err != nil {
		t.Fatalf("result %s: %v", name, err)
	}
	return strings.TrimSpace(string(data))
}

// builderObjects lists the managed pods and Secrets in the namespace.
func (w *jobWorld) builderObjects(ctx context.Context, t *testing.T) (pods, secrets []string) {
	t.Helper()
	opts := metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()}
	podList, err := w.admin.CoreV1().Pods(w.ns).List(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range podList.Items {
		pods = append(pods, p.Name)
	}
	secretList, err := w.admin.CoreV1().Secrets(w.ns).List(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secretList.Items {
		secrets = append(secrets, s.Name)
	}
	return pods, secrets
}

// waitBuildersGone watches until no managed pod or Secret is left in the namespace. Deleted
// builders run their preStop drain (10 s without a build connection) before they go.
func (w *jobWorld) waitBuildersGone(ctx context.Context, t *testing.T) {
	t.Helper()
	for {
		pods, secrets := w.builderObjects(ctx, t)
		if len(pods)+len(secrets) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("builders left: pods %v, secrets %v", pods, secrets)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitBuilderPods watches until n builder pods exist and returns them.
func (w *jobWorld) waitBuilderPods(ctx context.Context, t *testing.T, n int, ready func(*corev1.Pod) bool) []corev1.Pod {
	t.Helper()
	for {
		list, err := w.admin.CoreV1().Pods(w.ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		count := 0
		for i := range list.Items {
			if ready(&list.Items[i]) {
				count++
			}
		}
		if count >= n {
			return list.Items
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %d builder pods: %v", n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// shimProcesses returns the pids of node processes running this world's dist/index.js.
func (w *jobWorld) shimProcesses() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(args) >= 2 && filepath.Base(args[0]) == "node" && strings.HasPrefix(args[1], w.actCache) && strings.HasSuffix(args[1], "/dist/index.js") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkNothingLeft asserts that the job left no builder config and no certificate file: the
// after-cleanup action's post step listed RUNNER_TEMP after setup-ephemeral-buildkit's post step.
func (w *jobWorld) checkNothingLeft(t *testing.T) {
	t.Helper()
	left := w.result(t, "after-cleanup.txt")
	for _, line := range strings.Split(left, "\n") {
		if strings.Contains(line, "setup-ephemeral-buildkit") {
			t.Errorf("left in RUNNER_TEMP after the post step: %s", line)
		}
	}
}

// readJSONLines decodes one JSON value per line.
func readJSONLines[T any](t *testing.T, path string) []T {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var v T
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, v)
	}
}
