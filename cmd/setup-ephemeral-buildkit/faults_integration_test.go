package main

// The fault-injection suite (issue 14 item 2): each case meets a fault the way a user does,
// through the real binary's `up` and `down` and a build with buildctl over the job's mutual TLS,
// against the real local cluster, and asserts what the user relies on: the job's outcome, the
// message, the time to a clear error or to recovery, and nothing left afterwards (builder pods,
// Secrets, and the state directory holding the buildx configuration and the certificates). Each
// case logs a "FAULT" line with its figures; `go test -v -run TestIntegrationFault` prints the
// table of the README.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/syncbuf"
)

// faultWorld is one namespace with the shipped Role bound to a "runner" ServiceAccount, a runner
// pod, that account's kubeconfig, and a build context whose one RUN step sleeps.
type faultWorld struct {
	c          *localcluster.Cluster
	admin      kubernetes.Interface
	ns         string
	runner     *corev1.Pod
	kubeconfig string
	dir        string
	buildCtx   string
	env        []string
}

var (
	sleeperOnce sync.Once
	sleeperPath string
	sleeperErr  error
)

func newFaultWorld(ctx context.Context, t *testing.T, c *localcluster.Cluster) *faultWorld {
	t.Helper()
	ns := c.CreateNamespace(ctx, t, "fault")
	c.ApplyShippedRBAC(ctx, t, ns, "runner", filepath.Join(repoRoot, "deploy", "rbac.yaml"))
	return newFaultWorldIn(ctx, t, c, ns)
}

