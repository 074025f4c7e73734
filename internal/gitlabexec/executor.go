// Package gitlabexec implements GitLab Runner's custom executor protocol for
// setup-ephemeral-buildkit: the four stages the runner runs for every job, as a library with the
// environment, output streams, signals and the builders' life cycle injected.
//
//   - config prints the JSON the runner reads: builds_dir, cache_dir, builds_dir_is_shared,
//     hostname, driver, job_env, shell.
//   - prepare creates the job's directory and calls Hooks.Up with a GitLab CI adapter whose
//     exports go to the job's env file.
//   - run <script> <sub-stage> runs the runner's script with the shell, the env file's variables
//     added to its environment (job_env never reaches scripts), in a process group of its own;
//     SIGTERM and SIGINT the hook receives are forwarded to that group.
//   - cleanup calls Hooks.Down, bounded in time, and removes the job's directory; it logs what it
//     removed to the runner's log.
//
// The job's identity comes from the runner's job response (JOB_RESPONSE_FILE) where it can, and
// from CUSTOM_ENV_ variables otherwise. Each job has its own directory, job-<id>, so concurrent
// jobs on one runner never see each other's builders, certificates or buildx configuration.
//
// Failures map to the runner's exit codes: a failing script is a BuildFailureError and a refused
// input or setting a ConfigurationError (both $BUILD_FAILURE_EXIT_CODE: retrying cannot help);
// anything else failing in the hook — the Kubernetes API, scheduling, a timeout — is a
// SystemFailureError ($SYSTEM_FAILURE_EXIT_CODE, on which the runner retries prepare). ExitCode
// does the mapping.
package gitlabexec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
)

// Stages, as the hook's first argument names them.
const (
	StageConfig  = "config"
	StagePrepare = "prepare"
	StageRun     = "run"
	StageCleanup = "cleanup"
)

// Hooks create and remove the job's builders. Up exports the builders' environment (BUILDX_*,
// BUILDKIT_*) through p.ExportEnv and keeps what Down needs with p.SaveState; Down finds it
// with p.State (p.IsPost is true). Down must be idempotent and must not fail for a job whose Up
// never ran or failed half-way. internal/app implements them.
type Hooks interface {
	Up(ctx context.Context, p ci.System) error
	Down(ctx context.Context, p ci.System) error
}

// HookFuncs adapts two functions to Hooks.
type HookFuncs struct {
	UpFunc, DownFunc func(ctx context.Context, p ci.System) error
}

// Up calls UpFunc.
func (h HookFuncs) Up(ctx context.Context, p ci.System) error { return h.UpFunc(ctx, p) }

// Down calls DownFunc.
func (h HookFuncs) Down(ctx context.Context, p ci.System) error { return h.DownFunc(ctx, p) }

// ConfigOutput is the JSON config prints, with the field names GitLab Runner documents for
// config_exec.
type ConfigOutput struct {
	BuildsDir         string            `json:"builds_dir"`
	CacheDir          string            `json:"cache_dir"`
	BuildsDirIsShared bool              `json:"builds_dir_is_shared"`
	Hostname          string            `json:"hostname,omitempty"`
	Driver            DriverInfo        `json:"driver"`
	JobEnv            map[string]string `json:"job_env,omitempty"`
	Shell             string            `json:"shell"`
}

// DriverInfo names the driver in the runner's "Using Custom executor with driver ..." line.
type DriverInfo struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

