package k8sprov

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// procNetTCP renders a /proc/net/tcp file with the given "local-port-hex state-hex" rows.
func procNetTCP(rows ...string) string {
	var b strings.Builder
	b.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	for i, row := range rows {
		port, state, _ := strings.Cut(row, " ")
		fmt.Fprintf(&b, "%4d: 0A2A0005:%s 0A2A0009:C35A %s 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 20 4 30 10 -1\n",
			i, port, state, 1000+i)
	}
	return b.String()
}

// procNetTCP6 renders a /proc/net/tcp6 file likewise, with IPv6 addresses.
func procNetTCP6(rows ...string) string {
	var b strings.Builder
	b.WriteString("  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	for i, row := range rows {
		port, state, _ := strings.Cut(row, " ")
		fmt.Fprintf(&b, "%4d: 0000000000000000FFFF00000500A8C0:%s 0000000000000000FFFF00000900A8C0:D2F0 %s 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 20 4 30 10 -1\n",
			i, port, state, 2000+i)
	}
	return b.String()
}

// fakeProcNet is a directory standing in for /proc/net whose tables a test rewrites atomically.
type fakeProcNet struct {
	t   *testing.T
	dir string
}

func newFakeProcNet(t *testing.T) *fakeProcNet {
	f := &fakeProcNet{t: t, dir: t.TempDir()}
	f.set(procNetTCP("04D2 0A"), procNetTCP6())
	return f
}

func (f *fakeProcNet) set(tcp, tcp6 string) {
	f.t.Helper()
	for name, content := range map[string]string{"tcp": tcp, "tcp6": tcp6} {
		tmp := filepath.Join(f.dir, "."+name)
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			f.t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(f.dir, name)); err != nil {
			f.t.Fatal(err)
		}
	}
}

// drainRun is the drain script running in a real /bin/sh.
type drainRun struct {
	done    chan struct{}
	err     error
	started time.Time
	ended   time.Time
	logPath string
}

// shells returns the shells to run the hook in: /bin/sh, and BusyBox's sh (what the BuildKit
// image has) when this machine has BusyBox.
func shells(t *testing.T) map[string][]string {
	t.Helper()
	found := map[string][]string{}
	if _, err := os.Stat("/bin/sh"); err == nil {
		found["sh"] = []string{"/bin/sh"}
	}
	if busybox, err := exec.LookPath("busybox"); err == nil {
		found["busybox"] = []string{busybox, "sh"}
	}
	if len(found) == 0 {
		t.Skip("no shell to run the hook in")
	}
	return found
}

// forEachShell runs test in parallel subtests, one per shell.
func forEachShell(t *testing.T, test func(t *testing.T, shell []string)) {
	for name, shell := range shells(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, shell)
		})
	}
}

func startDrain(t *testing.T, shell []string, procNet string, quiet, grace time.Duration) *drainRun {
	t.Helper()
	command := drainHookCommand(quiet, grace)
	if command[0] != "/bin/sh" {
		t.Fatalf("hook command starts with %q, want /bin/sh", command[0])
	}
	command = append(append([]string(nil), shell...), command[1:]...)
	run := &drainRun{done: make(chan struct{}), logPath: filepath.Join(t.TempDir(), "log")}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Env = append(os.Environ(), "DRAIN_PROC_NET_DIR="+procNet, "DRAIN_LOG="+run.logPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	run.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", command[0], err)
	}
	go func() {
		err := cmd.Wait()
		run.ended = time.Now()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		run.err = err
		close(run.done)
	}()
	t.Cleanup(func() {
		select {
		case <-run.done:
		default:
			cmd.Process.Kill()
			<-run.done
		}
	})
	return run
}

func (r *drainRun) exitedWithin(d time.Duration) bool {
	select {
	case <-r.done:
		return true
	case <-time.After(d):
		return false
	}
}

func (r *drainRun) log(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(r.logPath)
	if err != nil {
		t.Fatalf("reading hook log: %v", err)
	}
	return string(data)
}

func TestDrainWaitsWhileABuildIsConnected(t *testing.T) {
	forEachShell(t, func(t *testing.T, shell []string) {
		procNet := newFakeProcNet(t)
		// A listening socket, a connection on another port, a closing one on ours: none counts.
		procNet.set(procNetTCP("04D2 0A", "04D3 01", "04D2 06"), procNetTCP6("04D2 01"))

		run := startDrain(t, shell, procNet.dir, time.Second, time.Minute)
		if run.exitedWithin(2500 * time.Millisecond) {
			t.Fatalf("hook returned after %s although a build connection (tcp6) was ESTABLISHED (err %v)", run.ended.Sub(run.started), run.err)
		}

		procNet.set(procNetTCP("04D2 0A", "04D3 01", "04D2 06"), procNetTCP6())
		closed := time.Now()
		if !run.exitedWithin(5 * time.Second) {
			t.Fatal("hook still waiting 5s after the last build connection closed (quiet period 1s)")
		}
		if run.err != nil {
			t.Fatalf("hook failed: %v", run.err)
		}
		if waited := run.ended.Sub(closed); waited < 900*time.Millisecond {
			t.Errorf("hook returned %s after the connection closed, before the 1s quiet period", waited)
		}
		if log := run.log(t); !strings.Contains(log, "no build connection for 1s") {
			t.Errorf("hook log %q does not say why it stopped", log)
		}
	})
}

