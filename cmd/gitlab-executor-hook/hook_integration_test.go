package main

// A real-cluster harness for the custom executor: the test plays GitLab Runner and drives the
// real gitlab-executor-hook binary (built here) as the runner does — a process per stage, in a
// process group of its own, config, prepare, run <script> <sub-stage> with a script file per
// sub-stage, cleanup; the job's variables as CUSTOM_ENV_*, job_env from config, the exit-code
// variables, JOB_RESPONSE_FILE — against the local cluster, with the shipped Role bound to the
// "runner" ServiceAccount and a pod standing in for the runner pod.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/gitlabexec"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/syncbuf"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

// repoRoot is the repository, seen from this package's directory (where go test runs).
const repoRoot = "../.."

// GitLab Runner's own values of the exit-code variables are 1 and 2; distinct values here show
// that the hook really maps to what the variables say.
const (
	buildFailureEC  = 42
	systemFailureEC = 43
)

// toolsDir is where `make tools` puts buildctl and the docker-buildx plugin.
func toolsDir() string {
	if dir := os.Getenv("CACHE_DIR"); dir != "" {
		return dir
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "setup-ephemeral-buildkit")
}

// hookWorld is the runner's world: a namespace with deploy/rbac.yaml's Role bound to the
// "runner" ServiceAccount, the runner pod, the hook binary, and the runner pod's environment
// (KUBECONFIG for the ServiceAccount, POD_NAME, the administrator's settings).
type hookWorld struct {
	cluster *localcluster.Cluster
	admin   kubernetes.Interface
	ns      string
	runner  *corev1.Pod
	root    string
	hook    string
	probes  map[string]string
	hookEnv []string
}

func newHookWorld(ctx context.Context, t *testing.T) *hookWorld {
	t.Helper()
	c := localcluster.ForTest(t)
	for _, tool := range []string{filepath.Join("bin", "buildctl"), filepath.Join("docker", "cli-plugins", "docker-buildx")} {
		if _, err := os.Stat(filepath.Join(toolsDir(), tool)); err != nil {
			t.Fatalf("%s missing (run `make tools`): %v", tool, err)
		}
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Fatalf("the docker CLI is not on PATH: %v", err)
	}
	w := &hookWorld{cluster: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig()), root: t.TempDir()}
	built := time.Now()
	w.build(ctx, t)
	t.Logf("built the hook and the probes in %v", time.Since(built).Round(100*time.Millisecond))

	w.ns = c.CreateNamespace(ctx, t, "gitlab-hook")
	c.ApplyShippedRBAC(ctx, t, w.ns, "runner", filepath.Join("..", "..", "deploy", "rbac.yaml"))
	w.runner = c.CreateRunnerPod(ctx, t, w.ns, "gitlab-runner-0", "runner")
	kubeconfig := filepath.Join(w.root, "runner.kubeconfig")
	c.WriteServiceAccountKubeconfig(ctx, t, w.ns, "runner", kubeconfig)

	// The runner pod's own HOME and DOCKER_CONFIG: only the buildx plugin, nothing of this
	// machine's user (as the act tests do). The hook and every script inherit them; each job's
	// builders live in its own BUILDX_CONFIG.
	home := filepath.Join(w.root, "home")
	if err := os.MkdirAll(filepath.Join(home, ".docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(toolsDir(), "docker", "cli-plugins"), filepath.Join(home, ".docker", "cli-plugins")); err != nil {
		t.Fatal(err)
	}
	path := strings.Join([]string{filepath.Join(toolsDir(), "bin"), filepath.Dir(docker), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, string(os.PathListSeparator))
	w.hookEnv = []string{
		"PATH=" + path,
		"HOME=" + home,
		"DOCKER_CONFIG=" + filepath.Join(home, ".docker"),
		"KUBECONFIG=" + kubeconfig,
		"POD_NAME=" + w.runner.Name,
		"LANG=C.UTF-8",
		gitlabexec.EnvStateDir + "=" + filepath.Join(w.root, "state"),
		gitlabexec.EnvBuildsDir + "=" + filepath.Join(w.root, "builds"),
		gitlabexec.EnvCacheDir + "=" + filepath.Join(w.root, "cache"),
		gitlabexec.EnvPerJobBuildsDir + "=true",
		gitlabexec.EnvCleanupTimeout + "=60s",
		gitlabexec.EnvInputPrefix + "NODE_SELECTOR=linux/amd64=" + c.Info.ArchNodeLabels["amd64"] + ";linux/arm64=kubernetes.io/arch-," + c.Info.ArchNodeLabels["arm64"],
		gitlabexec.EnvInputPrefix + "TIMEOUT=90s",
		gitlabexec.EnvInputPrefix + "PLATFORMS=linux/amd64",
	}
	return w
}

// build builds the hook as `make dist` does and the arch probe for both platforms.
func (w *hookWorld) build(ctx context.Context, t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	w.hook = filepath.Join(w.root, "bin", "gitlab-executor-hook")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", version.LDFlags("e2e", ""), "-o", w.hook, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the hook: %v\n%s", err, out)
	}
	w.probes = map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		probe := filepath.Join(w.root, "bin", "archprobe-"+arch)
		build := exec.CommandContext(ctx, "go", "build", "-o", probe, "./internal/testing/localcluster/testdata/archprobe")
		build.Dir = repoRoot
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the arch probe for %s: %v\n%s", arch, err, out)
		}
		w.probes[arch] = probe
	}
}