// Executor runs the stages. Every field but Settings has a working default.
type Executor struct {
	Settings Settings
	// Getenv reads the stage's environment: the runner's variables and CUSTOM_ENV_*; nil means
	// os.Getenv.
	Getenv func(string) string
	// Environ is the environment scripts start from, the env file's variables added; nil means
	// os.Environ.
	Environ func() []string
	// Stdout and Stderr are the hook's streams. The runner shows both in the job log, except in
	// cleanup: stdout at debug level, stderr at warning level of its own log.
	Stdout, Stderr io.Writer
	// Signals delivers the signals to forward to a running script's process group, and that
	// cancel prepare and cleanup; the main sets it up with signal.Notify for SIGTERM and SIGINT.
	Signals <-chan os.Signal
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (e *Executor) settings() Settings { return e.Settings.withDefaults() }

func (e *Executor) getenv(name string) string {
	if e.Getenv == nil {
		return os.Getenv(name)
	}
	return e.Getenv(name)
}

func (e *Executor) now() time.Time {
	if e.Now == nil {
		return time.Now()
	}
	return e.Now()
}

func (e *Executor) stdout() io.Writer {
	if e.Stdout == nil {
		return os.Stdout
	}
	return e.Stdout
}

func (e *Executor) stderr() io.Writer {
	if e.Stderr == nil {
		return os.Stderr
	}
	return e.Stderr
}

// Dispatch runs the stage args names: "config", "prepare", "run <script> <sub-stage>" (the last
// two arguments, after any run_args) or "cleanup". A wrong stage is a SystemFailureError.
func (e *Executor) Dispatch(ctx context.Context, args []string, hooks Hooks) error {
	if len(args) == 0 {
		return &SystemFailureError{Stage: "gitlab-executor-hook", Err: errors.New("no stage given (config, prepare, run or cleanup)")}
	}
	switch args[0] {
	case StageConfig:
		return e.Config()
	case StagePrepare:
		ctx, stop := e.cancelOnSignal(ctx)
		defer stop()
		return e.Prepare(ctx, hooks)
	case StageRun:
		if len(args) < 3 {
			return &SystemFailureError{Stage: StageRun, Err: errors.New("want run <script> <sub-stage>")}
		}
		return e.Run(ctx, args[len(args)-2], args[len(args)-1])
	case StageCleanup:
		ctx, stop := e.cancelOnSignal(ctx)
		defer stop()
		return e.Cleanup(ctx, hooks)
	}
	return &SystemFailureError{Stage: args[0], Err: fmt.Errorf("unknown stage %q (want config, prepare, run or cleanup)", args[0])}
}

// begin is every stage's preamble: the settings, checked, and the job the stage works for. Its
// error is the stage's SystemFailureError.
func (e *Executor) begin(stage string) (Settings, Job, error) {
	s := e.settings()
	if err := s.validate(); err != nil {
		return s, Job{}, &ConfigurationError{Stage: stage, Err: err}
	}
	job, err := e.job(s)
	if err != nil {
		return s, Job{}, systemFailure(stage, err)
	}
	return s, job, nil
}

// cancelOnSignal returns a context cancelled when a signal arrives on Signals.
func (e *Executor) cancelOnSignal(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-e.Signals:
			cancel(fmt.Errorf("received %v", sig))
		case <-done:
		}
	}()
	var once sync.Once
	return ctx, func() { once.Do(func() { close(done); cancel(nil) }) }
}

// Config prints the runner's configuration for the job as JSON on stdout (the runner parses all
// of stdout; logs go to stderr).
func (e *Executor) Config() error {
	s, job, err := e.begin(StageConfig)
	if err != nil {
		return err
	}
	out := ConfigOutput{
		BuildsDir:         job.BuildsDir,
		CacheDir:          s.CacheDir,
		BuildsDirIsShared: !s.PerJobBuildsDir,
		Hostname:          s.Hostname,
		Driver:            DriverInfo{Name: DriverName, Version: s.DriverVersion},
		JobEnv:            map[string]string{JobEnvDir: job.Dir},
		Shell:             s.Shell,
	}
	data, err := json.Marshal(out)
	if err != nil {
		return systemFailure(StageConfig, err)
	}
	if _, err := fmt.Fprintf(e.stdout(), "%s\n", data); err != nil {
		return systemFailure(StageConfig, fmt.Errorf("writing the configuration: %w", err))
	}
	return nil
}

