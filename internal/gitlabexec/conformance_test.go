package gitlabexec_test

// A conformance harness for the custom-executor protocol: it drives the hook as GitLab Runner
// does — a separate process for every stage, in the order config, prepare, run per sub-stage
// with a script file of its own, cleanup; the job's variables as CUSTOM_ENV_*; the exit-code
// variables; the job response file; SIGTERM to the hook's process group on cancel, then
// cleanup — against fake hooks. The hook process is this test binary, re-executed with
// GITLABEXEC_TEST_HOOK=1 (see TestMain), so that signals and process groups are real.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/gitlabexec"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/syncbuf"
)

const (
	envTestHook   = "GITLABEXEC_TEST_HOOK"
	envLedger     = "FAKE_LEDGER"
	envUpFail     = "FAKE_UP_FAIL"
	envDownHang   = "FAKE_DOWN_HANG"
	envUpHang     = "FAKE_UP_HANG"
	runnerBuildEC = 1 // GitLab Runner's values of BUILD_FAILURE_EXIT_CODE ...
	runnerSysEC   = 2 // ... and SYSTEM_FAILURE_EXIT_CODE
)

func TestMain(m *testing.M) {
	if os.Getenv(envTestHook) == "1" {
		os.Exit(hookMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// hookMain is cmd/gitlab-executor-hook's main with fake hooks.
func hookMain(args []string) int {
	signals, stop := gitlabexec.NotifySignals()
	defer stop()
	settings, err := gitlabexec.SettingsFromEnv(os.Environ(), os.Hostname)
	if err == nil {
		settings.DriverVersion = "test"
		e := &gitlabexec.Executor{Settings: settings, Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr, Signals: signals}
		err = e.Dispatch(context.Background(), args, fakeHooks{ledger: os.Getenv(envLedger)})
	}
	var build *gitlabexec.BuildFailureError
	if err != nil && !errors.As(err, &build) {
		fmt.Fprintf(os.Stderr, "gitlab-executor-hook: %v\n", err)
	}
	return gitlabexec.ExitCode(err, os.Getenv)
}

// fakeHooks stand in for internal/app: Up exports a builder's environment, writes a client key
// into the job's directory and saves state; Down reads the state. Both append to a ledger the
// test reads.
type fakeHooks struct{ ledger string }

func (f fakeHooks) record(format string, args ...any) {
	file, err := os.OpenFile(f.ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		panic(err)
	}
	defer file.Close()
	fmt.Fprintf(file, format+"\n", args...)
}

func (f fakeHooks) Up(ctx context.Context, p ci.System) error {
	job := p.Job()
	if os.Getenv(envUpHang) == "1" {
		f.record("up-waiting %s", job.JobID)
		<-ctx.Done()
		f.record("up-cancelled %s", job.JobID)
		return context.Cause(ctx)
	}
	if os.Getenv(envUpFail) == "1" {
		f.record("up-failed %s", job.JobID)
		return errors.New("no nodes for linux/s390x")
	}
	end := p.Group("Starting builders")
	p.Infof("pods of job %s running", job.JobID)
	end()
	builder := "buildkit-job" + job.JobID
	tls := filepath.Join(p.TempDir(), "tls")
	if err := os.MkdirAll(tls, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tls, "key.pem"), []byte("client key of "+job.JobID), 0o600); err != nil {
		return err
	}
	if err := p.SaveState("builder", builder); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"BUILDX_BUILDER", builder},
		{"BUILDX_CONFIG", filepath.Join(p.TempDir(), "buildx")},
		{"BUILDKIT_HOST", "tcp://10.213.0." + job.JobID[len(job.JobID)-1:] + ":1234"},
		{"BUILDKIT_TLS_DIR", tls},
		{"BUILDKIT_NOTE", "it's a \"quoted\"\nmulti-line $value"},
	} {
		if err := p.ExportEnv(kv[0], kv[1]); err != nil {
			return err
		}
	}
	f.record("up %s repo=%s project=%s platforms=%s namespace=%s name=%q commit=%s", job.JobID, job.Repository, job.RepositoryID, p.Input("platforms"), p.Input("namespace"), job.JobName, job.Commit)
	return nil
}

