package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// world is a fake cluster, a fake docker CLI and a fake GitHub runner for one test.
type world struct {
	t       *testing.T
	client  *fake.Clientset
	ns      string
	runner  *corev1.Pod
	docker  *fakeDocker
	ghDir   string
	env     map[string]string
	stdout  bytes.Buffer
	kubeErr error
	// kubelet makes builder pods run; with it off they stay Pending.
	kubeletOff bool
	// podCreated is closed when the first builder pod exists.
	podCreated chan struct{}
	createOnce sync.Once
}

// startedWorld is newWorld with its kubelet running, and a context that ends with the test
// (at the latest after 30 s).
func startedWorld(t *testing.T) (*world, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	w := newWorld(t)
	w.startKubelet(ctx)
	return w, ctx
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, ns: "ci", docker: &fakeDocker{}, ghDir: t.TempDir(), podCreated: make(chan struct{})}
	w.runner = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "runner-abc", Namespace: w.ns, UID: "0d6f3c5e-1111-2222-3333-444455556666"}}
	w.client = fake.NewClientset(w.runner)
	// The API server gives every object a UID; the fake does not, and teardown deletes the
	// Secret by the UID its create returned.
	var uids atomic.Int64
	w.client.PrependReactor("create", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if obj, ok := action.(k8stesting.CreateAction).GetObject().(metav1.Object); ok && obj.GetUID() == "" {
			obj.SetUID(types.UID(fmt.Sprintf("uid-%d", uids.Add(1))))
		}
		return false, nil, nil
	})
	w.env = map[string]string{
		"GITHUB_ACTIONS":          "true",
		"GITHUB_REPOSITORY":       "org/app",
		"GITHUB_RUN_ID":           "42",
		"GITHUB_RUN_ATTEMPT":      "1",
		"GITHUB_JOB":              "image",
		"GITHUB_SHA":              "0123456789abcdef0123456789abcdef01234567",
		"GITHUB_SERVER_URL":       "https://github.example",
		"RUNNER_NAME":             "runner-abc",
		"ACTIONS_RUNNER_POD_NAME": "runner-abc",
		"POD_NAMESPACE":           w.ns,
		"RUNNER_TEMP":             filepath.Join(w.ghDir, "temp"),
		"INPUT_JOB-ID":            "7001",
		"INPUT_PLATFORMS":         "linux/amd64,linux/arm64",
		"INPUT_USE":               "true",
		"INPUT_CLEANUP":           "true",
	}
	for _, f := range []string{ci.EnvGitHubOutput, ci.EnvGitHubEnv, ci.EnvGitHubState, ci.EnvGitHubStepSummary} {
		path := filepath.Join(w.ghDir, f)
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		w.env[f] = path
	}
	if err := os.MkdirAll(w.env["RUNNER_TEMP"], 0o700); err != nil {
		t.Fatal(err)
	}
	return w
}

// startKubelet plays the kubelet: every builder pod created is scheduled, gets an IP and a
// running container.
func (w *world) startKubelet(ctx context.Context) {
	watcher, err := w.client.CoreV1().Pods(w.ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	go func() {
		defer watcher.Stop()
		ip := 10
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-watcher.ResultChan():
				if !ok {
					return
				}
				pod, isPod := ev.Object.(*corev1.Pod)
				if !isPod || ev.Type != watch.Added || !k8sprov.IsManaged(pod) {
					continue
				}
				w.createOnce.Do(func() { close(w.podCreated) })
				if w.kubeletOff {
					continue
				}
				ip++
				pod = pod.DeepCopy()
				pod.Spec.NodeName = "node-" + pod.Labels[k8sprov.LabelArch]
				pod.Status.Phase = corev1.PodRunning
				pod.Status.PodIP = fmt.Sprintf("10.0.0.%d", ip)
				pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
					Name: k8sprov.ContainerName, Image: pod.Spec.Containers[0].Image,
					State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
				}}
				// A pod the flow deleted already (a rollback) is gone, as a real kubelet would find it.
				if _, err := w.client.CoreV1().Pods(w.ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
					w.t.Errorf("kubelet: %v", err)
				}
			}
		}
	}()
}