// Prepare creates the job's directory and an empty env file, then calls hooks.Up with the
// job's CI adapter, logging to the job log. A retried prepare (the runner tries three times)
// starts a fresh env file and finds the state of the attempt before.
func (e *Executor) Prepare(ctx context.Context, hooks Hooks) error {
	_, job, err := e.begin(StagePrepare)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(job.Dir, 0o700); err != nil {
		return systemFailure(StagePrepare, fmt.Errorf("creating the job directory: %w", err))
	}
	if err := os.Chmod(job.Dir, 0o700); err != nil {
		return systemFailure(StagePrepare, fmt.Errorf("restricting the job directory: %w", err))
	}
	header := fmt.Sprintf("# The builder environment of GitLab job %s, loaded into every script by gitlab-executor-hook run.\n", job.Identity.JobID)
	if err := os.WriteFile(job.EnvFile, []byte(header), 0o600); err != nil {
		return systemFailure(StagePrepare, fmt.Errorf("creating the env file: %w", err))
	}
	f, err := os.OpenFile(job.EnvFile, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return systemFailure(StagePrepare, fmt.Errorf("opening the env file: %w", err))
	}
	defer f.Close()
	p, err := e.ciSystem(job, ci.GitLabConfig{Exports: f, Log: e.stdout(), Sections: true})
	if err != nil {
		return systemFailure(StagePrepare, err)
	}
	if err := hooks.Up(ctx, p); err != nil {
		return configurationOrSystemFailure(StagePrepare, fmt.Errorf("creating the builders: %w", err))
	}
	if err := f.Close(); err != nil {
		return systemFailure(StagePrepare, fmt.Errorf("writing the env file: %w", err))
	}
	return nil
}

// Run runs the runner's script for subStage with the shell, its environment extended by the
// job's env file. The script gets its own process group; SIGTERM and SIGINT from Signals, and
// ctx ending (as SIGTERM), are forwarded to the group, which is killed KillGrace later if still
// there. A script that fails is a BuildFailureError (its code also goes to
// $BUILD_EXIT_CODE_FILE); a script that cannot be run is a SystemFailureError.
func (e *Executor) Run(ctx context.Context, script, subStage string) error {
	stage := StageRun + " " + subStage
	s, job, err := e.begin(stage)
	if err != nil {
		return err
	}
	vars, err := readEnvFile(job.EnvFile)
	if err != nil {
		return systemFailure(stage, err)
	}
	base := environ
	if e.Environ != nil {
		base = e.Environ
	}
	// The hook's own messages and the script's stderr share one stream, written from two
	// goroutines when it is not a file.
	stderr := &ci.LockedWriter{W: e.stderr()}
	cmd := exec.Command(s.Shell, script)
	cmd.Env = mergeEnv(base(), vars)
	cmd.Stdout, cmd.Stderr = e.stdout(), stderr
	if f, ok := e.stderr().(*os.File); ok {
		cmd.Stderr = f
	}
	cmd.SysProcAttr = scriptProcAttr()
	// Background processes of the script may keep its output pipes open (only when Stdout is not
	// a file); do not wait for them forever.
	cmd.WaitDelay = outputWaitDelay
	if err := cmd.Start(); err != nil {
		return systemFailure(stage, fmt.Errorf("starting %s %s: %w", s.Shell, script, err))
	}
	pgid := cmd.Process.Pid
	done := make(chan struct{})
	forwarded := make(chan time.Time, 1)
	go func() { forwarded <- e.forward(ctx, pgid, s.KillGrace, done, stderr) }()
	waitErr := cmd.Wait()
	close(done)
	if first := <-forwarded; !first.IsZero() {
		// The job was cancelled. The shell may exit at once on SIGTERM while what it started
		// (docker buildx cancelling its build) got the same signal and is still finishing: let
		// it, until the grace from the first signal is over; nothing may outlive that.
		e.reapGroup(pgid, first.Add(s.KillGrace), subStage, stderr)
	}
	var exitErr *exec.ExitError
	switch {
	case waitErr == nil:
		return nil
	case errors.Is(waitErr, exec.ErrWaitDelay) && cmd.ProcessState.Success():
		// The script succeeded; something it left in the background held its output open.
		fmt.Fprintf(stderr, "gitlab-executor-hook: %s: the script's background processes kept its output open; stopped waiting for them\n", subStage)
		return nil
	case !errors.As(waitErr, &exitErr) && !errors.Is(waitErr, exec.ErrWaitDelay):
		return systemFailure(stage, fmt.Errorf("running %s %s: %w", s.Shell, script, waitErr))
	}
	failure := &BuildFailureError{SubStage: subStage, ExitCode: cmd.ProcessState.ExitCode()}
	if status, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && status.Signaled() {
		failure.ExitCode = 128 + int(status.Signal())
		failure.Signal = status.Signal().String()
	}
	if path := e.getenv(EnvBuildExitCodeFile); path != "" {
		if err := os.WriteFile(path, fmt.Appendf(nil, "%d\n", failure.ExitCode), 0o644); err != nil {
			fmt.Fprintf(stderr, "gitlab-executor-hook: writing the exit code to %s: %v\n", path, err)
		}
	}
	return failure
}