func (f fakeHooks) Down(ctx context.Context, p ci.System) error {
	if os.Getenv(envDownHang) == "1" {
		f.record("down-hanging %s", p.Job().JobID)
		select {} // a teardown that never returns, even when cancelled
	}
	f.record("down %s builder=%s post=%v", p.Job().JobID, p.State("builder"), p.IsPost())
	return nil
}

// runner plays GitLab Runner.
type runner struct {
	t       *testing.T
	root    string
	ledger  string
	hookEnv []string
	exe     string
}

func newRunner(t *testing.T, settings ...string) *runner {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	r := &runner{t: t, root: root, ledger: filepath.Join(root, "ledger"), exe: exe}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "EPHEMERAL_BUILDKIT_") || strings.HasPrefix(kv, "CUSTOM_ENV_") {
			continue
		}
		r.hookEnv = append(r.hookEnv, kv)
	}
	r.hookEnv = append(r.hookEnv,
		envTestHook+"=1",
		// The race detector sleeps a second before a process exits; the hook exits often.
		"GORACE=atexit_sleep_ms=0",
		envLedger+"="+r.ledger,
		gitlabexec.EnvStateDir+"="+filepath.Join(root, "state"),
		gitlabexec.EnvBuildsDir+"="+filepath.Join(root, "builds"),
		gitlabexec.EnvCacheDir+"="+filepath.Join(root, "cache"),
		gitlabexec.EnvInputPrefix+"NAMESPACE=ci",
		gitlabexec.EnvInputPrefix+"PLATFORMS=linux/amd64",
	)
	r.hookEnv = append(r.hookEnv, settings...)
	return r
}

func (r *runner) ledgerLines() []string {
	data, err := os.ReadFile(r.ledger)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		r.t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// job is one job the runner runs.
type job struct {
	r            *runner
	id           int64
	vars         map[string]string
	dir          string // the runner's temporary directory for the job (TMPDIR)
	responseFile string
	exitCodeFile string
	jobEnv       map[string]string
	scripts      int
	failureEC    [2]int // build, system
}

func (r *runner) newJob(id int64, vars map[string]string) *job {
	r.t.Helper()
	dir := filepath.Join(r.root, fmt.Sprintf("custom-executor%d", id))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		r.t.Fatal(err)
	}
	all := map[string]string{
		"CI":                            "true",
		"GITLAB_CI":                     "true",
		"CI_JOB_ID":                     strconv.FormatInt(id, 10),
		"CI_JOB_NAME":                   "image",
		"CI_JOB_URL":                    fmt.Sprintf("https://gitlab.example.com/group/app/-/jobs/%d", id),
		"CI_PIPELINE_ID":                "4711",
		"CI_PROJECT_ID":                 "42",
		"CI_PROJECT_PATH":               "group/app",
		"CI_PROJECT_PATH_SLUG":          "group-app",
		"CI_CONCURRENT_PROJECT_ID":      "0",
		"CI_COMMIT_SHA":                 "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
		"CI_SERVER_URL":                 "https://gitlab.example.com",
		"CI_BUILDS_DIR":                 "/builds",
		"CI_JOB_TOKEN":                  "glcbt-secret",
		"CI_RUNNER_SHORT_TOKEN":         "t3st",
		"CI_JOB_STAGE":                  "build",
		"CI_DEBUG_TRACE":                "false",
		"CI_COMMIT_REF_NAME":            "main",
		"CI_DISPOSABLE_ENVIRONMENT":     "",
		"CI_REGISTRY_IMAGE":             "registry.example.com/group/app",
		"FF_USE_NEW_BASH_EVAL_STRATEGY": "false",
	}
	for k, v := range vars {
		all[k] = v
	}
	response := fmt.Sprintf(`{"id": %d, "token": "glcbt-secret", "allow_git_fetch": true,
  "job_info": {"name": "image", "stage": "build", "project_id": 42, "project_name": "app"},
  "git_info": {"repo_url": "https://gitlab-ci-token:glcbt-secret@gitlab.example.com/group/app.git", "ref": "main",
    "sha": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd", "before_sha": "0000000000000000000000000000000000000000", "ref_type": "branch", "depth": 20},
  "runner_info": {"timeout": 3600},
  "variables": [{"key": "CI_JOB_ID", "value": "%d", "public": true, "masked": false}],
  "steps": [{"name": "script", "script": ["docker buildx build ."], "timeout": 3600, "when": "on_success", "allow_failure": false}]}`, id, id)
	responseFile := filepath.Join(dir, "response.json")
	if err := os.WriteFile(responseFile, []byte(response), 0o600); err != nil {
		r.t.Fatal(err)
	}
	return &job{r: r, id: id, vars: all, dir: dir, responseFile: responseFile,
		exitCodeFile: filepath.Join(dir, "exit_code"), failureEC: [2]int{runnerBuildEC, runnerSysEC}}
}