// builderObjects lists the managed pods (with their owners) and Secrets in the namespace.
func (w *hookWorld) builderObjects(ctx context.Context) (pods []corev1.Pod, secrets []string, err error) {
	return w.builderObjectsOf(ctx, "")
}

// builderObjectsOf lists the managed pods and Secrets of GitLab job jobID, or of all jobs when
// jobID is empty.
func (w *hookWorld) builderObjectsOf(ctx context.Context, jobID string) (pods []corev1.Pod, secrets []string, err error) {
	opts := metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()}
	podList, err := w.admin.CoreV1().Pods(w.ns).List(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	secretList, err := w.admin.CoreV1().Secrets(w.ns).List(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	ours := func(obj metav1.Object) bool {
		return jobID == "" || obj.GetAnnotations()[k8sprov.AnnotationJobID] == jobID
	}
	for _, p := range podList.Items {
		if ours(&p) {
			pods = append(pods, p)
		}
	}
	for _, s := range secretList.Items {
		if ours(&s) {
			secrets = append(secrets, s.Name)
		}
	}
	return pods, secrets, nil
}

// hookJob is one GitLab job the "runner" runs.
type hookJob struct {
	w       *hookWorld
	id      int64
	tmp     string // the runner's temporary directory for the job (TMPDIR of every stage)
	results string // where the job's scripts leave evidence; outside every directory cleanup removes
	vars    map[string]string
	jobEnv  map[string]string
	scripts int
	log     bytes.Buffer // every stage's output, for failures
}

func (w *hookWorld) newJob(t *testing.T, id int64) *hookJob {
	t.Helper()
	j := &hookJob{w: w, id: id, tmp: filepath.Join(w.root, fmt.Sprintf("custom-executor%d", id)), results: filepath.Join(w.root, fmt.Sprintf("results-%d", id))}
	for _, d := range []string{j.tmp, j.results} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ids := strconv.FormatInt(id, 10)
	j.vars = map[string]string{
		"CI":                    "true",
		"GITLAB_CI":             "true",
		"CI_JOB_ID":             ids,
		"CI_JOB_NAME":           "image",
		"CI_JOB_STAGE":          "build",
		"CI_JOB_URL":            "https://gitlab.example.com/group/app/-/jobs/" + ids,
		"CI_PIPELINE_ID":        "4711",
		"CI_PROJECT_ID":         "42",
		"CI_PROJECT_PATH":       "group/app",
		"CI_PROJECT_NAME":       "app",
		"CI_COMMIT_SHA":         "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
		"CI_COMMIT_REF_NAME":    "main",
		"CI_SERVER_URL":         "https://gitlab.example.com",
		"CI_JOB_TOKEN":          "glcbt-secret",
		"CI_RUNNER_SHORT_TOKEN": "t3st",
		// The job chooses its architectures (an input jobs may set by default).
		"BUILDKIT_PLATFORMS": "linux/amd64,linux/arm64",
	}
	response := fmt.Sprintf(`{"id": %d, "token": "glcbt-secret",
  "job_info": {"name": "image", "stage": "build", "project_id": 42, "project_name": "app"},
  "git_info": {"repo_url": "https://gitlab.example.com/group/app.git", "ref": "main", "sha": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd", "ref_type": "branch"},
  "runner_info": {"timeout": 3600},
  "variables": [{"key": "CI_JOB_ID", "value": "%d", "public": true}],
  "steps": [{"name": "script", "script": ["docker buildx build ."], "timeout": 3600, "when": "on_success"}]}`, id, id)
	if err := os.WriteFile(filepath.Join(j.tmp, "response.json"), []byte(response), 0o600); err != nil {
		t.Fatal(err)
	}
	return j
}

// env is a stage's environment as the runner builds it.
func (j *hookJob) env() []string {
	env := append([]string{}, j.w.hookEnv...)
	env = append(env,
		"TMPDIR="+j.tmp,
		gitlabexec.EnvBuildFailureExitCode+"="+strconv.Itoa(buildFailureEC),
		gitlabexec.EnvSystemFailureExitCode+"="+strconv.Itoa(systemFailureEC),
		gitlabexec.EnvBuildExitCodeFile+"="+filepath.Join(j.tmp, "exit_code"),
		gitlabexec.EnvJobResponseFile+"="+filepath.Join(j.tmp, "response.json"),
	)
	for k, v := range j.jobEnv {
		env = append(env, k+"="+v)
	}
	for k, v := range j.vars {
		env = append(env, "CUSTOM_ENV_"+k+"="+v)
	}
	return env
}

// startedStage is a hook process the runner has started and not yet waited for.
type startedStage struct {
	j              *hookJob
	args           []string
	cmd            *exec.Cmd
	stdout, stderr *syncbuf.Buffer
	done           chan struct{} // closed once Wait returned
	waitErr        error         // Wait's result, once done is closed
	exited         time.Time     // when Wait returned
	waited         bool          // wait has added the output to the job's log
}

// start starts one hook process as the runner does: in a process group of its own, the job's
// temporary directory as working directory. Its output can be read while it runs.
func (j *hookJob) start(args ...string) (*startedStage, error) {
	cmd := exec.Command(j.w.hook, args...)
	cmd.Env = j.env()
	cmd.Dir = j.tmp
	s := &startedStage{j: j, args: args, cmd: cmd, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.stdout, s.stderr
	// The runner starts every stage in a process group of its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A process the stage leaves behind holding its output must not hang the test; what is left
	// behind is for the tests to find.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.waitErr = cmd.Wait()
		s.exited = time.Now()
		close(s.done)
	}()
	return s, nil
}

// signal sends sig to the stage's process group, as the runner does when the job is cancelled.
func (s *startedStage) signal(sig syscall.Signal) error {
	return syscall.Kill(-s.cmd.Process.Pid, sig)
}

// wait waits up to limit for the stage to exit, killing its process group then, adds its output
// to the job's log and returns its exit code and output.
func (s *startedStage) wait(ctx context.Context, limit time.Duration) (int, string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var err error
	select {
	case <-s.done:
		err = s.waitErr
	case <-ctx.Done():
		_ = s.signal(syscall.SIGKILL)
		<-s.done
		err = fmt.Errorf("%v did not finish within %v", s.args, limit)
	}
	stdout, stderr := s.stdout.String(), s.stderr.String()
	s.waited = true
	fmt.Fprintf(&s.j.log, "=== job %d: %s\n--- stdout\n%s--- stderr\n%s", s.j.id, strings.Join(s.args, " "), stdout, stderr)
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code, err = exitErr.ExitCode(), nil
	}
	return code, stdout, stderr, err
}

