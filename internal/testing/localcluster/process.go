package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is one component started by Up.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// startProcess starts binary in its own process group, with output appended to
// <logDir>/<name>.log, and records its PID, binary and flags before returning so Down can find
// it even if the caller crashes right after. A process started again under the same name
// replaces its entry, keeping its place in the order Down stops them.
func startProcess(rec *hostRecord, logDir, name, binary string, args []string, env []string) (*process, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s log: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	// A process group of its own: stopping it reaches every child it started, and a Ctrl-C in
	// the terminal that ran `make cluster-up` does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, binary, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := rec.update(func(r *hostRecord) {
		r.setProcess(processRecord{Name: name, PID: cmd.Process.Pid, Binary: binary, Args: args, Env: env})
	}); err != nil {
		return p, err
	}
	return p, nil
}

// waitHealthy calls check until it succeeds, the process exits (an early exit is reported with
// the tail of its log), or ctx ends.
func (p *process) waitHealthy(ctx context.Context, check func(context.Context) error) error {
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	var lastErr error
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during start-up (%v); last log lines:\n%s", p.name, p.waitErr, tailFile(p.logPath, 20))
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %w (last check: %v); last log lines:\n%s", p.name, ctx.Err(), lastErr, tailFile(p.logPath, 20))
		case <-ticker.C:
			checkCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			lastErr = check(checkCtx)
			cancel()
			if lastErr == nil {
				return nil
			}
		}
	}
}

// tailFile returns the last n lines of a file, or a note saying why it cannot.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// processAlive reports whether pid is a live (not zombie) process running binary.
func processAlive(pid int, binary string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	if binary != "" && filepath.Clean(exe) != filepath.Clean(binary) {
		if resolved, err := filepath.EvalSymlinks(binary); err != nil || resolved != exe {
			return false
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// stopProcessGroup sends SIGTERM to the process group of a recorded process, waits up to grace
// for the leader to go, then SIGKILLs the group. It never signals a PID that no longer runs the
// recorded binary.
func stopProcessGroup(rec processRecord, grace time.Duration) error {
	if !processAlive(rec.PID, rec.Binary) {
		// The leader is gone; children may remain in its group.
		_ = syscall.Kill(-rec.PID, syscall.SIGKILL)
		return nil
	}
	if err := syscall.Kill(-rec.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling %s (pid %d): %w", rec.Name, rec.PID, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !processAlive(rec.PID, rec.Binary) {
			_ = syscall.Kill(-rec.PID, syscall.SIGKILL)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := syscall.Kill(-rec.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s (pid %d): %w", rec.Name, rec.PID, err)
	}
	for i := 0; i < 100 && processAlive(rec.PID, rec.Binary); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// pidsMatching lists live processes whose command line contains every one of needles; used to
// find containerd shims, which leave their parent's process group on purpose.
func pidsMatching(needles ...string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		all := true
		for _, n := range needles {
			if !bytes.Contains(cmdline, []byte(n)) {
				all = false
				break
			}
		}
		if all {
			pids = append(pids, pid)
		}
	}
	return pids
}