func TestDrainRestartsTheQuietPeriodWhenABuildConnects(t *testing.T) {
	forEachShell(t, func(t *testing.T, shell []string) {
		procNet := newFakeProcNet(t)
		procNet.set(procNetTCP("04D2 01"), procNetTCP6())
		run := startDrain(t, shell, procNet.dir, 2*time.Second, time.Minute)
		time.Sleep(time.Second)
		// The build's connection closes, and within the quiet period another opens.
		procNet.set(procNetTCP("04D2 0A"), procNetTCP6())
		time.Sleep(time.Second)
		procNet.set(procNetTCP("04d2 01"), procNetTCP6()) // lower-case hex counts too
		time.Sleep(1500 * time.Millisecond)
		procNet.set(procNetTCP("04D2 0A"), procNetTCP6())
		closed := time.Now()
		if !run.exitedWithin(6 * time.Second) {
			t.Fatal("hook did not return after the connection closed")
		}
		if waited := run.ended.Sub(closed); waited < 1800*time.Millisecond {
			t.Errorf("hook returned %s after the connection closed: the quiet period did not start over", waited)
		}
	})
}

// A normal end of job: no build is connected when the pod is deleted, so the hook does not wait
// out the quiet period (issue 14 item 6: pods gone within 2 s of a normal teardown).
func TestDrainReturnsAtOnceWhenNothingIsConnected(t *testing.T) {
	forEachShell(t, func(t *testing.T, shell []string) {
		procNet := newFakeProcNet(t)
		run := startDrain(t, shell, procNet.dir, 10*time.Second, time.Minute)
		if !run.exitedWithin(3 * time.Second) {
			t.Fatal("hook with no build connection still waiting after 3s (quiet period 10s)")
		}
		if run.err != nil {
			t.Fatalf("hook failed: %v", run.err)
		}
		if log := run.log(t); !strings.Contains(log, "nothing to drain") {
			t.Errorf("hook log %q does not say why it stopped", log)
		}
	})
}

func TestDrainGivesUpBeforeTheGracePeriodEnds(t *testing.T) {
	forEachShell(t, func(t *testing.T, shell []string) {
		procNet := newFakeProcNet(t)
		procNet.set(procNetTCP("04D2 01"), procNetTCP6())
		// A grace period of 7s leaves the hook 2s (drainStopMargin is 5s).
		run := startDrain(t, shell, procNet.dir, 10*time.Second, drainStopMargin+2*time.Second)
		if !run.exitedWithin(6 * time.Second) {
			t.Fatal("hook kept waiting past its deadline")
		}
		if run.err != nil {
			t.Fatalf("hook failed: %v", run.err)
		}
		if took := run.ended.Sub(run.started); took < time.Second {
			t.Errorf("hook gave up after %s, long before its 2s deadline", took)
		}
		if log := run.log(t); !strings.Contains(log, "1 build connection(s) open") {
			t.Errorf("hook log %q does not report the open connection", log)
		}
	})
}

func TestDrainWithoutProcTablesDoesNotFail(t *testing.T) {
	forEachShell(t, func(t *testing.T, shell []string) {
		run := startDrain(t, shell, filepath.Join(t.TempDir(), "missing"), time.Second, time.Minute)
		if !run.exitedWithin(4 * time.Second) {
			t.Fatal("hook did not return")
		}
		if run.err != nil {
			t.Fatalf("hook failed: %v", run.err)
		}
	})
}

func TestDrainScriptWatchesTheBuildkitPort(t *testing.T) {
	if hex := fmt.Sprintf(":%04X:01", BuildkitPort); !strings.Contains(DrainScript, hex) {
		t.Errorf("DrainScript does not look for port %d (%s)", BuildkitPort, hex)
	}
}

func TestDrainHookCommand(t *testing.T) {
	got := drainHookCommand(1500*time.Millisecond, 900*time.Second)
	if got[0] != "/bin/sh" || got[1] != "-c" || got[2] != DrainScript || got[4] != "2" || got[5] != "895" {
		t.Errorf("drainHookCommand = %q", append(got[:2:2], got[3:]...))
	}
	if got := drainHookCommand(time.Second, 2*time.Second); got[5] != "0" {
		t.Errorf("deadline for a 2s grace period = %s, want 0", got[5])
	}
}