// stage runs one hook process as the runner does and returns its exit code and output.
func (j *hookJob) stage(ctx context.Context, limit time.Duration, args ...string) (int, string, string, error) {
	s, err := j.start(args...)
	if err != nil {
		return 0, "", "", err
	}
	return s.wait(ctx, limit)
}

// config runs config_exec and keeps job_env for the later stages.
func (j *hookJob) config(ctx context.Context) (gitlabexec.ConfigOutput, error) {
	var out gitlabexec.ConfigOutput
	code, stdout, _, err := j.stage(ctx, 30*time.Second, "config")
	if err != nil || code != 0 {
		return out, fmt.Errorf("config: exit %d, %v", code, err)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		return out, fmt.Errorf("config printed %q: %w", stdout, err)
	}
	j.jobEnv = out.JobEnv
	return out, nil
}

// prepare runs prepare_exec: up to three attempts while it reports a system failure.
func (j *hookJob) prepare(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		code, _, _, err := j.stage(ctx, 2*time.Minute, "prepare")
		if err != nil {
			return err
		}
		if code == 0 {
			return nil
		}
		if code != systemFailureEC || attempt == 3 {
			return fmt.Errorf("prepare: exit %d after %d attempt(s)", code, attempt)
		}
	}
}

// run writes the sub-stage's script as the runner does — a file of its own in a fresh
// directory under the job's temporary directory — and runs run_exec with it.
func (j *hookJob) run(ctx context.Context, subStage, body string) (int, error) {
	s, err := j.startRun(subStage, body)
	if err != nil {
		return 0, err
	}
	code, _, _, err := s.wait(ctx, 90*time.Second)
	return code, err
}

