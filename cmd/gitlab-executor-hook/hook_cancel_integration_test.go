package main

// Cancelling a job through the real hook, as GitLab Runner does on a cancelled or timed-out job:
// SIGTERM to the process group of the stage that is running, then cleanup_exec, always.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/gitlabexec"
)

// TestIntegrationGitLabHookCancel cancels two jobs through the real hook against the local
// cluster: one in step_script while a multi-platform docker buildx build runs on its builders,
// one in prepare while its builder pods start. Each time the stage exits within seconds with
// the exit code the runner expects, nothing the job started survives, and cleanup leaves no pod,
// Secret or job directory.
func TestIntegrationGitLabHookCancel(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the hook runs on Linux runners")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w := newHookWorld(ctx, t)

	t.Run("step_script", func(t *testing.T) { testCancelBuild(ctx, t, w) })
	t.Run("prepare", func(t *testing.T) { testCancelPrepare(ctx, t, w) })
}

// cancelledExitLimit is how long a stage may take to exit after the runner's SIGTERM. The
// runner's graceful_kill_timeout is longer; a hook that needs it is killed and its job's
// processes are left to chance.
const cancelledExitLimit = 10 * time.Second

// testCancelBuild cancels step_script while docker buildx builds for linux/amd64 and linux/arm64
// on the job's builders, each platform's RUN step blocked in a sleep.
func testCancelBuild(ctx context.Context, t *testing.T, w *hookWorld) {
	repo := filepath.Join(w.root, "sleep-repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	// Nothing can be pulled here: a static sleeper per platform, in an image from scratch.
	for arch, sleeper := range buildSleepers(ctx, t, filepath.Join(w.root, "sleeper")) {
		data, err := os.ReadFile(sleeper)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, "sleeper-"+arch), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dockerfile := "FROM scratch\nARG TARGETARCH\nCOPY sleeper-${TARGETARCH} /sleeper\nRUN [\"/sleeper\", \"600\"]\n"
	if err := os.WriteFile(filepath.Join(repo, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}

	j, cfg := w.configuredJob(ctx, t, 740001)
	if err := j.prepare(ctx); err != nil {
		t.Fatal(err)
	}
	project := filepath.Join(cfg.BuildsDir, "group", "app")
	if err := j.mustRun(ctx, "get_sources", fmt.Sprintf("mkdir -p %q && cp -a %q/. %q/", project, repo, project)); err != nil {
		t.Fatal(err)
	}
	pods, _, err := w.jobObjects(ctx, j.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 2 {
		t.Fatalf("after prepare: %d builder pods, want one per platform", len(pods))
	}

	// The script records its process group (the runner's shell is its leader) and the builder
	// environment, then builds. Nothing after the build may run.
	run, err := j.startRun("step_script", fmt.Sprintf(`echo "$$" > %[1]q/pgid
for v in BUILDX_CONFIG BUILDKIT_HOST BUILDKIT_TLS_CACERT BUILDKIT_TLS_CERT BUILDKIT_TLS_KEY BUILDKIT_TLS_SERVERNAME; do
  printenv "$v" > %[1]q/"$v"
done
cd %[2]q
docker buildx build --platform linux/amd64,linux/arm64 --output "type=local,dest=%[1]s/out" .
echo "the build finished" > %[1]q/finished`, j.results, project))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !run.waited {
			_ = run.signal(syscall.SIGKILL)
			_, _, _, _ = run.wait(ctx, 30*time.Second)
		}
	})

	// The build is running when buildx reports both platforms' RUN steps started and the
	// builder at BUILDKIT_HOST lists a build record that has not completed.
	waitUntil(ctx, t, 3*time.Minute, "the build to run on both builders", func() (bool, error) {
		select {
		case <-run.done:
			return false, fmt.Errorf("step_script ended before it was cancelled: %v\n%s", run.waitErr, run.stderr.String())
		default:
		}
		return runStepsStarted(run.stderr.String(), "linux/amd64", "linux/arm64"), nil
	})
	host := j.result(t, "BUILDKIT_HOST")
	var active []string
	waitUntil(ctx, t, 30*time.Second, "a running build record at "+host, func() (bool, error) {
		records, err := buildRecords(ctx, j)
		if err != nil {
			return false, err
		}
		active = nil
		for _, r := range records {
			if r.running {
				active = append(active, r.ref)
			}
		}
		return len(active) > 0, nil
	})
	t.Logf("building: both platforms' RUN steps started; running at %s: %v", host, active)
	pgid, err := strconv.Atoi(j.result(t, "pgid"))
	if err != nil {
		t.Fatal(err)
	}
	live := jobProcesses(pgid, "BUILDX_CONFIG="+j.result(t, "BUILDX_CONFIG"))
	t.Logf("the script's processes while building (pid pgid cmdline):\n%s", strings.Join(live, "\n"))
	if !slices.ContainsFunc(live, func(p string) bool { return strings.Contains(p, "docker-buildx") }) {
		t.Errorf("no docker-buildx process among the script's processes while building:\n%s", strings.Join(live, "\n"))
	}

	// The runner cancels the job.
	cancelled := time.Now()
	if err := run.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, _, stderr, err := run.wait(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	took := run.exited.Sub(cancelled)
	t.Logf("step_script: SIGTERM to exit in %v", took.Round(time.Millisecond))
	if code != buildFailureEC {
		t.Errorf("cancelled step_script: hook exited %d, want BUILD_FAILURE_EXIT_CODE %d", code, buildFailureEC)
	}
	if took > cancelledExitLimit {
		t.Errorf("cancelled step_script exited %v after SIGTERM, want within %v", took, cancelledExitLimit)
	}
	if !strings.Contains(stderr, "received terminated; sent terminated to the script's process group") {
		t.Errorf("the hook did not log forwarding SIGTERM to the script")
	}
	// The shell died of the SIGTERM: 128+15 for allow_failure: exit_codes.
	if data, err := os.ReadFile(filepath.Join(j.tmp, "exit_code")); err != nil || strings.TrimSpace(string(data)) != "143" {
		t.Errorf("BUILD_EXIT_CODE_FILE holds %q (%v), want 143", data, err)
	}
	// Nothing of the script survives: not its process group, not a process with its builder
	// environment (docker, docker-buildx, whatever group they put themselves in).
	gone := time.Now()
	for {
		live = jobProcesses(pgid, "BUILDX_CONFIG="+j.result(t, "BUILDX_CONFIG"))
		if len(live) == 0 || time.Since(gone) > 5*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(live) > 0 {
		t.Errorf("processes of the cancelled script survived the hook:\n%s", strings.Join(live, "\n"))
		for _, p := range live {
			if pid, err := strconv.Atoi(strings.Fields(p)[0]); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(j.results, "finished")); err == nil {
		t.Error("the script went on after the build")
	}
	// The builder cancels the build once its client is gone.
	var records []buildRecord
	waitUntil(ctx, t, 30*time.Second, "the build records at "+host+" to end", func() (bool, error) {
		var err error
		records, err = buildRecords(ctx, j)
		return err == nil && !slices.ContainsFunc(records, func(r buildRecord) bool { return r.running }), err
	})
	for _, ref := range active {
		i := slices.IndexFunc(records, func(r buildRecord) bool { return r.ref == ref })
		if i < 0 {
			t.Errorf("the builder at %s no longer lists the cancelled build %s", host, ref)
			continue
		}
		t.Logf("build %s at %s ended: %s", ref, host, records[i].errMsg)
		if !strings.Contains(records[i].errMsg, "cancel") {
			t.Errorf("the cancelled build %s ended with %q, want a cancellation", ref, records[i].errMsg)
		}
	}

	// The runner always runs cleanup_exec. It removes what prepare made.
	stderr = cleanupAndCheck(ctx, t, j, cfg.BuildsDir)
	for _, p := range pods {
		if !strings.Contains(stderr, "pod/"+p.Name) {
			t.Errorf("cleanup does not log deleting builder pod %s", p.Name)
		}
	}
	if !strings.Contains(stderr, "secret/") {
		t.Errorf("cleanup does not log deleting the job's Secret")
	}
}

// configuredJob starts job id as the runner does, with config; its hook output is logged when
// the test fails.
func (w *hookWorld) configuredJob(ctx context.Context, t *testing.T, id int64) (*hookJob, gitlabexec.ConfigOutput) {
	t.Helper()
	j := w.newJob(t, id)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("E2E_SHOW_HOOK") != "" {
			t.Logf("hook output:\n%s", j.log.String())
		}
	})
	cfg, err := j.config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return j, cfg
}

// testCancelPrepare cancels prepare while the job's builder pods start.
func testCancelPrepare(ctx context.Context, t *testing.T, w *hookWorld) {
	j, cfg := w.configuredJob(ctx, t, 740002)
	prepare, err := j.start("prepare")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !prepare.waited {
			_ = prepare.signal(syscall.SIGKILL)
			_, _, _, _ = prepare.wait(ctx, 30*time.Second)
		}
	})
	started := time.Now()
	var pods []corev1.Pod
	waitUntil(ctx, t, 2*time.Minute, "the job's builder pods", func() (bool, error) {
		select {
		case <-prepare.done:
			return false, fmt.Errorf("prepare ended before its builder pods appeared: %v\n%s", prepare.waitErr, prepare.stderr.String())
		default:
		}
		var err error
		pods, _, err = w.jobObjects(ctx, j.id)
		return len(pods) > 0, err
	})
	var phases []string
	for _, p := range pods {
		phases = append(phases, p.Name+" "+podState(p))
	}
	t.Logf("%v after prepare started: %s", time.Since(started).Round(time.Millisecond), strings.Join(phases, ", "))

	cancelled := time.Now()
	if err := prepare.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr, err := prepare.wait(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	took := prepare.exited.Sub(cancelled)
	t.Logf("prepare: SIGTERM to exit in %v; it said: %s", took.Round(time.Millisecond), lastLine(stderr))
	if code != systemFailureEC {
		t.Errorf("cancelled prepare exited %d, want SYSTEM_FAILURE_EXIT_CODE %d", code, systemFailureEC)
	}
	if took > cancelledExitLimit {
		t.Errorf("cancelled prepare exited %v after SIGTERM, want within %v", took, cancelledExitLimit)
	}
	if !strings.Contains(stderr, "cancelled") {
		t.Errorf("prepare's error does not say it was cancelled:\n%s", stderr)
	}
	if strings.Contains(stdout, "is ready") {
		t.Errorf("prepare finished before the SIGTERM: not a cancel while the builders start")
	}

	cleanupAndCheck(ctx, t, j, cfg.BuildsDir)

	// The runner may run cleanup again (a retried stage, a restarted runner): nothing to do.
	code, _, stderr, err = j.stage(ctx, 90*time.Second, "cleanup")
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("second cleanup exited %d, want 0:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, j.jobEnv[gitlabexec.JobEnvDir]+" is already gone") {
		t.Errorf("second cleanup does not say the job directory is already gone:\n%s", stderr)
	}
}

// cleanupAndCheck runs cleanup_exec and waits until nothing of the job is left: no builder pod
// (their preStop drain included), no Secret, no job directory and no builds directory.
// It returns cleanup's log.
func cleanupAndCheck(ctx context.Context, t *testing.T, j *hookJob, buildsDir string) string {
	t.Helper()
	jobDir := j.jobEnv[gitlabexec.JobEnvDir]
	started := time.Now()
	code, _, stderr, err := j.stage(ctx, 90*time.Second, "cleanup")
	if err != nil {
		t.Fatal(err)
	}
	stage := time.Since(started)
	if code != 0 {
		t.Errorf("cleanup exited %d, want 0:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "gitlab-executor-hook cleanup: removed "+jobDir) {
		t.Errorf("cleanup does not log removing the job directory %s:\n%s", jobDir, stderr)
	}
	for _, dir := range []string{jobDir, buildsDir} {
		if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after cleanup (%v)", dir, err)
		}
	}
	var pods []corev1.Pod
	var secrets []string
	waitUntil(ctx, t, 2*time.Minute, "the job's pods and Secret to go", func() (bool, error) {
		var err error
		pods, secrets, err = j.w.jobObjects(ctx, j.id)
		return len(pods)+len(secrets) == 0, err
	})
	t.Logf("cleanup: the stage took %v; nothing left %v after it started", stage.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	return stderr
}

// jobObjects lists the managed pods and Secrets of GitLab job id in the world's namespace.
func (w *hookWorld) jobObjects(ctx context.Context, id int64) ([]corev1.Pod, []string, error) {
	return w.builderObjectsOf(ctx, strconv.FormatInt(id, 10))
}

// podState is a pod's phase, its containers' states and whether it is being deleted.
func podState(p corev1.Pod) string {
	state := string(p.Status.Phase)
	for _, c := range p.Status.ContainerStatuses {
		switch {
		case c.State.Waiting != nil:
			state += "/" + c.State.Waiting.Reason
		case c.State.Running != nil:
			state += fmt.Sprintf("/running, ready %v", c.Ready)
		case c.State.Terminated != nil:
			state += "/" + c.State.Terminated.Reason
		}
	}
	if p.DeletionTimestamp != nil {
		state += ", deleted"
	}
	return state
}

// waitUntil polls cond every 100ms until it holds, fails or limit passes; the last two fail the
// test.
func waitUntil(ctx context.Context, t *testing.T, limit time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil && ctx.Err() == nil && !errors.Is(err, errRetry) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waited %v for %s: %v", limit, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// errRetry marks an error waitUntil tries again after.
var errRetry = errors.New("not yet")

// runStepsStarted reports whether buildx's plain progress shows the build of each platform
// past its COPY step ("#6 [linux/amd64 1/2] COPY sleeper-amd64 /sleeper") and as many RUN steps
// started as there are platforms ("#9 [2/2] RUN ["/sleeper", "600"]", without the platform).
func runStepsStarted(progress string, platforms ...string) bool {
	copied := map[string]bool{}
	runs := map[string]bool{}
	for line := range strings.Lines(progress) {
		vertex, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || !strings.HasPrefix(vertex, "#") {
			continue
		}
		if strings.HasSuffix(rest, `] RUN ["/sleeper", "600"]`) {
			runs[vertex] = true
		}
		for _, p := range platforms {
			if strings.HasPrefix(rest, "["+p+" ") && strings.Contains(rest, "] COPY ") {
				copied[p] = true
			}
		}
	}
	return len(copied) == len(platforms) && len(runs) == len(platforms)
}

// buildRecord is one build the builder keeps a record of.
type buildRecord struct {
	ref     string
	running bool
	errMsg  string
}

// buildRecords lists the build records of the builder at the job's BUILDKIT_HOST with buildctl
// and the job's client certificate.
func buildRecords(ctx context.Context, j *hookJob) ([]buildRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(toolsDir(), "bin", "buildctl"),
		"--addr", j.resultFile("BUILDKIT_HOST"), "--tlscacert", j.resultFile("BUILDKIT_TLS_CACERT"),
		"--tlscert", j.resultFile("BUILDKIT_TLS_CERT"), "--tlskey", j.resultFile("BUILDKIT_TLS_KEY"),
		"--tlsservername", j.resultFile("BUILDKIT_TLS_SERVERNAME"),
		"debug", "histories", "--format", `{{.Type}}|{{.Record.Ref}}|{{if .Record.CompletedAt}}done{{end}}|{{with .Record.Error}}{{.Message}}{{end}}`)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: buildctl debug histories: %v: %s", errRetry, err, stderr.String())
	}
	var records []buildRecord
	for line := range strings.Lines(string(out)) {
		fields := strings.SplitN(strings.TrimSpace(line), "|", 4)
		if len(fields) != 4 || fields[1] == "" {
			continue
		}
		records = append(records, buildRecord{ref: fields[1], running: fields[2] == "", errMsg: fields[3]})
	}
	return records, nil
}

// resultFile is the trimmed content of a result file, or "" if there is none.
func (j *hookJob) resultFile(name string) string {
	data, _ := os.ReadFile(filepath.Join(j.results, name))
	return strings.TrimSpace(string(data))
}

// jobProcesses lists the live processes (zombies excluded) in process group pgid or with
// envEntry in their environment, as "pid pgid cmdline".
func jobProcesses(pgid int, envEntry string) []string {
	entries, _ := os.ReadDir("/proc")
	var live []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		member := fields[2] == strconv.Itoa(pgid)
		if !member {
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil {
				continue
			}
			for _, kv := range bytes.Split(environ, []byte{0}) {
				if string(kv) == envEntry {
					member = true
					break
				}
			}
		}
		if member {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			live = append(live, fmt.Sprintf("%d %s %s", pid, fields[2], strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))))
		}
	}
	return live
}

// buildSleepers builds, for linux/amd64 and linux/arm64, a static program that sleeps for as
// many seconds as its argument says: the blocking RUN step of the cancelled build.
func buildSleepers(ctx context.Context, t *testing.T, dir string) map[string]string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"go.mod":  "module sleeper\n\ngo 1.22\n",
		"main.go": "package main\n\nimport (\n\t\"os\"\n\t\"strconv\"\n\t\"time\"\n)\n\nfunc main() {\n\tn, _ := strconv.Atoi(os.Args[1])\n\ttime.Sleep(time.Duration(n) * time.Second)\n}\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sleepers := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		out := filepath.Join(dir, "sleeper-"+arch)
		build := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
		build.Dir = dir
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local")
		if data, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the sleeper for %s: %v\n%s", arch, err, data)
		}
		sleepers[arch] = out
	}
	return sleepers
}