// deps returns the flow's dependencies wired to this world.
func (w *world) deps() Deps {
	return Deps{
		Getenv:   func(k string) string { return w.env[k] },
		Stdout:   &w.stdout,
		Stderr:   &w.stdout,
		Hostname: func() (string, error) { return "runner-abc", nil },
		ReadFile: func(path string) ([]byte, error) {
			if path == k8sprov.ServiceAccountNamespaceFile {
				return nil, os.ErrNotExist
			}
			return os.ReadFile(path)
		},
		Kube: func(context.Context, string) (*KubeClient, error) {
			if w.kubeErr != nil {
				return nil, w.kubeErr
			}
			return &KubeClient{Client: w.client, Source: "fake"}, nil
		},
		Runner:  w.docker,
		Arch:    "amd64",
		Version: "test",
		Verify: func(_ context.Context, endpoint string, _ *tls.Config) (k8sprov.WorkerReport, error) {
			return k8sprov.WorkerReport{BuildkitVersion: "v0.34.2", Platforms: []ocispec.Platform{
				{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"},
			}}, nil
		},
		VerifyInterval: time.Millisecond,
	}
}

// github returns the GitHub adapter over this world's environment.
func (w *world) github() *ci.GitHub {
	return ci.NewGitHub(ci.WithGetenv(func(k string) string { return w.env[k] }), ci.WithWriter(&w.stdout))
}

// enterPost turns the saved state into STATE_ variables, as the runner does for the post step.
func (w *world) enterPost() {
	for name, value := range readEnvFile(w.t, w.env[ci.EnvGitHubState]) {
		w.env["STATE_"+name] = value
	}
}

func (w *world) pods() []string {
	list, err := w.client.CoreV1().Pods(w.ns).List(context.Background(), metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
	if err != nil {
		w.t.Fatal(err)
	}
	var names []string
	for _, p := range list.Items {
		names = append(names, p.Name)
	}
	return names
}

func (w *world) secrets() []string {
	list, err := w.client.CoreV1().Secrets(w.ns).List(context.Background(), metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
	if err != nil {
		w.t.Fatal(err)
	}
	var names []string
	for _, s := range list.Items {
		names = append(names, s.Name)
	}
	return names
}

// readEnvFile parses a GitHub environment file written in the heredoc syntax.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, delim, ok := strings.Cut(sc.Text(), "<<")
		if !ok {
			t.Fatalf("%s: line %q is not NAME<<DELIMITER", path, sc.Text())
		}
		var lines []string
		for sc.Scan() && sc.Text() != delim {
			lines = append(lines, sc.Text())
		}
		values[name] = strings.Join(lines, "\n")
	}
	return values
}

// fakeDocker answers docker buildx commands the way buildx does for healthy nodes.
type fakeDocker struct {
	mu      sync.Mutex
	calls   []buildx.Command
	failOn  string
	created map[string][]string // builder -> "node endpoint platform"
}

func (f *fakeDocker) Run(_ context.Context, cmd buildx.Command) (buildx.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, cmd)
	if len(cmd.Args) < 3 || cmd.Args[1] != "buildx" {
		return buildx.Result{}, fmt.Errorf("unexpected command %v", cmd.Args)
	}
	sub := cmd.Args[2]
	if sub == f.failOn {
		return buildx.Result{ExitCode: 1, Stderr: []byte("ERROR: injected failure")}, nil
	}
	if f.created == nil {
		f.created = map[string][]string{}
	}
	arg := func(flag string) string {
		for i, a := range cmd.Args {
			if a == flag && i+1 < len(cmd.Args) {
				return cmd.Args[i+1]
			}
		}
		return ""
	}
	switch sub {
	case "create":
		for _, e := range cmd.Env { // buildx keeps its builders there
			if dir, ok := strings.CutPrefix(e, "BUILDX_CONFIG="); ok {
				if err := os.MkdirAll(filepath.Join(dir, "instances"), 0o755); err != nil {
					return buildx.Result{}, err
				}
			}
		}
		name := arg("--name")
		f.created[name] = append(f.created[name], arg("--node")+" "+cmd.Args[len(cmd.Args)-1]+" "+arg("--platform"))
	case "rm":
		name := cmd.Args[len(cmd.Args)-1]
		if _, ok := f.created[name]; !ok {
			return buildx.Result{ExitCode: 1, Stderr: []byte(fmt.Sprintf("ERROR: no builder %q found", name))}, nil
		}
		delete(f.created, name)
	case "inspect":
		name := cmd.Args[len(cmd.Args)-1]
		var b strings.Builder
		fmt.Fprintf(&b, "Name:          %s\nDriver:        remote\n\nNodes:\n", name)
		for _, n := range f.created[name] {
			parts := strings.Fields(n)
			fmt.Fprintf(&b, "Name:             %s\nEndpoint:         %s\nStatus:           running\nBuildKit version: v0.34.2\nPlatforms:        %s*, linux/amd64\n\n", parts[0], parts[1], parts[2])
		}
		return buildx.Result{Stdout: []byte(b.String())}, nil
	}
	return buildx.Result{}, nil
}

// lines returns the recorded commands as text, each with its extra environment.
func (f *fakeDocker) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		out = append(out, strings.Join(append(append([]string(nil), c.Env...), c.Args...), " "))
	}
	return out
}

var errInjected = errors.New("injected")

func mustPlatform(s string) platform.Platform { return platform.MustParse(s) }

func typesUID(s string) types.UID { return types.UID(s) }