// startRun writes the sub-stage's script as run does and starts run_exec with it.
func (j *hookJob) startRun(subStage, body string) (*startedStage, error) {
	j.scripts++
	dir := filepath.Join(j.tmp, fmt.Sprintf("script%d", j.scripts))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "script")
	text := "#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n" +
		"export CI_JOB_ID=" + strconv.FormatInt(j.id, 10) + " BUILDKIT_PROGRESS=plain\n" + body + "\n"
	if err := os.WriteFile(script, []byte(text), 0o700); err != nil {
		return nil, err
	}
	return j.start("run", script, subStage)
}

func (j *hookJob) mustRun(ctx context.Context, subStage, body string) error {
	code, err := j.run(ctx, subStage, body)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("run %s: exit %d", subStage, code)
	}
	return nil
}

func (j *hookJob) cleanup(ctx context.Context) error {
	code, _, _, err := j.stage(ctx, 90*time.Second, "cleanup")
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("cleanup: exit %d", code)
	}
	return nil
}

func (j *hookJob) result(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(j.results, name))
	if err != nil {
		t.Fatalf("job %d: result %s: %v", j.id, name, err)
	}
	return strings.TrimSpace(string(data))
}

// both runs f for the two jobs concurrently and fails the test with both jobs' logs if either
// failed.
func both(t *testing.T, what string, jobs [2]*hookJob, f func(j *hookJob) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(j)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%s: %v\n%s\n%s", what, err, jobs[0].log.String(), jobs[1].log.String())
	}
}

