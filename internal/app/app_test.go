package app

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

func TestMainThenPost(t *testing.T) {
	w, ctx := startedWorld(t)

	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatalf("Main: %v\n%s", err, w.stdout.String())
	}
	log := w.stdout.String()

	outputs := readEnvFile(t, w.env[ci.EnvGitHubOutput])
	env := readEnvFile(t, w.env[ci.EnvGitHubEnv])
	key := k8sprov.KeyOf(cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: "7001"})
	builder := "buildkit-" + string(key)
	jobDir := filepath.Join(w.env["RUNNER_TEMP"], "setup-ephemeral-buildkit-"+string(key))

	if outputs["name"] != builder || outputs["driver"] != "remote" || outputs["platforms"] != "linux/amd64,linux/arm64" {
		t.Errorf("outputs name/driver/platforms = %q/%q/%q", outputs["name"], outputs["driver"], outputs["platforms"])
	}
	var endpoints map[string]string
	if err := json.Unmarshal([]byte(outputs["endpoints"]), &endpoints); err != nil || len(endpoints) != 2 {
		t.Errorf("endpoints output %q: %v", outputs["endpoints"], err)
	}
	var nodes []map[string]string
	if err := json.Unmarshal([]byte(outputs["nodes"]), &nodes); err != nil || len(nodes) != 2 {
		t.Fatalf("nodes output %q: %v", outputs["nodes"], err)
	}
	if nodes[1]["pod"] != "buildkit-"+string(key)+"-arm64" || nodes[1]["node"] != "node-arm64" || nodes[1]["status"] != "running" {
		t.Errorf("nodes[1] = %v", nodes[1])
	}
	want := map[string]string{
		EnvBuildxConfig:  filepath.Join(jobDir, "buildx"),
		EnvBuildxBuilder: builder,
		EnvBuildkitHost:  endpoints["linux/amd64"],
		EnvTLSDir:        filepath.Join(jobDir, "tls"),
		EnvTLSCACert:     filepath.Join(jobDir, "tls", "ca.pem"),
		EnvTLSCert:       filepath.Join(jobDir, "tls", "cert.pem"),
		EnvTLSKey:        filepath.Join(jobDir, "tls", "key.pem"),
		EnvTLSServerName: "buildkitd.setup-ephemeral-buildkit.local",
	}
	for name, value := range want {
		if env[name] != value {
			t.Errorf("env %s = %q, want %q", name, env[name], value)
		}
	}
	for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
		fi, err := os.Stat(filepath.Join(jobDir, "tls", f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	summary, _ := os.ReadFile(w.env[ci.EnvGitHubStepSummary])
	for _, s := range []string{"| Platform | Node | Endpoint | Pod | BuildKit | Time to ready |", "| linux/arm64 | node-arm64 |", "v0.34.2"} {
		if !strings.Contains(string(summary), s) {
			t.Errorf("summary lacks %q:\n%s", s, summary)
		}
	}
	// buildctl reads no TLS variables: the exact command line is in the log and the summary.
	tls := filepath.Join(jobDir, "tls")
	buildctl := "buildctl --addr 'tcp://10.0.0.12:1234' --tlsservername 'buildkitd.setup-ephemeral-buildkit.local' --tlscacert '" +
		filepath.Join(tls, "ca.pem") + "' --tlscert '" + filepath.Join(tls, "cert.pem") + "' --tlskey '" + filepath.Join(tls, "key.pem") + "' debug workers"
	if !strings.Contains(string(summary), buildctl) {
		t.Errorf("summary lacks %q:\n%s", buildctl, summary)
	}
	for _, s := range []string{"::group::Starting 2 BuildKit pod(s) in namespace ci", "linux/arm64  Running", "::endgroup::", "ready in", buildctl} {
		if !strings.Contains(log, s) {
			t.Errorf("log lacks %q:\n%s", s, log)
		}
	}
	calls := w.docker.lines()
	if !slices.ContainsFunc(calls, func(c string) bool {
		return strings.HasPrefix(c, "BUILDX_CONFIG="+filepath.Join(jobDir, "buildx")+" docker buildx create --name "+builder+" --driver remote --append --use --node "+builder+"-arm64 --platform linux/arm64 --driver-opt cacert=")
	}) {
		t.Errorf("no buildx create --append --use of the arm64 node in:\n%s", strings.Join(calls, "\n"))
	}
	if got := len(w.pods()); got != 2 {
		t.Fatalf("%d builder pods, want 2", got)
	}

	// The post step, as the runner starts it: same inputs, state as STATE_ variables.
	w.enterPost()
	w.stdout.Reset()
	if !w.github().IsPost() {
		t.Fatal("saved state does not make the next run the post step")
	}
	if err := Post(ctx, w.github(), w.deps()); err != nil {
		t.Fatalf("Post: %v", err)
	}
	if pods, secrets := w.pods(), w.secrets(); len(pods)+len(secrets) > 0 {
		t.Errorf("left after post: pods %v, secrets %v", pods, secrets)
	}
	if _, err := os.Stat(jobDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("job directory %s still there: %v", jobDir, err)
	}
	rm := "BUILDX_CONFIG=" + filepath.Join(jobDir, "buildx") + " docker buildx rm " + builder
	if n := len(slices.DeleteFunc(w.docker.lines(), func(c string) bool { return c != rm })); n != 1 { // in post only: a first create finds no leftover to remove
		t.Errorf("no buildx rm in:\n%s", strings.Join(w.docker.lines(), "\n"))
	}
	if strings.Contains(w.stdout.String(), "::warning::") || strings.Contains(w.stdout.String(), "Last buildkitd log lines") {
		t.Errorf("post of a successful job warned or showed logs:\n%s", w.stdout.String())
	}
}

func TestMainReportsInputsByTheirNames(t *testing.T) {
	w := newWorld(t)
	w.env["INPUT_TIMEOUT"] = "soon"
	w.env["INPUT_NODE-SELECTOR"] = "linux/arm64=pool"
	w.env["INPUT_USE"] = "yes"
	w.env["INPUT_OWNER-POD"] = "Runner_1"
	// One boolean parser: the provisioner's rootless refuses what the flow's use refuses.
	w.env["INPUT_ROOTLESS"] = "tRuE"
	err := Main(context.Background(), w.github(), w.deps())
	if err == nil {
		t.Fatal("Main accepted bad inputs")
	}
	for _, s := range []string{`input "timeout"`, `input "node-selector"`, `input "use"`, `input "owner-pod"`, `input "rootless"`, k8sprov.AcceptedBool} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %s:\n%v", s, err)
		}
	}
	// Only the marker of the post step is saved: the post step must not run Main again.
	if state := readEnvFile(t, w.env[ci.EnvGitHubState]); len(state) != 1 || state[ci.StateIsPost] != "true" {
		t.Errorf("state after refused inputs: %v", state)
	}
	w.enterPost()
	w.stdout.Reset()
	if err := Run(context.Background(), nil, w.deps()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.stdout.String(), "Nothing to clean up") {
		t.Errorf("post step after refused inputs:\n%s", w.stdout.String())
	}
}