// newFaultWorldIn is newFaultWorld in namespace ns, whose "runner" ServiceAccount was given its
// rights some other way (the Helm chart, kustomize).
func newFaultWorldIn(ctx context.Context, t *testing.T, c *localcluster.Cluster, ns string) *faultWorld {
	t.Helper()
	buildShared(t)
	sleeperOnce.Do(func() {
		sleeperPath = filepath.Join(sharedDir, "sleeper")
		build := exec.CommandContext(ctx, "go", "build", "-o", sleeperPath, "./testdata/sleeper")
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if out, err := build.CombinedOutput(); err != nil {
			sleeperErr = errors.New("building the sleeper: " + err.Error() + "\n" + string(out))
		}
	})
	if sleeperErr != nil {
		t.Fatal(sleeperErr)
	}
	w := &faultWorld{c: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig()), ns: ns, dir: t.TempDir()}
	w.runner = c.CreateRunnerPod(ctx, t, w.ns, "runner-pod", "runner")
	w.kubeconfig = filepath.Join(w.dir, "runner.kubeconfig")
	c.WriteServiceAccountKubeconfig(ctx, t, w.ns, "runner", w.kubeconfig)

	w.buildCtx = filepath.Join(w.dir, "context")
	home := filepath.Join(w.dir, "home")
	for _, d := range []string{w.buildCtx, filepath.Join(home, ".docker")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(sleeperPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.buildCtx, "sleeper"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	dockerfile := "FROM scratch\nCOPY sleeper /sleeper\nARG SECONDS=1\nARG NONCE\nRUN [\"/sleeper\"]\n"
	if err := os.WriteFile(filepath.Join(w.buildCtx, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(toolsDir(), "docker", "cli-plugins"), filepath.Join(home, ".docker", "cli-plugins")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(toolsDir(), "bin") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if docker, err := exec.LookPath("docker"); err == nil {
		path = filepath.Dir(docker) + ":" + path
	}
	w.env = []string{"PATH=" + path, "HOME=" + home, "DOCKER_CONFIG=" + filepath.Join(home, ".docker")}
	return w
}

// cliRun is one run of the binary.
type cliRun struct {
	cmd     *exec.Cmd
	out     *syncbuf.Buffer
	stdout  *syncbuf.Buffer
	started time.Time
	ended   time.Time
	done    chan struct{}
	err     error
}

func (r *cliRun) code() int {
	if r.cmd.ProcessState == nil {
		return -1
	}
	return r.cmd.ProcessState.ExitCode()
}

func (r *cliRun) took() time.Duration { return r.ended.Sub(r.started) }

func (r *cliRun) wait(ctx context.Context, t *testing.T) *cliRun {
	t.Helper()
	select {
	case <-r.done:
	case <-ctx.Done():
		t.Fatalf("%v did not finish: %v\n%s", r.cmd.Args[1:2], ctx.Err(), r.out.String())
	}
	return r
}

// start runs the binary (or name, when it is a tool) with args in the world's environment.
func (w *faultWorld) start(t *testing.T, env []string, name string, args ...string) *cliRun {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(slices.Clone(w.env), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r := &cliRun{cmd: cmd, out: &syncbuf.Buffer{}, stdout: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = io.MultiWriter(r.out, r.stdout), r.out
	r.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		r.err = cmd.Wait()
		r.ended = time.Now()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-r.done
		}
	})
	return r
}

// startUp starts `up` for job jobID with state in stateDir; extra flags override the defaults.
func (w *faultWorld) startUp(t *testing.T, stateDir, jobID string, extra ...string) *cliRun {
	t.Helper()
	args := []string{"up", "--state-dir", stateDir, "--kubeconfig", w.kubeconfig, "--namespace", w.ns,
		"--owner-pod", w.runner.Name, "--platforms", "linux/amd64", "--image", w.c.Info.Images["buildkit"],
		"--node-selector", "linux/amd64=" + w.c.Info.ArchNodeLabels["amd64"],
		"--timeout", "60s", "--termination-grace-period", "60s",
		"--ci-platform", "github", "--repository", "org/app", "--run-id", "7", "--job-id", jobID, "--job-name", jobID}
	return w.start(t, nil, sharedBinary, append(args, extra...)...)
}

func (w *faultWorld) up(ctx context.Context, t *testing.T, stateDir, jobID string, extra ...string) *cliRun {
	t.Helper()
	r := w.startUp(t, stateDir, jobID, extra...).wait(ctx, t)
	return r
}

func (w *faultWorld) mustUp(ctx context.Context, t *testing.T, stateDir, jobID string, extra ...string) *cliRun {
	t.Helper()
	r := w.up(ctx, t, stateDir, jobID, extra...)
	if r.code() != 0 {
		t.Fatalf("up exited %d after %v:\n%s", r.code(), r.took(), r.out.String())
	}
	return r
}

func (w *faultWorld) down(ctx context.Context, t *testing.T, stateDir string, extra ...string) *cliRun {
	t.Helper()
	args := append([]string{"down", "--state-dir", stateDir, "--kubeconfig", w.kubeconfig}, extra...)
	return w.start(t, nil, sharedBinary, args...).wait(ctx, t)
}

// exports reads the `export NAME='value'` lines up printed.
func exports(t *testing.T, up *cliRun) map[string]string {
	t.Helper()
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(up.stdout.String()))
	for sc.Scan() {
		name, value, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if ok && strings.HasPrefix(sc.Text(), "export ") {
			vars[name] = strings.Trim(value, "'")
		}
	}
	for _, name := range []string{"BUILDKIT_HOST", "BUILDKIT_TLS_CACERT", "BUILDKIT_TLS_CERT", "BUILDKIT_TLS_KEY", "BUILDKIT_TLS_SERVERNAME"} {
		if vars[name] == "" {
			t.Fatalf("up exported no %s:\n%s", name, up.stdout.String())
		}
	}
	return vars
}

// startBuild builds the sleeping Dockerfile on up's builder with buildctl and the job's client
// certificate: a build connection open for about seconds.
func (w *faultWorld) startBuild(t *testing.T, up *cliRun, seconds string) *cliRun {
	t.Helper()
	v := exports(t, up)
	return w.start(t, nil, filepath.Join(toolsDir(), "bin", "buildctl"),
		"--addr", v["BUILDKIT_HOST"], "--tlsservername", v["BUILDKIT_TLS_SERVERNAME"],
		"--tlscacert", v["BUILDKIT_TLS_CACERT"], "--tlscert", v["BUILDKIT_TLS_CERT"], "--tlskey", v["BUILDKIT_TLS_KEY"],
		"build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context="+w.buildCtx, "--local", "dockerfile="+w.buildCtx,
		"--opt", "build-arg:SECONDS="+seconds, "--opt", "build-arg:NONCE="+time.Now().String())
}

// builders lists the managed pods (with those being deleted) and Secrets of the namespace; API
// errors (the API server restarting) count as "unknown" and are retried by the callers.
func (w *faultWorld) builders(ctx context.Context) (pods []corev1.Pod, secrets []string, err error) {
	opts := metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()}
	podList, err := w.admin.CoreV1().Pods(w.ns).List(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	secretList, err := w.admin.CoreV1().Secrets(w.ns).List(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	for _, s := range secretList.Items {
		secrets = append(secrets, s.Name)
	}
	return podList.Items, secrets, nil
}

// waitFor polls cond every 50 ms until it holds and returns when it did.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) time.Time {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return time.Now()
}

// podsExist waits until n builder pods exist, returns them.
func (w *faultWorld) podsExist(ctx context.Context, t *testing.T, n int, ready bool) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(ctx, t, "builder pods", func() bool {
		all, _, err := w.builders(ctx)
		pods = pods[:0]
		for _, p := range all {
			if p.DeletionTimestamp == nil && (!ready || p.Status.PodIP != "" && p.Status.Phase == corev1.PodRunning) {
				pods = append(pods, p)
			}
		}
		return err == nil && len(pods) >= n
	})
	return pods
}