// TestIntegrationGitLabHookConcurrentJobs runs two jobs at once on one runner through the real
// hook: each gets builders for linux/amd64 and linux/arm64 owned by the runner pod, builds both
// platforms with docker buildx in step_script, sees only its own builder, and cannot use the
// other job's builder with its certificate; a failing script maps to BUILD_FAILURE_EXIT_CODE;
// cleanup leaves no pod, Secret or job directory.
func TestIntegrationGitLabHookConcurrentJobs(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the hook runs on Linux runners")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	w := newHookWorld(ctx, t)

	// A repository to "clone" in get_sources: the Dockerfile of the act tests and the probes.
	repo := filepath.Join(w.root, "repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile(filepath.Join("..", "setup-ephemeral-buildkit", "testdata", "workspace", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"Dockerfile": dockerfile}
	for arch, probe := range w.probes {
		data, err := os.ReadFile(probe)
		if err != nil {
			t.Fatal(err)
		}
		files["archprobe-"+arch] = data
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(repo, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	jobs := [2]*hookJob{w.newJob(t, 730001), w.newJob(t, 730002)}
	a, b := jobs[0], jobs[1]
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("E2E_SHOW_HOOK") != "" {
			t.Logf("hook output:\n%s\n%s", a.log.String(), b.log.String())
		}
	})
	started := time.Now()
	configs := map[int64]gitlabexec.ConfigOutput{}
	var mu sync.Mutex
	both(t, "config", jobs, func(j *hookJob) error {
		out, err := j.config(ctx)
		mu.Lock()
		configs[j.id] = out
		mu.Unlock()
		return err
	})
	for _, j := range jobs {
		cfg := configs[j.id]
		if want := filepath.Join(w.root, "builds", fmt.Sprintf("job-%d", j.id)); cfg.BuildsDir != want || cfg.BuildsDirIsShared || cfg.Shell != "bash" || cfg.Driver.Name != gitlabexec.DriverName {
			t.Errorf("job %d: config %+v, want builds_dir %s, not shared, shell bash", j.id, cfg, want)
		}
		if cfg.JobEnv[gitlabexec.JobEnvDir] != filepath.Join(w.root, "state", fmt.Sprintf("job-%d", j.id)) {
			t.Errorf("job %d: job_env %v", j.id, cfg.JobEnv)
		}
	}

	// Both jobs start at once.
	both(t, "prepare", jobs, func(j *hookJob) error { return j.prepare(ctx) })
	t.Logf("both jobs prepared in %v", time.Since(started).Round(100*time.Millisecond))

	// Four builder pods, all owned by the runner pod, two per job; one Secret per job.
	pods, secrets, err := w.builderObjects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	perJob := map[string]int{}
	for _, p := range pods {
		perJob[p.Labels[k8sprov.LabelJobKey]]++
		owners := p.OwnerReferences
		if len(owners) != 1 || owners[0].Kind != "Pod" || owners[0].UID != w.runner.UID {
			t.Errorf("builder pod %s owned by %+v, want the runner pod %s (%s)", p.Name, owners, w.runner.Name, w.runner.UID)
		}
	}
	if len(pods) != 4 || len(perJob) != 2 || len(secrets) != 2 {
		t.Errorf("after both prepares: pods per job key %v, Secrets %v; want two jobs with two pods and a Secret each", perJob, secrets)
	}

	// The runner's sub-stages, each a script file of its own. get_sources "clones" into the
	// project directory under the job's builds_dir; step_script builds both platforms.
	both(t, "the job's scripts", jobs, func(j *hookJob) error {
		project := filepath.Join(configs[j.id].BuildsDir, "group", "app")
		if err := j.mustRun(ctx, "prepare_script", `echo "Running on $(hostname)..."`); err != nil {
			return err
		}
		if err := j.mustRun(ctx, "get_sources", fmt.Sprintf("mkdir -p %q && cp -a %q/. %q/", project, repo, project)); err != nil {
			return err
		}
		return j.mustRun(ctx, "step_script", fmt.Sprintf(`cd %[1]q
for v in BUILDX_BUILDER BUILDX_CONFIG BUILDKIT_HOST BUILDKIT_TLS_CACERT BUILDKIT_TLS_CERT BUILDKIT_TLS_KEY BUILDKIT_TLS_SERVERNAME DOCKER_CONFIG; do
  printenv "$v" > %[2]q/"$v"
done
docker buildx ls > %[2]q/buildx-ls
docker buildx build --platform linux/amd64,linux/arm64 --output "type=local,dest=%[2]s/out" .`, project, j.results))
	})

	t.Logf("both jobs built both platforms after %v", time.Since(started).Round(100*time.Millisecond))

	// Each platform's RUN step ran as its architecture, for both jobs.
	for _, j := range jobs {
		for _, arch := range []string{"amd64", "arm64"} {
			if got := j.result(t, filepath.Join("out", "linux_"+arch, "result")); got != "linux/"+arch {
				t.Errorf("job %d: the linux/%s build's RUN step ran as %q", j.id, arch, got)
			}
		}
	}

	// Each job sees only its own builder.
	if a.result(t, "BUILDX_BUILDER") == b.result(t, "BUILDX_BUILDER") || a.result(t, "BUILDX_CONFIG") == b.result(t, "BUILDX_CONFIG") ||
		a.result(t, "BUILDKIT_HOST") == b.result(t, "BUILDKIT_HOST") {
		t.Errorf("the jobs share a builder: BUILDX_BUILDER %q/%q, BUILDX_CONFIG %q/%q, BUILDKIT_HOST %q/%q",
			a.result(t, "BUILDX_BUILDER"), b.result(t, "BUILDX_BUILDER"), a.result(t, "BUILDX_CONFIG"), b.result(t, "BUILDX_CONFIG"),
			a.result(t, "BUILDKIT_HOST"), b.result(t, "BUILDKIT_HOST"))
	}
	for _, pair := range [][2]*hookJob{{a, b}, {b, a}} {
		own, other := pair[0], pair[1]
		ls := own.result(t, "buildx-ls")
		if !strings.Contains(ls, own.result(t, "BUILDX_BUILDER")) || strings.Contains(ls, other.result(t, "BUILDX_BUILDER")) {
			t.Errorf("job %d: docker buildx ls shows\n%s\nwant its own builder %s and not job %d's %s", own.id, ls,
				own.result(t, "BUILDX_BUILDER"), other.id, other.result(t, "BUILDX_BUILDER"))
		}
		if dir := own.result(t, "BUILDKIT_TLS_KEY"); !strings.HasPrefix(dir, own.jobEnv[gitlabexec.JobEnvDir]+"/") {
			t.Errorf("job %d: client key %s outside its job directory %s", own.id, dir, own.jobEnv[gitlabexec.JobEnvDir])
		}
	}

	// In after_script each job reaches its own builder with its own certificate, and the other
	// job's builder refuses that certificate (the other builder's CA is public: the client
	// trusts the server, the server must still refuse the client). A failing after_script is a
	// build failure: BUILD_FAILURE_EXIT_CODE, the script's own code in BUILD_EXIT_CODE_FILE.
	otherHost := map[*hookJob][2]string{
		a: {b.result(t, "BUILDKIT_HOST"), b.result(t, "BUILDKIT_TLS_CACERT")},
		b: {a.result(t, "BUILDKIT_HOST"), a.result(t, "BUILDKIT_TLS_CACERT")},
	}
	both(t, "after_script", jobs, func(j *hookJob) error {
		other := a
		if j == a {
			other = b
		}
		code, err := j.run(ctx, "after_script", fmt.Sprintf(`workers() { timeout 30 buildctl --addr "$1" --tlscacert "$2" --tlscert "$BUILDKIT_TLS_CERT" --tlskey "$BUILDKIT_TLS_KEY" --tlsservername "$BUILDKIT_TLS_SERVERNAME" debug workers; }
workers "$BUILDKIT_HOST" "$BUILDKIT_TLS_CACERT" > %[1]q/own-workers 2>&1
if workers %[2]q %[3]q > %[1]q/other-workers 2>&1; then
  echo "job %[4]d's builder accepted this job's certificate" >&2
  exit 1
fi
if buildctl --addr %[2]q --tlscacert "$BUILDKIT_TLS_CACERT" --tlscert "$BUILDKIT_TLS_CERT" --tlskey "$BUILDKIT_TLS_KEY" --tlsservername "$BUILDKIT_TLS_SERVERNAME" debug workers > %[1]q/other-workers-own-ca 2>&1; then
  echo "job %[4]d's builder answered with this job's files" >&2
  exit 1
fi
exit 7`, j.results, otherHost[j][0], otherHost[j][1], other.id))
		if err != nil {
			return err
		}
		if code != buildFailureEC {
			return fmt.Errorf("after_script ending with exit 7: hook exit %d, want BUILD_FAILURE_EXIT_CODE %d", code, buildFailureEC)
		}
		if data, err := os.ReadFile(filepath.Join(j.tmp, "exit_code")); err != nil || strings.TrimSpace(string(data)) != "7" {
			return fmt.Errorf("BUILD_EXIT_CODE_FILE holds %q (%v), want 7", data, err)
		}
		return nil
	})
	for _, j := range jobs {
		if own := j.result(t, "own-workers"); !strings.Contains(own, "linux/amd64") {
			t.Errorf("job %d: its own builder's workers:\n%s", j.id, own)
		}
		// buildctl's client does not even offer a certificate the server's CA list does not
		// name ("tls: certificate required"), or sees the refusal as a closed connection.
		t.Logf("job %d: buildctl with its certificate at the other job's builder: %s", j.id, lastLine(j.result(t, "other-workers")))
	}
	// A client that does present the other job's certificate is refused by the server itself.
	for _, pair := range [][2]*hookJob{{a, b}, {b, a}} {
		builderOf, certOf := pair[0], pair[1]
		err := presentCertificate(builderOf.result(t, "BUILDKIT_HOST"), builderOf.result(t, "BUILDKIT_TLS_SERVERNAME"), builderOf.result(t, "BUILDKIT_TLS_CACERT"),
			certOf.result(t, "BUILDKIT_TLS_CERT"), certOf.result(t, "BUILDKIT_TLS_KEY"))
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("job %d's builder with job %d's client certificate: %v, want a TLS certificate alert", builderOf.id, certOf.id, err)
		} else {
			t.Logf("job %d's builder with job %d's client certificate: %v", builderOf.id, certOf.id, err)
		}
		if err := presentCertificate(builderOf.result(t, "BUILDKIT_HOST"), builderOf.result(t, "BUILDKIT_TLS_SERVERNAME"), builderOf.result(t, "BUILDKIT_TLS_CACERT"),
			builderOf.result(t, "BUILDKIT_TLS_CERT"), builderOf.result(t, "BUILDKIT_TLS_KEY")); err != nil {
			t.Errorf("job %d's builder with its own client certificate: %v", builderOf.id, err)
		}
	}

	// The runner's last sub-stage, then cleanup for both at once.
	both(t, "cleanup", jobs, func(j *hookJob) error {
		if err := j.mustRun(ctx, "cleanup_file_variables", "true"); err != nil {
			return err
		}
		return j.cleanup(ctx)
	})
	if log := a.log.String(); !strings.Contains(log, "gitlab-executor-hook cleanup: removed "+a.jobEnv[gitlabexec.JobEnvDir]) {
		t.Errorf("cleanup did not log removing the job directory")
	}

	t.Logf("both jobs cleaned up after %v", time.Since(started).Round(100*time.Millisecond))

	// Nothing is left: no builder pod (once their drain is over), no Secret, no job directory.
	for {
		pods, secrets, err := w.builderObjects(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pods)+len(secrets) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("left after cleanup: %d pods, Secrets %v", len(pods), secrets)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, j := range jobs {
		for _, dir := range []string{j.jobEnv[gitlabexec.JobEnvDir], configs[j.id].BuildsDir} {
			if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("job %d: %s left after cleanup (%v)", j.id, dir, err)
			}
		}
	}
	if entries, err := os.ReadDir(filepath.Join(w.root, "state")); err != nil || len(entries) != 0 {
		t.Errorf("state directory after cleanup: %v, %v", entries, err)
	}
	t.Logf("two jobs from config to nothing left in %v", time.Since(started).Round(100*time.Millisecond))
}

// presentCertificate connects to a builder (tcp://host:port) trusting caFile, presents the client
// certificate in certFile and keyFile whatever CAs the server asks for, and reports the server's
// verdict: an error when it refuses the certificate, nil when it accepts it and waits for the
// client's first request.
func presentCertificate(endpoint, serverName, caFile, certFile, keyFile string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", strings.TrimPrefix(endpoint, "tcp://"), &tls.Config{
		RootCAs:              roots,
		ServerName:           serverName,
		NextProtos:           []string{"h2"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	// With TLS 1.3 the server checks the client's certificate after the client's handshake is
	// done; its alert arrives on the first read. A gRPC server that accepted it sends its HTTP/2
	// settings frame first.
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	return err
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