func TestMainRollsBackWhenBuildxFails(t *testing.T) {
	w, ctx := startedWorld(t)
	w.docker.failOn = "inspect"
	err := Main(ctx, w.github(), w.deps())
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Main = %v, want the buildx failure", err)
	}
	if pods, secrets := w.pods(), w.secrets(); len(pods)+len(secrets) > 0 {
		t.Errorf("left after a failed main: pods %v, secrets %v", pods, secrets)
	}
	entries, _ := os.ReadDir(w.env["RUNNER_TEMP"])
	if len(entries) > 0 {
		t.Errorf("left in RUNNER_TEMP: %v", entries)
	}
	// The post step still runs and finds nothing to remove.
	w.enterPost()
	w.stdout.Reset()
	if err := Post(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.stdout.String(), "removed its builders itself") {
		t.Errorf("post after a failed main:\n%s", w.stdout.String())
	}
}

func TestMainCancelledWhileProvisioning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newWorld(t)
	w.kubeletOff = true
	w.startKubelet(ctx)
	mainCtx, cancelMain := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Main(mainCtx, w.github(), w.deps()) }()
	select {
	case <-w.podCreated:
	case <-ctx.Done():
		t.Fatal("no builder pod was created")
	}
	cancelMain() // SIGINT
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Main = %v, want context.Canceled", err)
	}
	if pods, secrets := w.pods(), w.secrets(); len(pods)+len(secrets) > 0 {
		t.Errorf("left after cancel: pods %v, secrets %v", pods, secrets)
	}
	state := readEnvFile(t, w.env[ci.EnvGitHubState])
	if state[ci.StateIsPost] != "true" || state[stateNamespace] != "ci" || state[stateOwnerUID] != string(w.runner.UID) {
		t.Errorf("state for post = %v", state)
	}
}