// env is a stage's environment as the runner builds it: its own environment, TMPDIR, the exit
// code variables, job_env from config, the job response file, and the job's variables prefixed.
func (j *job) env() []string {
	env := append([]string{}, j.r.hookEnv...)
	env = append(env,
		"TMPDIR="+j.dir,
		gitlabexec.EnvBuildFailureExitCode+"="+strconv.Itoa(j.failureEC[0]),
		gitlabexec.EnvSystemFailureExitCode+"="+strconv.Itoa(j.failureEC[1]),
		gitlabexec.EnvBuildExitCodeFile+"="+j.exitCodeFile,
		gitlabexec.EnvJobResponseFile+"="+j.responseFile,
	)
	for k, v := range j.jobEnv {
		env = append(env, k+"="+v)
	}
	for k, v := range j.vars {
		env = append(env, ci.GitLabCustomExecutorPrefix+k+"="+v)
	}
	return env
}

type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// started is a hook process the runner has started.
type started struct {
	cmd            *exec.Cmd
	stdout, stderr *syncbuf.Buffer
	start          time.Time
}

func (j *job) start(args ...string) *started {
	j.r.t.Helper()
	cmd := exec.Command(j.r.exe, args...)
	cmd.Env = j.env()
	cmd.Dir = j.dir
	s := &started{cmd: cmd, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, start: time.Now()}
	cmd.Stdout, cmd.Stderr = s.stdout, s.stderr
	// The runner starts every stage in a process group of its own and signals the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		j.r.t.Fatal(err)
	}
	j.r.t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	return s
}

func (s *started) wait(t *testing.T, limit time.Duration) result {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		code := 0
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			code = exitErr.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return result{code: code, stdout: s.stdout.String(), stderr: s.stderr.String(), took: time.Since(s.start)}
	case <-time.After(limit):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("%v did not exit within %v\nstdout:\n%s\nstderr:\n%s", s.cmd.Args[1:], limit, s.stdout.String(), s.stderr.String())
		return result{}
	}
}

func (j *job) exec(args ...string) result {
	j.r.t.Helper()
	return j.start(args...).wait(j.r.t, 30*time.Second)
}

// config runs config_exec and checks its output as the runner parses it, refusing unknown keys.
func (j *job) config() gitlabexec.ConfigOutput {
	t := j.r.t
	t.Helper()
	res := j.exec("config")
	if res.code != 0 {
		t.Fatalf("config exited %d: %s", res.code, res.stderr)
	}
	var doc struct {
		BuildsDir         *string `json:"builds_dir"`
		CacheDir          *string `json:"cache_dir"`
		BuildsDirIsShared *bool   `json:"builds_dir_is_shared"`
		Hostname          *string `json:"hostname"`
		Driver            *struct {
			Name    *string `json:"name"`
			Version *string `json:"version"`
		} `json:"driver"`
		JobEnv *map[string]string `json:"job_env"`
		Shell  *string            `json:"shell"`
	}
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("config printed %q: %v", res.stdout, err)
	}
	if doc.BuildsDir == nil || doc.CacheDir == nil || doc.BuildsDirIsShared == nil || doc.Driver == nil || doc.Driver.Name == nil || doc.Shell == nil {
		t.Fatalf("config left out fields: %s", res.stdout)
	}
	var out gitlabexec.ConfigOutput
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatal(err)
	}
	j.jobEnv = out.JobEnv
	return out
}

// prepare runs prepare_exec as the runner does: up to three attempts while it reports a system
// failure.
func (j *job) prepare() (res result, attempts int) {
	for attempts = 1; ; attempts++ {
		res = j.exec("prepare")
		if res.code != j.failureEC[1] || attempts == 3 {
			return res, attempts
		}
	}
}

