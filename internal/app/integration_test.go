package app

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// TestIntegrationCLI drives the CLI verbs against the local cluster with the real docker buildx:
// up registers a builder whose nodes answer and whose exported TLS files work with buildctl, env
// repeats the exports, down removes everything, and gc removes an expired job's builders.
func TestIntegrationCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := newCLIWorld(ctx, t, "cli-")
	c, admin, ns, tools, processEnv, deps := w.c, w.admin, w.ns, w.tools, w.processEnv, w.deps
	stdout, stderr := w.stdout, w.stderr
	selectors, stateDir, common := w.selectors, w.stateDir, w.common

	// A builder made earlier in the job, in the runner's own buildx configuration, as
	// docker/setup-buildx-action makes it (never started: only its record matters here).
	earlier := exec.CommandContext(ctx, "docker", "buildx", "create", "--name", "earlier-builder", "--driver", "remote", "tcp://127.0.0.1:9")
	earlier.Env = processEnv
	if out, err := earlier.CombinedOutput(); err != nil {
		t.Fatalf("docker buildx create earlier-builder: %v\n%s", err, out)
	}

	up := append([]string{"up", "--owner-pod", "runner", "--platforms", "linux/amd64,linux/arm64", "--node-selector", selectors, "--job-id", "cli-1"}, common...)
	if err := Run(ctx, up, deps); err != nil {
		t.Fatalf("up: %v\n%s", err, stderr.String())
	}
	exports := parseExports(t, stdout.String())
	builder := exports[EnvBuildxBuilder]
	if builder == "" || exports["EPHEMERAL_BUILDKIT_PLATFORMS"] != "linux/amd64,linux/arm64" {
		t.Fatalf("exports: %v", exports)
	}

	// The builder, as a later command sees it through the exported environment.
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = processEnv
		for k, v := range exports {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	inspect := run("docker", "buildx", "inspect")
	if strings.Count(inspect, "Status:           running") != 2 || !strings.Contains(inspect, "Name:          "+builder) {
		t.Errorf("docker buildx inspect:\n%s", inspect)
	}
	workers := run(filepath.Join(tools, "bin", "buildctl"), "--tlsdir", exports[EnvTLSDir], "--tlsservername", exports[EnvTLSServerName], "debug", "workers")
	if !strings.Contains(workers, "linux/amd64") {
		t.Errorf("buildctl debug workers over the exported TLS files:\n%s", workers)
	}
	// The buildctl command lines up prints (buildctl reads none of the TLS variables), run as a
	// user pastes them: by a shell, without the exports.
	// The CLI's log carries the job summary too, so each line appears twice.
	var buildctlLines []string
	for _, line := range strings.Split(stderr.String(), "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "buildctl --addr ") && !slices.Contains(buildctlLines, line) {
			buildctlLines = append(buildctlLines, line)
		}
	}
	if len(buildctlLines) != 2 {
		t.Fatalf("up printed %d buildctl command lines, want one per platform:\n%s", len(buildctlLines), stderr.String())
	}
	for i, line := range buildctlLines {
		cmd := exec.CommandContext(ctx, "sh", "-c", line)
		cmd.Env = processEnv
		out, err := cmd.CombinedOutput()
		if want := []string{"linux/amd64", "linux/arm64"}[i]; err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s: %v, want workers for %s:\n%s", line, err, want, out)
		}
	}

	// BUILDX_CONFIG is the job's own (README): the earlier builder is not listed in later steps,
	// is reachable with BUILDX_CONFIG cleared, and ours never enters the runner's configuration.
	// buildx ls exits non-zero when a builder does not answer (earlier-builder never does).
	list := func(extra ...string) string {
		cmd := exec.CommandContext(ctx, "docker", "buildx", "ls", "--format", "{{.Name}}")
		cmd.Env = processEnv
		for k, v := range exports {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Env = append(cmd.Env, extra...)
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if ls := list(); strings.Contains(ls, "earlier-builder") || !strings.Contains(ls, builder) {
		t.Errorf("docker buildx ls in a later step:\n%s", ls)
	}
	if ls := list(EnvBuildxConfig + "="); !strings.Contains(ls, "earlier-builder") || strings.Contains(ls, builder) {
		t.Errorf("BUILDX_CONFIG= docker buildx ls:\n%s", ls)
	}
	if !strings.Contains(stderr.String(), "BUILDX_CONFIG= docker buildx build --builder NAME") {
		t.Errorf("up does not say how to reach an earlier builder:\n%s", stderr.String())
	}

	stdout.Reset()
	if err := Run(ctx, []string{"env", "--state-dir", stateDir}, deps); err != nil {
		t.Fatal(err)
	}
	if again := parseExports(t, stdout.String()); again[EnvBuildkitHost] != exports[EnvBuildkitHost] || again[EnvBuildxConfig] != exports[EnvBuildxConfig] {
		t.Errorf("env printed %v, up printed %v", again, exports)
	}

	if err := Run(ctx, []string{"down", "--state-dir", stateDir}, deps); err != nil {
		t.Fatalf("down: %v\n%s", err, stderr.String())
	}
	for _, path := range []string{stateDir, exports[EnvTLSDir], exports[EnvBuildxConfig]} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left after down: %v", path, err)
		}
	}
	waitNoBuilders(ctx, t, admin, ns)

	// A job without an owner, whose deadline has passed by the janitor's clock.
	stdout.Reset()
	up = append([]string{"up", "--owner-pod", "none", "--platforms", "linux/amd64", "--node-selector", selectors,
		"--max-lifetime", "1m", "--timeout", "30s", "--job-id", "cli-2", "--use=false"}, common...)
	if err := Run(ctx, up, deps); err != nil {
		t.Fatalf("up without owner: %v\n%s", err, stderr.String())
	}
	stdout.Reset()
	if err := Run(ctx, []string{"gc", "--kubeconfig", c.Info.Kubeconfig, "--namespace", ns, "--dry-run"}, deps); err != nil {
		t.Fatal(err)
	}
	// The builder has no owner at all: only its deadline removes it, and the report says that.
	if report := stdout.String(); !strings.Contains(report, "keep") || !strings.Contains(report, "no owner pod; kept until it expires at ") {
		t.Errorf("gc before the deadline:\n%s", report)
	}
	later := deps
	later.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	stdout.Reset()
	if err := Run(ctx, []string{"gc", "--kubeconfig", c.Info.Kubeconfig, "--namespace", ns}, later); err != nil {
		t.Fatal(err)
	}
	if report := stdout.String(); !strings.Contains(report, "delete") || !strings.Contains(report, "expired at") {
		t.Errorf("gc after the deadline:\n%s", report)
	}
	waitNoBuilders(ctx, t, admin, ns)
	if err := Run(ctx, []string{"down", "--state-dir", stateDir}, deps); err != nil {
		t.Fatalf("down after gc: %v\n%s", err, stderr.String())
	}
}