func TestPostShowsLogsWhenJobFailed(t *testing.T) {
	w, ctx := startedWorld(t)
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	w.enterPost()
	w.env["INPUT_JOB-STATUS"] = "failure"
	w.stdout.Reset()
	if err := Post(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	log := w.stdout.String()
	if strings.Count(log, "::group::Last buildkitd log lines of") != 2 || !strings.Contains(log, "fake logs") {
		t.Errorf("post of a failed job shows no logs:\n%s", log)
	}
}

func TestPostWarnsButNeverFails(t *testing.T) {
	w, ctx := startedWorld(t)
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	w.enterPost()
	w.kubeErr = errInjected
	w.docker.failOn = "rm"
	w.stdout.Reset()
	if err := Post(ctx, w.github(), w.deps()); err != nil {
		t.Fatalf("Post failed the job: %v", err)
	}
	log := w.stdout.String()
	for _, s := range []string{"::warning::Connecting to Kubernetes", "::warning::Cleanup: removing buildx builder", "::warning::Cleanup: builder pods of job"} {
		if !strings.Contains(log, s) {
			t.Errorf("post log lacks %q:\n%s", s, log)
		}
	}
}

func TestPostHonoursCleanupFalse(t *testing.T) {
	w, ctx := startedWorld(t)
	w.env["INPUT_CLEANUP"] = "false"
	w.env["INPUT_USE"] = "false"
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	if env := readEnvFile(t, w.env[ci.EnvGitHubEnv]); env[EnvBuildxBuilder] != "" || env[EnvBuildxConfig] == "" {
		t.Errorf("with use: false, BUILDX_BUILDER=%q BUILDX_CONFIG=%q; want none and set", env[EnvBuildxBuilder], env[EnvBuildxConfig])
	}
	if slices.ContainsFunc(w.docker.lines(), func(c string) bool { return strings.Contains(c, "buildx use") || strings.Contains(c, " --use ") }) {
		t.Error("use: false made the builder current")
	}
	w.enterPost()
	if err := Post(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	if got := len(w.pods()); got != 2 {
		t.Errorf("cleanup: false left %d pods, want 2", got)
	}
}

func TestPostWithoutState(t *testing.T) {
	w := newWorld(t)
	w.env["STATE_"+ci.StateIsPost] = "true"
	if err := Post(context.Background(), w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.stdout.String(), "Nothing to clean up") {
		t.Errorf("log: %s", w.stdout.String())
	}
}

func TestRemoveLocalFilesLeavesForeignPaths(t *testing.T) {
	dir := t.TempDir()
	foreign := filepath.Join(dir, "elsewhere")
	if err := os.MkdirAll(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	st := jobState{JobDir: filepath.Join(dir, "job"), TLSDir: foreign, BuildxDir: foreign}
	_ = removeLocalFiles(st)
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("removed a directory not shaped like the job's: %v", err)
	}
}

// TestMainShowsNoLogsOfPodsThatNeverExisted: when a builder pod was never created, the failed
// step shows no "last buildkitd log lines" group for it, only for the pods that exist.
func TestMainShowsNoLogsOfPodsThatNeverExisted(t *testing.T) {
	w, ctx := startedWorld(t)
	w.client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		pod := action.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		if strings.HasSuffix(pod.Name, "-arm64") {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, pod.Name, errors.New("exceeded quota"))
		}
		return false, nil, nil
	})
	if err := Main(ctx, w.github(), w.deps()); err == nil {
		t.Fatal("Main succeeded though a builder pod could not be created")
	}
	log := w.stdout.String()
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "Last buildkitd log lines of") && strings.Contains(line, "-arm64") {
			t.Errorf("logs shown for a pod that never existed: %q\n%s", line, log)
		}
	}
	if n := strings.Count(log, "::group::Last buildkitd log lines of"); n > 1 {
		t.Errorf("%d log groups for one existing pod:\n%s", n, log)
	}
}

// The files a buildkitd-config names are read where the job runs and reach the builders through
// the job's Secret; the builders' config names them there.
func TestMainShipsTheFilesBuildkitdConfigNames(t *testing.T) {
	w, ctx := startedWorld(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "registry-ca.pem"), []byte("the registry's CA"), 0o644); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(config, []byte("[registry.\"registry.example.com\"]\n  ca = [\"registry-ca.pem\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.env["INPUT_BUILDKITD-CONFIG"] = config
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatalf("Main: %v\n%s", err, w.stdout.String())
	}
	list, err := w.client.CoreV1().Secrets(w.ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("secrets: %v, %v", list, err)
	}
	data := list.Items[0].Data
	shipped := "/etc/buildkit/files/file-0-registry-ca.pem"
	if string(data["file-0-registry-ca.pem"]) != "the registry's CA" || !strings.Contains(string(data[k8sprov.SecretKeyConfig]), shipped) {
		t.Errorf("the Secret does not carry the CA where the config names it:\n%s", data[k8sprov.SecretKeyConfig])
	}
}

func TestMainRefusesABuildkitdConfigNamingAMissingFile(t *testing.T) {
	w := newWorld(t)
	config := filepath.Join(t.TempDir(), "buildkitd.toml")
	if err := os.WriteFile(config, []byte("[registry.\"registry.example.com\"]\n  ca = [\"/no/such/ca.pem\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.env["INPUT_BUILDKITD-CONFIG"] = config
	err := Main(context.Background(), w.github(), w.deps())
	for _, s := range []string{`input "buildkitd-config"`, `[registry.\"registry.example.com\"] ca = \"/no/such/ca.pem\"`, "no such file", "readable where the job runs"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %s: %v", s, err)
		}
	}
	if pods, secrets := w.pods(), w.secrets(); len(pods)+len(secrets) != 0 {
		t.Errorf("created %v %v before refusing the input", pods, secrets)
	}
}