// buildersGone waits until no builder pod or Secret is left and returns when.
func (w *faultWorld) buildersGone(ctx context.Context, t *testing.T) time.Time {
	t.Helper()
	return waitFor(ctx, t, "no builder pod or Secret left", func() bool {
		pods, secrets, err := w.builders(ctx)
		return err == nil && len(pods)+len(secrets) == 0
	})
}

// nothingLeft asserts that no builder pod or Secret is left (within 30 s: pods may still be
// draining) and that the state directory, with its certificates and buildx configuration, is
// gone or empty.
func (w *faultWorld) nothingLeft(ctx context.Context, t *testing.T, stateDirs ...string) {
	t.Helper()
	goneCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for goneCtx.Err() == nil {
		pods, secrets, err := w.builders(goneCtx)
		if err == nil && len(pods)+len(secrets) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pods, secrets, err := w.builders(ctx); err != nil || len(pods)+len(secrets) > 0 {
		var names []string
		for _, p := range pods {
			names = append(names, fmt.Sprintf("%s (phase %s, deleting since %v, containers %+v)", p.Name, p.Status.Phase, p.DeletionTimestamp, p.Status.ContainerStatuses))
		}
		t.Errorf("left in the cluster: pods %v, Secrets %v (err %v)", names, secrets, err)
	}
	for _, dir := range stateDirs {
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				t.Errorf("left on the runner: %s", path)
			}
			return nil
		})
	}
}

// fault logs one row of the suite's table.
func fault(t *testing.T, name, sees string, seconds time.Duration) {
	t.Helper()
	if t.Failed() {
		return
	}
	t.Logf("FAULT | %s | %s | %.1f s | nothing left", name, sees, seconds.Seconds())
}

// firstLine returns the line of out that contains substr, for the table.
func firstLine(out, substr string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, substr) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

func requireSuccess(t *testing.T, what string, r *cliRun) {
	t.Helper()
	if r.code() != 0 {
		t.Fatalf("%s exited %d after %v:\n%s", what, r.code(), r.took(), r.out.String())
	}
}