// cliWorld is a namespace with a runner pod, a docker configuration with the real buildx
// plugin, and the CLI's dependencies writing to buffers.
type cliWorld struct {
	c              *localcluster.Cluster
	admin          kubernetes.Interface
	ns, tools      string
	processEnv     []string
	deps           Deps
	stdout, stderr *bytes.Buffer
	selectors      string
	stateDir       string
	// common are the flags every verb of this world takes.
	common []string
}

func newCLIWorld(ctx context.Context, t *testing.T, prefix string) *cliWorld {
	t.Helper()
	c := localcluster.ForTest(t)
	tools := os.Getenv("CACHE_DIR")
	if tools == "" {
		home, _ := os.UserHomeDir()
		tools = filepath.Join(home, ".cache", "setup-ephemeral-buildkit")
	}
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	nsObj, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := nsObj.Name
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	for {
		if _, err := admin.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("no default serviceaccount")
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "runner"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "runner", Image: c.Info.Images["pause"], ImagePullPolicy: corev1.PullNever}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dockerConfig := filepath.Join(t.TempDir(), "docker")
	if err := os.MkdirAll(dockerConfig, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(tools, "docker", "cli-plugins"), filepath.Join(dockerConfig, "cli-plugins")); err != nil {
		t.Fatal(err)
	}
	w := &cliWorld{c: c, admin: admin, ns: ns, tools: tools, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	w.processEnv = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig, "PATH="+filepath.Join(tools, "bin")+":"+os.Getenv("PATH"))
	w.deps = DefaultDeps("test")
	w.deps.Getenv = func(string) string { return "" }
	w.deps.Stdout, w.deps.Stderr = w.stdout, w.stderr
	w.deps.Runner = buildx.ExecRunner{Env: w.processEnv}
	w.selectors = "linux/amd64=" + c.Info.ArchNodeLabels["amd64"] + ";linux/arm64=kubernetes.io/arch-," + c.Info.ArchNodeLabels["arm64"]
	w.stateDir = filepath.Join(t.TempDir(), "state")
	w.common = []string{"--kubeconfig", c.Info.Kubeconfig, "--namespace", ns, "--state-dir", w.stateDir}
	return w
}

// parseExports reads `export NAME='value'` lines (values without single quotes inside).
func parseExports(t testing.TB, text string) map[string]string {
	t.Helper()
	exports := map[string]string{}
	var name, value string
	open := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if !open {
			rest, ok := strings.CutPrefix(line, "export ")
			if !ok {
				t.Fatalf("not an export line: %q", line)
			}
			name, value, _ = strings.Cut(rest, "='")
		} else {
			value += "\n" + line
		}
		if open = !strings.HasSuffix(value, "'"); !open {
			exports[name] = strings.TrimSuffix(value, "'")
		}
	}
	return exports
}

func waitNoBuilders(ctx context.Context, t *testing.T, admin kubernetes.Interface, ns string) {
	t.Helper()
	for {
		pods, err := admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
		if err != nil {
			t.Fatal(err)
		}
		secrets, err := admin.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items)+len(secrets.Items) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("builders left: %d pods, %d secrets", len(pods.Items), len(secrets.Items))
		case <-time.After(250 * time.Millisecond):
		}
	}
}
