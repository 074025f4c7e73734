package gitlabexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

func TestSettingsFromEnv(t *testing.T) {
	s, err := SettingsFromEnv([]string{
		"PATH=/usr/bin",
		EnvBuildsDir + "=/srv/builds",
		EnvPerJobBuildsDir + "=true",
		EnvJobInputs + "=platforms, requests ,,limits",
		EnvCleanupTimeout + "=90s",
		EnvKillGrace + "=5s",
		EnvShell + "=sh",
		EnvInputPrefix + "NAMESPACE=ci",
		EnvInputPrefix + "NODE_SELECTOR=linux/arm64=pool=arm",
		"EPHEMERAL_BUILDKIT_INPUT_=ignored",
		"NOEQUALS",
	}, func() (string, error) { return "runner-0", nil })
	if err != nil {
		t.Fatal(err)
	}
	if s.BuildsDir != "/srv/builds" || !s.PerJobBuildsDir || s.CleanupTimeout != 90*time.Second || s.KillGrace != 5*time.Second ||
		s.Shell != "sh" || s.Hostname != "runner-0" {
		t.Errorf("settings = %+v", s)
	}
	if !slices.Equal(s.JobInputs, []string{"platforms", "requests", "limits"}) {
		t.Errorf("JobInputs = %q", s.JobInputs)
	}
	if len(s.Inputs) != 2 || s.Inputs["namespace"] != "ci" || s.Inputs["node-selector"] != "linux/arm64=pool=arm" {
		t.Errorf("Inputs = %q", s.Inputs)
	}
	d := Settings{}.withDefaults()
	if d.BuildsDir != DefaultBuildsDir || d.StateDir != DefaultStateDir || d.Shell != "bash" || !slices.Equal(d.JobInputs, DefaultJobInputs) ||
		d.InputPrefix != ci.DefaultGitLabInputPrefix {
		t.Errorf("defaults = %+v", d)
	}
	// An empty job-inputs list means the job may set none.
	if s, err := SettingsFromEnv([]string{EnvJobInputs + "="}, nil); err != nil || s.JobInputs == nil || len(s.JobInputs) != 0 {
		t.Errorf("empty JOB_INPUTS: %q, %v", s.JobInputs, err)
	}
	for _, bad := range [][]string{
		{EnvBuildsDir + "=relative"},
		{EnvStateDir + "=state"},
		{EnvShell + "=pwsh"},
		{EnvPerJobBuildsDir + "=yes please"},
		{EnvCleanupTimeout + "=-1s"},
		{EnvKillGrace + "=soon"},
	} {
		if _, err := SettingsFromEnv(bad, nil); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestExitCode(t *testing.T) {
	env := map[string]string{EnvBuildFailureExitCode: "77", EnvSystemFailureExitCode: "78"}
	getenv := func(k string) string { return env[k] }
	build := &BuildFailureError{SubStage: "step_script", ExitCode: 3}
	for _, tt := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{build, 77},
		{&SystemFailureError{Stage: "prepare", Err: errors.New("x")}, 78},
		{errors.New("anything else"), 78},
		{errors.Join(errors.New("wrapped"), build), 77},
	} {
		if got := ExitCode(tt.err, getenv); got != tt.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
	// Run by hand, without the runner's variables.
	if got := ExitCode(build, func(string) string { return "" }); got != 1 {
		t.Errorf("no variables: %d", got)
	}
	if got := ExitCode(build, func(string) string { return "999" }); got != 1 {
		t.Errorf("out of range: %d", got)
	}
}

func TestDispatchUsage(t *testing.T) {
	e := &Executor{Getenv: func(string) string { return "" }, Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
	for _, args := range [][]string{nil, {"launch"}, {"run"}, {"run", "script"}} {
		err := e.Dispatch(context.Background(), args, nil)
		var sys *SystemFailureError
		if !errors.As(err, &sys) {
			t.Errorf("%q: %v, want a SystemFailureError", args, err)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "BUILDX_BUILDER=old", "HOME=/root", "BROKEN"}, map[string]string{"BUILDX_BUILDER": "new", "BUILDKIT_HOST": "tcp://x:1234"})
	want := []string{"PATH=/bin", "HOME=/root", "BROKEN", "BUILDKIT_HOST=tcp://x:1234", "BUILDX_BUILDER=new"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
}

// Run forwards the signals the hook receives to the script's process group, and a cancelled
// context as SIGTERM.
func TestRunForwardsCancellation(t *testing.T) {
	root := t.TempDir()
	env := map[string]string{
		ci.GitLabCustomExecutorPrefix + "CI_JOB_ID": "99",
		EnvBuildFailureExitCode:                     "1",
	}
	stdout := &bytes.Buffer{}
	e := &Executor{
		Settings: Settings{StateDir: root},
		Getenv:   func(k string) string { return env[k] },
		Environ:  func() []string { return []string{"PATH=" + os.Getenv("PATH")} },
		Stdout:   stdout, Stderr: &bytes.Buffer{},
	}
	job, err := e.job(e.settings())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(job.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(job.EnvFile, []byte("export BUILDX_BUILDER='b'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "script.sh")
	if err := os.WriteFile(script, []byte("trap 'echo \"TERM $BUILDX_BUILDER\"; exit 5' TERM\necho started\nsleep 30 & wait\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = e.Run(ctx, script, "step_script")
	var build *BuildFailureError
	if !errors.As(err, &build) || build.ExitCode != 5 || build.SubStage != "step_script" {
		t.Fatalf("Run = %v, want a build failure with code 5", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Run took %v", took)
	}
	if got := stdout.String(); !strings.Contains(got, "started\n") || !strings.Contains(got, "TERM b\n") {
		t.Errorf("script output %q", got)
	}
}

// A cancelled script's shell exits at once on SIGTERM; what it started got the signal too and
// may take a moment to finish (docker buildx cancelling its build). Run lets it, within the kill
// grace, and kills what is still there after it.
func TestRunGivesTheScriptsProcessesTheirGrace(t *testing.T) {
	for _, tc := range []struct {
		name      string
		child     string
		wantDone  bool
		wantKills bool
	}{
		// Its work is short sleeps in the foreground: a TERM that reaches a forked child before it
		// has dropped the shell's trap is lost, so a lone "sleep 30 &" would sometimes outlive it.
		{name: "finishes within the grace", child: `trap 'sleep 1; echo done > "$MARKER"; exit 0' TERM; : > "$READY"; while :; do sleep 0.1; done`, wantDone: true},
		{name: "ignores SIGTERM", child: `trap '' TERM; : > "$READY"; sleep 30; echo done > "$MARKER"`, wantKills: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			marker, ready := filepath.Join(root, "marker"), filepath.Join(root, "ready")
			// Read only after Run returns, when nothing writes any more.
			stderr := &bytes.Buffer{}
			e := preparedExecutor(t, Settings{StateDir: root, KillGrace: 3 * time.Second}, "MARKER="+marker, "READY="+ready)
			e.Stdout, e.Stderr = &bytes.Buffer{}, stderr
			pidFile := filepath.Join(root, "child.pid")
			script := filepath.Join(root, "script.sh")
			// The child writes its pid and keeps none of the script's output open.
			body := fmt.Sprintf("sh -c %s >/dev/null 2>&1 &\necho $! > %q\nwait\n", ci.ShellQuote(tc.child), pidFile)
			if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				for {
					// The child has set its trap (ready) and the script has its pid: a loaded
					// machine may take longer than any fixed pause to get there.
					data, err := os.ReadFile(pidFile)
					if _, readyErr := os.Stat(ready); readyErr == nil && err == nil && strings.HasSuffix(string(data), "\n") {
						cancel()
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
			start := time.Now()
			err := e.Run(ctx, script, "step_script")
			took := time.Since(start)
			var build *BuildFailureError
			if !errors.As(err, &build) {
				t.Fatalf("Run = %v, want a build failure", err)
			}
			_, statErr := os.Stat(marker)
			if done := statErr == nil; done != tc.wantDone {
				t.Errorf("the child finished its work: %v, want %v (Run took %v)", done, tc.wantDone, took)
			}
			if killed := strings.Contains(stderr.String(), "did not exit within the kill grace"); killed != tc.wantKills {
				t.Errorf("killed after the grace: %v, want %v; log %q", killed, tc.wantKills, stderr.String())
			}
			if took > 6*time.Second {
				t.Errorf("Run took %v with a kill grace of 3s", took)
			}
			data, _ := os.ReadFile(pidFile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
			if pid > 0 && groupAlive(pid) {
				t.Errorf("the child %d is still running after Run returned", pid)
			}
		})
	}
}

// preparedExecutor returns an Executor for GitLab job 98 whose prepare stage has run: its job
// directory exists with an empty env file. Scripts get PATH and environ.
func preparedExecutor(t *testing.T, settings Settings, environ ...string) *Executor {
	t.Helper()
	env := map[string]string{ci.GitLabCustomExecutorPrefix + "CI_JOB_ID": "98", EnvBuildFailureExitCode: "1"}
	e := &Executor{
		Settings: settings,
		Getenv:   func(k string) string { return env[k] },
		Environ:  func() []string { return append([]string{"PATH=" + os.Getenv("PATH")}, environ...) },
	}
	job, err := e.job(e.settings())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(job.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(job.EnvFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestCleanupWithoutJob(t *testing.T) {
	stderr := &bytes.Buffer{}
	e := &Executor{Settings: Settings{StateDir: t.TempDir()}, Getenv: func(string) string { return "" }, Stderr: stderr}
	called := false
	hooks := HookFuncs{DownFunc: func(context.Context, ci.System) error { called = true; return nil }}
	err := e.Cleanup(context.Background(), hooks)
	var sys *SystemFailureError
	if !errors.As(err, &sys) || called {
		t.Errorf("Cleanup = %v, Down called %v", err, called)
	}
	if !strings.Contains(stderr.String(), "nothing cleaned up") {
		t.Errorf("log: %q", stderr.String())
	}
}

// A script that leaves a process behind holding its output open still ends its sub-stage.
func TestRunDoesNotWaitForBackgroundProcesses(t *testing.T) {
	defer func(d time.Duration) { outputWaitDelay = d }(outputWaitDelay)
	outputWaitDelay = 200 * time.Millisecond
	root := t.TempDir()
	stdout := &bytes.Buffer{}
	e := preparedExecutor(t, Settings{StateDir: root})
	e.Stdout, e.Stderr = stdout, &bytes.Buffer{}
	script := filepath.Join(root, "script.sh")
	pidFile := filepath.Join(root, "pid")
	if err := os.WriteFile(script, []byte("sleep 30 &\necho $! > "+pidFile+"\necho done\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.Run(context.Background(), script, "step_script"); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Run took %v", took)
	}
	if data, err := os.ReadFile(pidFile); err == nil {
		var pid int
		if _, err := fmt.Sscan(string(data), &pid); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if !strings.Contains(stdout.String(), "done") {
		t.Errorf("stdout %q", stdout.String())
	}
}

// TestStageExitCodes holds one case per row of the README's exit-code table: what the runner is
// told for each kind of failure, through the stage that meets it.
func TestStageExitCodes(t *testing.T) {
	const build, system = 77, 78
	_, realInputErr := k8sprov.ParseOptions(cijob.Identity{CIPlatform: cijob.GitLab, JobID: "99"}, k8sprov.Inputs{Platforms: "linux/sparc64"})
	if realInputErr == nil {
		t.Fatal("ParseOptions accepted linux/sparc64")
	}
	for _, tc := range []struct {
		row      string
		settings Settings
		upErr    error
		stage    []string
		want     int
	}{
		{row: "input refused (unknown platform)", upErr: fmt.Errorf("checking the inputs:\n%w", realInputErr), stage: []string{StagePrepare}, want: build},
		{row: "cluster template malformed", upErr: &clustertemplate.Error{Source: "ci/setup-ephemeral-buildkit", Line: 3, Err: errors.New("mode \"fast\"")}, stage: []string{StagePrepare}, want: build},
		{row: "hook setting invalid", settings: Settings{Shell: "zsh"}, stage: []string{StagePrepare}, want: build},
		{row: "Kubernetes API refused or unreachable", upErr: fmt.Errorf("connecting to Kubernetes: %w", &k8sprov.ForbiddenError{Verb: "create", Resource: "pods", Namespace: "ci", Err: errors.New("forbidden")}), stage: []string{StagePrepare}, want: system},
		{row: "builder unschedulable", upErr: &k8sprov.BuilderError{Reason: "Unschedulable", Message: "0/3 nodes are available"}, stage: []string{StagePrepare}, want: system},
		{row: "builder not ready in time", upErr: fmt.Errorf("waiting for the builders: %w", context.DeadlineExceeded), stage: []string{StagePrepare}, want: system},
		{row: "prepare never ran (no env file)", stage: []string{StageRun, "script.sh", "step_script"}, want: system},
		{row: "script failed", stage: []string{StageRun, "exit3.sh", "step_script"}, want: build},
	} {
		t.Run(tc.row, func(t *testing.T) {
			root := t.TempDir()
			env := map[string]string{
				ci.GitLabCustomExecutorPrefix + "CI_JOB_ID": "99",
				EnvBuildFailureExitCode:                     "77",
				EnvSystemFailureExitCode:                    "78",
			}
			settings := tc.settings
			settings.StateDir = root
			e := &Executor{Settings: settings, Getenv: func(k string) string { return env[k] },
				Environ: func() []string { return []string{"PATH=" + os.Getenv("PATH")} },
				Stdout:  &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
			args := slices.Clone(tc.stage)
			if args[0] == StageRun {
				args[1] = filepath.Join(root, args[1])
				if err := os.WriteFile(args[1], []byte("exit 3\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				if tc.row == "script failed" {
					if err := os.MkdirAll(filepath.Join(root, "job-99"), 0o700); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(root, "job-99", envFileName), nil, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			hooks := HookFuncs{UpFunc: func(context.Context, ci.System) error { return tc.upErr }}
			err := e.Dispatch(context.Background(), args, hooks)
			if got := ExitCode(err, func(k string) string { return env[k] }); got != tc.want {
				t.Errorf("exit code %d, want %d (err %v)", got, tc.want, err)
			}
		})
	}
}

// TestPrepareNamesIgnoredJobVariables: a job's BUILDKIT_* variable that is not a job input is
// named in the job log, with the names that are read; the allowed ones are read silently.
func TestPrepareNamesIgnoredJobVariables(t *testing.T) {
	root := t.TempDir()
	environ := []string{
		"PATH=" + os.Getenv("PATH"),
		ci.GitLabCustomExecutorPrefix + "CI_JOB_ID=97",
		ci.GitLabCustomExecutorPrefix + "BUILDKIT_PLATFORMS=linux/arm64",
		ci.GitLabCustomExecutorPrefix + "BUILDKIT_NAMESPACE=other",
		ci.GitLabCustomExecutorPrefix + "BUILDKIT_REQUESTS=cpu=64",
		ci.GitLabCustomExecutorPrefix + "BUILDKIT_EMPTY=",
		ci.GitLabCustomExecutorPrefix + "BUILDKIT_PROGRESS=plain",
		"BUILDKIT_NOT_A_JOB_VARIABLE=x",
	}
	env := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	var stdout bytes.Buffer
	e := &Executor{Settings: Settings{StateDir: root}, Getenv: func(k string) string { return env[k] },
		Environ: func() []string { return environ }, Stdout: &stdout, Stderr: &bytes.Buffer{}}
	var platforms, namespace string
	hooks := HookFuncs{UpFunc: func(_ context.Context, p ci.System) error {
		platforms, namespace = p.Input("platforms"), p.Input("namespace")
		return nil
	}}
	if err := e.Dispatch(context.Background(), []string{StagePrepare}, hooks); err != nil {
		t.Fatal(err)
	}
	if platforms != "linux/arm64" || namespace != "" {
		t.Errorf("inputs read: platforms %q, namespace %q", platforms, namespace)
	}
	log := stdout.String()
	for _, name := range []string{"BUILDKIT_NAMESPACE", "BUILDKIT_REQUESTS"} {
		if !strings.Contains(log, "Job variable "+name+" is not read") {
			t.Errorf("the job log does not name %s:\n%s", name, log)
		}
	}
	if !strings.Contains(log, "the job variables it reads are BUILDKIT_CACHE_KEY, BUILDKIT_PLATFORMS") {
		t.Errorf("the job log does not say which variables are read:\n%s", log)
	}
	for _, name := range []string{"BUILDKIT_PLATFORMS is not read", "BUILDKIT_EMPTY", "BUILDKIT_NOT_A_JOB_VARIABLE", "BUILDKIT_PROGRESS"} {
		if strings.Contains(log, name) {
			t.Errorf("the job log names %s:\n%s", name, log)
		}
	}
}