// TestIntegrationFaultAPIServerRestart restarts the real kube-apiserver in the middle of
// provisioning, of a build and of teardown. Nothing the user does fails: the watch picks up where
// it was, a build never talks to the API server, teardown retries.
func TestIntegrationFaultAPIServerRestart(t *testing.T) {
	c := localcluster.ForDisruptiveTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	w := newFaultWorld(ctx, t, c)

	t.Run("mid-provision", func(t *testing.T) {
		state := filepath.Join(w.dir, "state-provision")
		up := w.startUp(t, state, "restart-provision")
		w.podsExist(ctx, t, 1, false)
		if err := c.RestartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		up.wait(ctx, t)
		requireSuccess(t, "up across an API server restart", up)
		requireSuccess(t, "down", w.down(ctx, t, state))
		w.nothingLeft(ctx, t, state)
		fault(t, "kube-apiserver restarted mid-provision", "up succeeds", up.took())
	})
	t.Run("mid-build", func(t *testing.T) {
		state := filepath.Join(w.dir, "state-build")
		up := w.mustUp(ctx, t, state, "restart-build")
		build := w.startBuild(t, up, "6")
		time.Sleep(2 * time.Second)
		if err := c.RestartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		build.wait(ctx, t)
		requireSuccess(t, "the build across an API server restart", build)
		requireSuccess(t, "down", w.down(ctx, t, state))
		w.nothingLeft(ctx, t, state)
		fault(t, "kube-apiserver restarted mid-build", "the build succeeds", build.took())
	})
	t.Run("mid-teardown", func(t *testing.T) {
		state := filepath.Join(w.dir, "state-teardown")
		w.mustUp(ctx, t, state, "restart-teardown")
		restarted := make(chan error, 1)
		go func() { restarted <- c.RestartAPIServer(ctx) }()
		time.Sleep(100 * time.Millisecond)
		down := w.down(ctx, t, state)
		if err := <-restarted; err != nil {
			t.Fatal(err)
		}
		requireSuccess(t, "down across an API server restart", down)
		t.Logf("down's log:\n%s", down.out.String())
		// The kubelet, whose own watch the restart broke, removes the deleted pod once it is back.
		goneCtx, cancelGone := context.WithTimeout(ctx, 3*time.Minute)
		defer cancelGone()
		gone := w.buildersGone(goneCtx, t)
		w.nothingLeft(ctx, t, state)
		fault(t, "kube-apiserver restarted mid-teardown", "down succeeds in "+down.took().Round(100*time.Millisecond).String()+"; pods gone", gone.Sub(down.started))
	})
}

// resetProxy is a loopback TCP proxy in front of the API server that can reset every connection
// through it (SO_LINGER 0, so the client reads ECONNRESET), as a load balancer or a NAT that
// forgets a connection does.
type resetProxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func newResetProxy(t *testing.T, upstream string) *resetProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{l: l}
	t.Cleanup(func() { l.Close(); p.reset() })
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", upstream)
			if err != nil {
				client.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, client.(*net.TCPConn))
			p.mu.Unlock()
			go func() { _, _ = io.Copy(server, client); server.Close() }()
			go func() { _, _ = io.Copy(client, server); client.Close() }()
		}
	}()
	return p
}

// reset resets every connection open through the proxy and returns how many there were.
func (p *resetProxy) reset() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for _, c := range p.conns {
		_ = c.SetLinger(0)
		_ = c.Close()
	}
	p.conns = nil
	return n
}