// forward passes signals to the process group pgid until done is closed, turns ctx ending into
// SIGTERM, and kills the group grace after the first. It returns when it sent the first signal,
// or the zero time when it sent none.
func (e *Executor) forward(ctx context.Context, pgid int, grace time.Duration, done <-chan struct{}, log io.Writer) time.Time {
	var (
		kill    <-chan time.Time
		ctxDone = ctx.Done()
		signals = e.Signals
		first   time.Time
	)
	send := func(sig syscall.Signal, why string) {
		if first.IsZero() {
			first = e.now()
		}
		if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			fmt.Fprintf(log, "gitlab-executor-hook: sending %v to the script: %v\n", sig, err)
			return
		}
		fmt.Fprintf(log, "gitlab-executor-hook: %s; sent %v to the script's process group\n", why, sig)
		if kill == nil && sig != syscall.SIGKILL {
			kill = time.After(grace)
		}
	}
	for {
		select {
		case <-done:
			return first
		case sig := <-signals:
			s, ok := sig.(syscall.Signal)
			if !ok {
				continue
			}
			send(s, fmt.Sprintf("received %v", s))
		case <-ctxDone:
			ctxDone = nil
			send(syscall.SIGTERM, "cancelled")
		case <-kill:
			signals, ctxDone = nil, nil
			send(syscall.SIGKILL, fmt.Sprintf("the script did not exit within %v", grace))
		}
	}
}

// reapInterval is how often reapGroup looks whether the cancelled script's processes are gone.
const reapInterval = 50 * time.Millisecond

// reapGroup waits until no live process is left in the script's process group pgid, and kills
// the group once deadline has passed.
func (e *Executor) reapGroup(pgid int, deadline time.Time, subStage string, log io.Writer) {
	for groupAlive(pgid) {
		if !e.now().Before(deadline) {
			if err := syscall.Kill(-pgid, syscall.SIGKILL); err == nil {
				fmt.Fprintf(log, "gitlab-executor-hook: %s: the script's processes did not exit within the kill grace; killed them\n", subStage)
			}
			return
		}
		time.Sleep(reapInterval)
	}
}

// readEnvFile reads the job's env file.
func readEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no builder environment at %s: prepare did not run for this job, or failed", path)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the env file: %w", err)
	}
	defer f.Close()
	vars, err := ci.ParseExports(f)
	if err != nil {
		return nil, fmt.Errorf("reading the env file %s: %w", path, err)
	}
	return vars, nil
}

// mergeEnv returns base with vars set, replacing earlier values of the same names.
func mergeEnv(base []string, vars map[string]string) []string {
	env := make([]string, 0, len(base)+len(vars))
	for _, kv := range base {
		name, _, _ := strings.Cut(kv, "=")
		if _, replaced := vars[name]; !replaced {
			env = append(env, kv)
		}
	}
	names := make([]string, 0, len(vars))
	for name := range vars {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		env = append(env, name+"="+vars[name])
	}
	return env
}