// writeScript writes a sub-stage's script as the runner does: a file of its own in a fresh
// directory under the job's temporary directory.
func (j *job) writeScript(body string) string {
	j.r.t.Helper()
	j.scripts++
	dir := filepath.Join(j.dir, fmt.Sprintf("script%d", j.scripts))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		j.r.t.Fatal(err)
	}
	path := filepath.Join(dir, "script.sh")
	script := "#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o700); err != nil {
		j.r.t.Fatal(err)
	}
	return path
}

func (j *job) run(subStage, body string) result {
	j.r.t.Helper()
	return j.exec("run", j.writeScript(body), subStage)
}

func (j *job) startRun(subStage, body string) *started {
	j.r.t.Helper()
	return j.start("run", j.writeScript(body), subStage)
}

func (j *job) cleanup() result {
	j.r.t.Helper()
	return j.exec("cleanup")
}

// observe is a script body that writes the builder environment it sees to file.
func observe(file string) string {
	return fmt.Sprintf(`printf '%%s|%%s|%%s|%%s\n' "$BUILDX_BUILDER" "$BUILDKIT_HOST" "${BUILDX_CONFIG:-}" "$BUILDKIT_NOTE" >> %q`, file)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// subStages are the run sub-stages of a job that succeeds, in the runner's order.
var subStages = []string{
	"prepare_script", "get_sources", "restore_cache", "download_artifacts", "step_script",
	"after_script", "archive_cache", "upload_artifacts_on_success", "cleanup_file_variables",
}

func TestConformanceJobSucceeds(t *testing.T) {
	r := newRunner(t)
	j := r.newJob(1001, map[string]string{"BUILDKIT_PLATFORMS": "linux/amd64,linux/arm64", "BUILDKIT_NAMESPACE": "kube-system"})
	cfg := j.config()
	if cfg.BuildsDir != filepath.Join(r.root, "builds") || !cfg.BuildsDirIsShared || cfg.CacheDir != filepath.Join(r.root, "cache") ||
		cfg.Shell != "bash" || cfg.Driver.Name != gitlabexec.DriverName || cfg.Driver.Version != "test" || cfg.Hostname == "" {
		t.Errorf("config = %+v", cfg)
	}
	jobDir := filepath.Join(r.root, "state", "job-1001")
	if cfg.JobEnv[gitlabexec.JobEnvDir] != jobDir {
		t.Errorf("job_env = %v, want %s=%s", cfg.JobEnv, gitlabexec.JobEnvDir, jobDir)
	}

	res, attempts := j.prepare()
	if res.code != 0 || attempts != 1 {
		t.Fatalf("prepare exited %d after %d attempts:\n%s%s", res.code, attempts, res.stdout, res.stderr)
	}
	if !strings.Contains(res.stdout, "section_start:") || !strings.Contains(res.stdout, "pods of job 1001 running") {
		t.Errorf("prepare's job log has no section or no progress:\n%q", res.stdout)
	}
	if info, err := os.Stat(jobDir); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("job directory: %v, %v", info, err)
	}

	seen := filepath.Join(r.root, "seen")
	for _, stage := range subStages {
		res := j.run(stage, observe(seen))
		if res.code != 0 {
			t.Fatalf("%s exited %d: %s", stage, res.code, res.stderr)
		}
	}
	want := "buildkit-job1001|tcp://10.213.0.1:1234|" + filepath.Join(jobDir, "buildx") + "|it's a \"quoted\"\nmulti-line $value\n"
	if got := readFile(t, seen); got != strings.Repeat(want, len(subStages)) {
		t.Errorf("scripts saw\n%s\nwant %d times\n%s", got, len(subStages), want)
	}
	// The script's output is streamed to the job log.
	if res := j.run("step_script", `echo "building on $BUILDX_BUILDER"; echo "warnings" >&2`); res.stdout != "building on buildkit-job1001\n" || res.stderr != "warnings\n" {
		t.Errorf("stdout %q, stderr %q", res.stdout, res.stderr)
	}

	res = j.cleanup()
	if res.code != 0 {
		t.Fatalf("cleanup exited %d: %s", res.code, res.stderr)
	}
	if exists(jobDir) {
		t.Errorf("%s left after cleanup", jobDir)
	}
	if !strings.Contains(res.stderr, "removed "+jobDir) {
		t.Errorf("cleanup did not log what it removed:\n%s", res.stderr)
	}
	wantLedger := []string{
		`up 1001 repo=group/app project=42 platforms=linux/amd64,linux/arm64 namespace=ci name="image" commit=0ff3ae198f8601a285adcf5c0fff204ee6fba5fd`,
		"down 1001 builder=buildkit-job1001 post=true",
	}
	if got := r.ledgerLines(); strings.Join(got, "\n") != strings.Join(wantLedger, "\n") {
		t.Errorf("ledger:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantLedger, "\n"))
	}

	// Cleanup is idempotent: a second one finds nothing and succeeds.
	res = j.cleanup()
	if res.code != 0 || !strings.Contains(res.stderr, jobDir+" is already gone") {
		t.Errorf("second cleanup exited %d: %s", res.code, res.stderr)
	}
}

func TestConformanceScriptFailure(t *testing.T) {
	for _, ec := range [][2]int{{runnerBuildEC, runnerSysEC}, {77, 78}} {
		t.Run(fmt.Sprintf("codes %d,%d", ec[0], ec[1]), func(t *testing.T) {
			r := newRunner(t)
			j := r.newJob(2002, nil)
			j.failureEC = ec
			j.config()
			if res, _ := j.prepare(); res.code != 0 {
				t.Fatalf("prepare: %d %s", res.code, res.stderr)
			}
			if res := j.run("get_sources", "true"); res.code != 0 {
				t.Fatalf("get_sources: %d", res.code)
			}
			res := j.run("step_script", `echo "building"; exit 3`)
			if res.code != ec[0] {
				t.Errorf("failing step_script: hook exited %d, want BUILD_FAILURE_EXIT_CODE %d", res.code, ec[0])
			}
			if got := strings.TrimSpace(readFile(t, j.exitCodeFile)); got != "3" {
				t.Errorf("BUILD_EXIT_CODE_FILE = %q, want 3", got)
			}
			// after_script and the on_failure sub-stages still run, with the builders.
			seen := filepath.Join(r.root, "seen")
			for _, stage := range []string{"after_script", "archive_cache_on_failure", "upload_artifacts_on_failure", "cleanup_file_variables"} {
				if res := j.run(stage, observe(seen)); res.code != 0 {
					t.Errorf("%s: %d %s", stage, res.code, res.stderr)
				}
			}
			if got := strings.Count(readFile(t, seen), "buildkit-job2002|"); got != 4 {
				t.Errorf("%d sub-stages saw the builder, want 4", got)
			}
			if res := j.cleanup(); res.code != 0 {
				t.Errorf("cleanup: %d %s", res.code, res.stderr)
			}
		})
	}
}

// A failing Up is a system failure: the runner tries prepare three times, then fails the job and
// still runs cleanup.
func TestConformancePrepareFailure(t *testing.T) {
	r := newRunner(t, envUpFail+"=1")
	j := r.newJob(3003, nil)
	j.config()
	res, attempts := j.prepare()
	if res.code != runnerSysEC || attempts != 3 {
		t.Fatalf("prepare exited %d after %d attempts, want %d after 3", res.code, attempts, runnerSysEC)
	}
	if !strings.Contains(res.stderr, "no nodes for linux/s390x") {
		t.Errorf("the job log does not say why:\n%s", res.stderr)
	}
	if res := j.cleanup(); res.code != 0 {
		t.Errorf("cleanup: %d %s", res.code, res.stderr)
	}
	want := "up-failed 3003\nup-failed 3003\nup-failed 3003\ndown 3003 builder= post=true"
	if got := strings.Join(r.ledgerLines(), "\n"); got != want {
		t.Errorf("ledger:\n%s\nwant\n%s", got, want)
	}
}

// run without a successful prepare is a system failure, not a script run without builders.
func TestConformanceRunWithoutPrepare(t *testing.T) {
	r := newRunner(t)
	j := r.newJob(3004, nil)
	j.config()
	marker := filepath.Join(r.root, "ran")
	res := j.run("step_script", "touch "+marker)
	if res.code != runnerSysEC || exists(marker) {
		t.Errorf("hook exited %d (want %d), script ran: %v; stderr:\n%s", res.code, runnerSysEC, exists(marker), res.stderr)
	}
}

// The runner cancels a job: SIGTERM to the hook's process group. The hook forwards it to the
// script's process group, the script's trap runs, the hook exits with BUILD_FAILURE_EXIT_CODE,
// and cleanup follows.
func TestConformanceCancel(t *testing.T) {
	r := newRunner(t)
	j := r.newJob(4005, nil)
	j.config()
	if res, _ := j.prepare(); res.code != 0 {
		t.Fatalf("prepare: %d %s", res.code, res.stderr)
	}
	ready := filepath.Join(r.root, "ready")
	trapped := filepath.Join(r.root, "trapped")
	s := j.startRun("step_script", fmt.Sprintf(`trap 'echo "TERM for $BUILDX_BUILDER" >> %q; exit 143' TERM
sleep 60 &
echo $! > %q
wait`, trapped, ready))
	waitFor(t, ready)
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	res := s.wait(t, 10*time.Second)
	if res.code != runnerBuildEC {
		t.Errorf("cancelled step_script: hook exited %d, want %d; stderr:\n%s", res.code, runnerBuildEC, res.stderr)
	}
	if got := readFile(t, trapped); got != "TERM for buildkit-job4005\n" {
		t.Errorf("the script's trap wrote %q: want exactly one TERM", got)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(readFile(t, ready)))
	waitGone(t, pid)
	if res := j.cleanup(); res.code != 0 || !strings.Contains(strings.Join(r.ledgerLines(), "\n"), "down 4005") {
		t.Errorf("cleanup after cancel: %d %s", res.code, res.stderr)
	}
}

// A script that ignores SIGTERM is killed, with everything it started, KillGrace later.
func TestConformanceCancelStubbornScript(t *testing.T) {
	r := newRunner(t, gitlabexec.EnvKillGrace+"=500ms")
	j := r.newJob(4006, nil)
	j.config()
	if res, _ := j.prepare(); res.code != 0 {
		t.Fatalf("prepare: %d %s", res.code, res.stderr)
	}
	ready := filepath.Join(r.root, "ready")
	s := j.startRun("step_script", fmt.Sprintf(`trap '' TERM INT
sleep 60 &
echo $! > %q
wait`, ready))
	waitFor(t, ready)
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	res := s.wait(t, 10*time.Second)
	if res.code != runnerBuildEC || res.took > 5*time.Second {
		t.Errorf("hook exited %d after %v, want %d within seconds; stderr:\n%s", res.code, res.took, runnerBuildEC, res.stderr)
	}
	if !strings.Contains(res.stderr, "did not exit within 500ms") {
		t.Errorf("the kill is not logged:\n%s", res.stderr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(readFile(t, ready)))
	waitGone(t, pid)
}

// SIGTERM during prepare cancels Up; the runner then runs cleanup.
func TestConformanceCancelDuringPrepare(t *testing.T) {
	r := newRunner(t, envUpHang+"=1")
	j := r.newJob(4007, nil)
	j.config()
	s := j.start("prepare")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(strings.Join(r.ledgerLines(), "\n"), "up-waiting 4007") {
		if time.Now().After(deadline) {
			t.Fatal("Up never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	res := s.wait(t, 10*time.Second)
	if res.code != runnerSysEC {
		t.Errorf("cancelled prepare exited %d, want %d", res.code, runnerSysEC)
	}
	if got := strings.Join(r.ledgerLines(), "\n"); !strings.Contains(got, "up-cancelled 4007") {
		t.Errorf("ledger:\n%s", got)
	}
	if res := j.cleanup(); res.code != 0 {
		t.Errorf("cleanup: %d %s", res.code, res.stderr)
	}
}

// A teardown that hangs does not hang cleanup: it gives up after CleanupTimeout and still
// removes the job's files (and its client key).
func TestConformanceCleanupIsBounded(t *testing.T) {
	r := newRunner(t, envDownHang+"=1", gitlabexec.EnvCleanupTimeout+"=300ms")
	j := r.newJob(5008, nil)
	j.config()
	if res, _ := j.prepare(); res.code != 0 {
		t.Fatalf("prepare: %d %s", res.code, res.stderr)
	}
	key := filepath.Join(r.root, "state", "job-5008", "tls", "key.pem")
	if !exists(key) {
		t.Fatalf("no client key at %s", key)
	}
	res := j.cleanup()
	if res.took > 8*time.Second {
		t.Errorf("cleanup took %v", res.took)
	}
	if res.code != runnerSysEC || !strings.Contains(res.stderr, "gave up removing the builders") {
		t.Errorf("cleanup exited %d:\n%s", res.code, res.stderr)
	}
	if exists(key) {
		t.Error("the client key survived cleanup")
	}
}

// Two jobs at once on one runner: each run sees only its own builder, and cleaning up one leaves
// the other's intact.
func TestConformanceConcurrentJobs(t *testing.T) {
	r := newRunner(t, gitlabexec.EnvPerJobBuildsDir+"=true")
	a := r.newJob(6001, nil)
	b := r.newJob(6002, nil)
	ca, cb := a.config(), b.config()
	if ca.BuildsDir == cb.BuildsDir || ca.BuildsDirIsShared || cb.BuildsDirIsShared {
		t.Errorf("per-job builds dirs: %+v %+v", ca, cb)
	}
	for _, j := range []*job{a, b} {
		if res, _ := j.prepare(); res.code != 0 {
			t.Fatalf("prepare %d: %s", j.id, res.stderr)
		}
	}
	if err := os.MkdirAll(filepath.Join(ca.BuildsDir, "group", "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	seen := map[int64]string{6001: filepath.Join(r.root, "seen-a"), 6002: filepath.Join(r.root, "seen-b")}
	for _, j := range []*job{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := j.startRun("step_script", "sleep 0.2; "+observe(seen[j.id]))
			if res := s.wait(t, 10*time.Second); res.code != 0 {
				t.Errorf("job %d: %d %s", j.id, res.code, res.stderr)
			}
		}()
	}
	wg.Wait()
	if got := readFile(t, seen[6001]); !strings.HasPrefix(got, "buildkit-job6001|tcp://10.213.0.1:1234|") {
		t.Errorf("job 6001 saw %q", got)
	}
	if got := readFile(t, seen[6002]); !strings.HasPrefix(got, "buildkit-job6002|tcp://10.213.0.2:1234|") {
		t.Errorf("job 6002 saw %q", got)
	}
	if res := a.cleanup(); res.code != 0 {
		t.Fatalf("cleanup a: %s", res.stderr)
	}
	if exists(ca.BuildsDir) {
		t.Errorf("per-job builds dir %s left", ca.BuildsDir)
	}
	if res := b.run("after_script", observe(seen[6002])); res.code != 0 {
		t.Errorf("job 6002 after job 6001's cleanup: %d %s", res.code, res.stderr)
	}
	if res := b.cleanup(); res.code != 0 {
		t.Fatalf("cleanup b: %s", res.stderr)
	}
	want := "down 6001 builder=buildkit-job6001 post=true"
	if got := r.ledgerLines(); !strings.Contains(strings.Join(got, "\n"), want) || !strings.Contains(strings.Join(got, "\n"), "down 6002 builder=buildkit-job6002") {
		t.Errorf("ledger:\n%s", strings.Join(got, "\n"))
	}
}

// A job's variables cannot point the hook at another job's directory: the id comes from the
// runner's job response.
func TestConformanceJobIDFromJobResponse(t *testing.T) {
	r := newRunner(t)
	victim := r.newJob(7001, nil)
	victim.config()
	if res, _ := victim.prepare(); res.code != 0 {
		t.Fatalf("prepare: %s", res.stderr)
	}
	attacker := r.newJob(7002, map[string]string{"CI_JOB_ID": "7001"})
	cfg := attacker.config()
	if cfg.JobEnv[gitlabexec.JobEnvDir] != filepath.Join(r.root, "state", "job-7002") {
		t.Errorf("job_env = %v", cfg.JobEnv)
	}
	if res := attacker.run("step_script", "true"); res.code != runnerSysEC {
		t.Errorf("a job without prepare ran with another job's builders: exit %d", res.code)
	}
	// Without a job response, a job id that is not a number is refused.
	stray := r.newJob(7003, map[string]string{"CI_JOB_ID": "../job-7001"})
	stray.responseFile = ""
	if res := stray.exec("config"); res.code != runnerSysEC {
		t.Errorf("config with job id ../job-7001: exit %d, stdout %q", res.code, res.stdout)
	}
}

func waitFor(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if data, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(data), "\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGone waits until process pid has exited (a zombie counts as exited).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatal("no pid")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(fields) > 0 && fields[0] == "Z" {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d the script started outlived the cancelled job", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