// TestIntegrationFaultWatchConnectionsReset resets the CLI's connections to the API server (its
// watch among them) while it waits for the builders, three times: up still succeeds.
func TestIntegrationFaultWatchConnectionsReset(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := newFaultWorld(ctx, t, c)
	server, err := url.Parse(c.Info.Server)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newResetProxy(t, server.Host)
	kc, err := clientcmd.LoadFromFile(w.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cluster := range kc.Clusters {
		cluster.Server = "https://" + proxy.l.Addr().String()
		cluster.TLSServerName = server.Hostname() // the API server's certificate names its own address
	}
	w.kubeconfig = filepath.Join(w.dir, "proxied.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, w.kubeconfig); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(w.dir, "state")
	up := w.startUp(t, state, "watch-reset")
	w.podsExist(ctx, t, 1, false)
	resets := 0
	for range 3 {
		resets += proxy.reset()
		time.Sleep(300 * time.Millisecond)
	}
	up.wait(ctx, t)
	if resets == 0 {
		t.Fatal("no connection was open through the proxy to reset: the test proved nothing")
	}
	requireSuccess(t, "up with its connections reset", up)
	t.Logf("up's log:\n%s", up.out.String())
	requireSuccess(t, "down", w.down(ctx, t, state))
	w.nothingLeft(ctx, t, state)
	fault(t, "watch connections reset (3 times, "+strconv.Itoa(resets)+" connections)", "up succeeds", up.took())
}

// TestIntegrationFaultMainStepKilled SIGKILLs `up` the moment its Secret exists (before its pods
// run), then retries: with its state, and with its state lost. The retry replaces what the
// killed attempt left, Secret included, and down leaves nothing.
func TestIntegrationFaultMainStepKilled(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := newFaultWorld(ctx, t, c)
	for _, keepState := range []bool{true, false} {
		name := map[bool]string{true: "retry-with-state", false: "retry-without-state"}[keepState]
		t.Run(name, func(t *testing.T) {
			state := filepath.Join(w.dir, "state-"+name)
			up := w.startUp(t, state, name)
			waitFor(ctx, t, "the killed attempt's Secret", func() bool {
				_, secrets, err := w.builders(ctx)
				return err == nil && len(secrets) > 0
			})
			_ = syscall.Kill(-up.cmd.Process.Pid, syscall.SIGKILL)
			up.wait(ctx, t)
			_, killedSecrets, err := w.builders(ctx)
			if err != nil || len(killedSecrets) == 0 {
				t.Fatalf("the killed attempt left no Secret (err %v): the test proves nothing", err)
			}
			if !keepState {
				if err := os.RemoveAll(state); err != nil {
					t.Fatal(err)
				}
			}
			retry := w.mustUp(ctx, t, state, name)
			_, secrets, err := w.builders(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(secrets) != 1 {
				t.Errorf("after the retry: Secrets %v (the killed attempt's were %v), want only the retry's", secrets, killedSecrets)
			}
			requireSuccess(t, "down", w.down(ctx, t, state))
			w.nothingLeft(ctx, t, state)
			fault(t, "main step SIGKILLed mid-provision, "+strings.ReplaceAll(name, "-", " "), "the retry succeeds", retry.took())
		})
	}
}

// hostPIDOf returns the host PID of the process called comm in pod's containers (the node is
// this machine), by the pod UID in its cgroup path.
func hostPIDOf(t *testing.T, pod *corev1.Pod, comm string) int {
	t.Helper()
	uid := string(pod.UID)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		name, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(name)) != comm {
			continue
		}
		cgroup, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		if s := string(cgroup); strings.Contains(s, uid) || strings.Contains(s, strings.ReplaceAll(uid, "-", "_")) {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no %s process of pod %s (uid %s) on this node", comm, pod.Name, uid)
	return 0
}

// TestIntegrationFaultDuringBuild disturbs the builder while a build runs on it.
func TestIntegrationFaultDuringBuild(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel) // not defer: the parallel subtests run after this function returns

	t.Run("buildkitd-crash", func(t *testing.T) {
		t.Parallel()
		w := newFaultWorld(ctx, t, c)
		state := filepath.Join(w.dir, "state")
		up := w.mustUp(ctx, t, state, "crash")
		pod := w.podsExist(ctx, t, 1, true)[0]
		build := w.startBuild(t, up, "30")
		time.Sleep(2 * time.Second)
		killed := time.Now()
		if err := syscall.Kill(hostPIDOf(t, &pod, "buildkitd"), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		build.wait(ctx, t)
		if build.code() == 0 {
			t.Fatalf("the build succeeded although its buildkitd was killed:\n%s", build.out.String())
		}
		failedAfter := build.ended.Sub(killed)
		// The post step comes after the kubelet has seen the crash (it reports it within a second
		// or two); a post step that came earlier would show only the log.
		waitFor(ctx, t, "the kubelet to report buildkitd's end", func() bool {
			got, err := w.admin.CoreV1().Pods(w.ns).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil || len(got.Status.ContainerStatuses) == 0 {
				return false
			}
			cs := got.Status.ContainerStatuses[0]
			return cs.RestartCount > 0 || cs.State.Terminated != nil
		})
		// The post step of the failed job: the builders' last words, then cleanup.
		down := w.down(ctx, t, state, "--job-status", "failure")
		requireSuccess(t, "down after the crash", down)
		if !strings.Contains(down.out.String(), "buildkitd ended: Error, exit code 137 (killed") {
			t.Errorf("down of the failed job does not say buildkitd was killed (exit code 137):\n%s", down.out.String())
		}
		if failedAfter > 10*time.Second {
			t.Errorf("the build failed %v after buildkitd was killed, want a clear error within seconds, not a timeout", failedAfter)
		}
		w.nothingLeft(ctx, t, state)
		fault(t, "buildkitd SIGKILLed mid-build", "build fails: "+lastLine(build.out.String())+"; down: "+firstLine(down.out.String(), "137"), failedAfter)
	})

	t.Run("node-drained", func(t *testing.T) {
		t.Parallel()
		w := newFaultWorld(ctx, t, c)
		state := filepath.Join(w.dir, "state")
		up := w.mustUp(ctx, t, state, "drain")
		pod := w.podsExist(ctx, t, 1, true)[0]
		build := w.startBuild(t, up, "8")
		time.Sleep(2 * time.Second)
		evicted := time.Now()
		// kubectl drain evicts each pod through the Eviction API.
		if err := w.admin.PolicyV1().Evictions(w.ns).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: w.ns}}); err != nil {
			t.Fatalf("evicting %s: %v", pod.Name, err)
		}
		build.wait(ctx, t)
		requireSuccess(t, "the build on an evicted builder", build)
		gone := waitFor(ctx, t, "the evicted builder to go", func() bool {
			_, err := w.admin.CoreV1().Pods(w.ns).Get(ctx, pod.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
		if gone.Before(build.ended) {
			t.Errorf("the evicted builder went before its build ended")
		}
		// The quiet period (10 s) after the build's connection closed, then buildkitd stops.
		if after := gone.Sub(build.ended); after > 20*time.Second {
			t.Errorf("the evicted builder went %v after its build ended, want within the 10 s quiet period and a stop", after)
		}
		requireSuccess(t, "down", w.down(ctx, t, state))
		w.nothingLeft(ctx, t, state)
		fault(t, "node drained (builder evicted) mid-build", "the build succeeds; builder gone "+gone.Sub(build.ended).Round(100*time.Millisecond).String()+" after it", gone.Sub(evicted))
	})

	t.Run("runner-pod-deleted", func(t *testing.T) {
		t.Parallel()
		w := newFaultWorld(ctx, t, c)
		state := filepath.Join(w.dir, "state")
		up := w.mustUp(ctx, t, state, "runner-gone")
		w.podsExist(ctx, t, 1, true)
		build := w.startBuild(t, up, "8")
		time.Sleep(2 * time.Second)
		deleted := time.Now()
		if err := w.admin.CoreV1().Pods(w.ns).Delete(ctx, w.runner.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		build.wait(ctx, t)
		requireSuccess(t, "the build while the garbage collector deletes its builder", build)
		gone := w.buildersGone(ctx, t)
		if gone.Before(build.ended) {
			t.Errorf("the builder went before its build ended")
		}
		// A deleted runner pod runs no post step: nothing of the runner is left to check.
		w.nothingLeft(ctx, t)
		fault(t, "runner pod deleted mid-build", "the build succeeds; builder gone "+gone.Sub(build.ended).Round(100*time.Millisecond).String()+" after it", gone.Sub(deleted))
	})

	t.Run("normal-teardown", func(t *testing.T) {
		t.Parallel()
		w := newFaultWorld(ctx, t, c)
		state := filepath.Join(w.dir, "state")
		up := w.mustUp(ctx, t, state, "normal")
		requireSuccess(t, "the build", w.startBuild(t, up, "1").wait(ctx, t))
		down := w.down(ctx, t, state)
		requireSuccess(t, "down", down)
		gone := w.buildersGone(ctx, t)
		// Issue 14 item 6: no build is connected, so nothing is drained: the pods go without
		// waiting out the drain's 10 s quiet period (before the fix: 12-13 s). The bound is the
		// behaviour, not a speed target: the time itself is reported in the fault table, since a
		// loaded machine makes wall-clock targets flaky.
		if took := gone.Sub(down.ended); took > 8*time.Second {
			t.Errorf("builder pods gone %v after a normal teardown ended: the drain waited out its quiet period with nothing connected", took)
		}
		w.nothingLeft(ctx, t, state)
		fault(t, "none: normal end of job", "down takes "+down.took().Round(100*time.Millisecond).String()+" (buildx rm, deletes); pods gone "+
			gone.Sub(down.ended).Round(100*time.Millisecond).String()+" after it", gone.Sub(down.started))
	})
}

func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// TestIntegrationFaultRunnerPodDeletedMidProvision deletes the runner pod while `up` waits for
// its builders: the garbage collector deletes them, and up fails at once saying so.
func TestIntegrationFaultRunnerPodDeletedMidProvision(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := newFaultWorld(ctx, t, c)
	// A registry that accepts connections and never answers: the builder stays in
	// ContainerCreating (pulling) and up keeps waiting, so the runner pod goes mid-provision.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hang.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}()
		for {
			conn, err := hang.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()
	state := filepath.Join(w.dir, "state")
	up := w.startUp(t, state, "runner-gone-early", "--image", hang.Addr().String()+"/moby/buildkit:v0")
	time.Sleep(time.Second)
	w.podsExist(ctx, t, 1, false)
	deleted := time.Now()
	if err := w.admin.CoreV1().Pods(w.ns).Delete(ctx, w.runner.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	up.wait(ctx, t)
	// Let the kubelet's pull fail, so that it can remove the pod.
	hang.Close()
	out := up.out.String()
	if up.code() == 0 {
		t.Fatalf("up succeeded although its runner pod was deleted:\n%s", out)
	}
	if !strings.Contains(out, "deleted") {
		t.Errorf("up failed without saying its builder was deleted:\n%s", out)
	}
	if took := up.ended.Sub(deleted); took > 15*time.Second {
		t.Errorf("up failed %v after the runner pod was deleted, want a clear error within 15 s", took)
	}
	// The job's after_script (the action's post step) runs down whatever up did.
	requireSuccess(t, "down", w.down(ctx, t, state))
	w.nothingLeft(ctx, t, state)
	fault(t, "runner pod deleted mid-provision", firstLine(out, "setup-ephemeral-buildkit:"), up.ended.Sub(deleted))
}

// TestIntegrationFaultBuilderCannotStart: images that are not there or cannot be pulled, and a
// node without the requested memory. up fails fast with Kubernetes' reason and removes what it
// created.
func TestIntegrationFaultBuilderCannotStart(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel) // not defer: the parallel subtests run after this function returns
	// A registry on loopback that has no image at all.
	registry := &http.Server{Handler: http.NotFoundHandler()}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = registry.Serve(l) }()
	t.Cleanup(func() { registry.Close() })
	// A port nobody listens on.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unreachable := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name   string
		flags  []string
		want   []string
		within time.Duration
	}{
		{"image missing", []string{"--image", l.Addr().String() + "/moby/buildkit:no-such-tag"}, []string{"no-such-tag", "ErrImagePull"}, 30 * time.Second},
		{"image unpullable", []string{"--image", unreachable + "/moby/buildkit:v0"}, []string{unreachable, "ErrImagePull"}, 30 * time.Second},
		{"node out of the requested memory", []string{"--requests", "memory=1000Gi"}, []string{"Unschedulable", "memory"}, 15 * time.Second},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			t.Parallel()
			w := newFaultWorld(ctx, t, c)
			state := filepath.Join(w.dir, "state")
			up := w.up(ctx, t, state, strings.ReplaceAll(tc.name, " ", "-"), tc.flags...)
			out := up.out.String()
			if up.code() == 0 {
				t.Fatalf("up succeeded:\n%s", out)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("up's message lacks %q:\n%s", want, out)
				}
			}
			if up.took() > tc.within {
				t.Errorf("up took %v to fail, want a clear error within %v", up.took(), tc.within)
			}
			// up removed its builders; the after_script's down removes the rest.
			pods, secrets, err := w.builders(ctx)
			pods = slices.DeleteFunc(pods, func(p corev1.Pod) bool { return p.DeletionTimestamp != nil })
			if err != nil || len(pods)+len(secrets) > 0 {
				t.Errorf("left by the failed up: %d pods not being deleted, Secrets %v (err %v)", len(pods), secrets, err)
			}
			requireSuccess(t, "down", w.down(ctx, t, state))
			w.nothingLeft(ctx, t, state)
			fault(t, tc.name, firstLine(out, tc.want[len(tc.want)-1]), up.took())
		})
	}
}