// outputWaitDelay is how long Run waits, after the script exits, for its output to close.
var outputWaitDelay = 5 * time.Second

// cleanupGrace is how long Cleanup waits, after its timeout, for Down to return before giving
// up on it.
const cleanupGrace = 2 * time.Second

// Cleanup calls hooks.Down and removes the job's directory (and its builds directory with
// PerJobBuildsDir), whatever happened before: it runs after failed and cancelled jobs, twice,
// or for a job prepare never saw. It never takes much longer than CleanupTimeout: a Down that
// does not return by then is abandoned. Everything it does is logged to stderr, which the
// runner logs at warning level. Its result does not change the job's status.
func (e *Executor) Cleanup(ctx context.Context, hooks Hooks) error {
	// Down may still be writing when Cleanup gives up on it.
	stderr := &ci.LockedWriter{W: e.stderr()}
	log := func(format string, args ...any) {
		fmt.Fprintf(stderr, "gitlab-executor-hook cleanup: "+format+"\n", args...)
	}
	s, job, err := e.begin(StageCleanup)
	if err != nil {
		log("%v; nothing cleaned up", errors.Unwrap(err))
		return err
	}
	log("job %s of %s, directory %s", job.Identity.JobID, job.Identity.Repository, job.Dir)
	ctx, cancel := context.WithTimeout(ctx, s.CleanupTimeout)
	defer cancel()

	var errs []error
	p, err := e.ciSystem(job, ci.GitLabConfig{Post: true, Log: prefixWriter{w: stderr, prefix: "gitlab-executor-hook cleanup: "}})
	if err != nil {
		// Unreadable state: Down cannot know what Up made. The janitor and the builders' own
		// expiry remain.
		errs = append(errs, fmt.Errorf("reading the job's state: %w", err))
		log("cannot read the job's state (%v); builders left to the janitor", err)
	} else {
		downErr := make(chan error, 1)
		go func() { downErr <- hooks.Down(ctx, p) }()
		select {
		case err := <-downErr:
			if err != nil {
				errs = append(errs, fmt.Errorf("removing the builders: %w", err))
				log("removing the builders failed: %v", err)
			}
		case <-ctx.Done():
			select {
			case err := <-downErr:
				if err != nil {
					errs = append(errs, fmt.Errorf("removing the builders: %w", err))
					log("removing the builders failed: %v", err)
				}
			case <-time.After(cleanupGrace):
				errs = append(errs, fmt.Errorf("removing the builders did not finish: %w", context.Cause(ctx)))
				log("gave up removing the builders after %v (%v); the janitor will remove them", s.CleanupTimeout, context.Cause(ctx))
			}
		}
	}
	dirs := []string{job.Dir}
	if s.PerJobBuildsDir && filepath.Dir(job.BuildsDir) == filepath.Clean(s.BuildsDir) {
		dirs = append(dirs, job.BuildsDir)
	}
	for _, dir := range dirs {
		if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
			log("%s is already gone", dir)
			continue
		}
		if err := removeDir(dir); err != nil {
			errs = append(errs, err)
			log("%v", err)
		} else {
			log("removed %s", dir)
		}
	}
	return systemFailure(StageCleanup, errors.Join(errs...))
}

// removeDir removes dir and everything in it; a missing dir is fine.
func removeDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// prefixWriter prefixes every line written to w.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	var out strings.Builder
	for line := range strings.Lines(string(b)) {
		out.WriteString(p.prefix)
		out.WriteString(line)
	}
	if _, err := io.WriteString(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// NotifySignals returns a channel with SIGTERM and SIGINT, for Executor.Signals, and a function
// that stops the notification.
func NotifySignals() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	return ch, func() { signal.Stop(ch) }
}
