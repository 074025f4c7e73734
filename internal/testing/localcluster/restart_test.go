package localcluster

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestRestartStartsTheRecordedProcessAgainInItsPlace(t *testing.T) {
	dir := t.TempDir()
	rec, _ := loadHostRecord(dir)
	logs := filepath.Join(dir, "logs")
	for _, name := range []string{"first", "sleeper", "last"} {
		p, err := startProcess(rec, logs, name, "/bin/sleep", []string{"60"}, []string{"SEBK_TEST=" + name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	}
	old, _ := rec.process("sleeper")

	c := &Cluster{StateDir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	checked := false
	if err := c.restart(ctx, "sleeper", func(context.Context) error { checked = true; return nil }); err != nil {
		t.Fatal(err)
	}
	again, err := loadHostRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range again.Processes {
			_ = stopProcessGroup(p, time.Second)
		}
	})
	var names []string
	for _, p := range again.Processes {
		names = append(names, p.Name)
	}
	if !slices.Equal(names, []string{"first", "sleeper", "last"}) {
		t.Fatalf("record after restart lists %v, want the restarted process in its old place", names)
	}
	restarted, _ := again.process("sleeper")
	if restarted.PID == old.PID || !processAlive(restarted.PID, restarted.Binary) {
		t.Fatalf("restarted pid %d (old %d): want a new, live process", restarted.PID, old.PID)
	}
	if processAlive(old.PID, old.Binary) {
		t.Fatalf("old process %d still runs after the restart", old.PID)
	}
	if !slices.Equal(restarted.Args, old.Args) || !slices.Equal(restarted.Env, old.Env) || restarted.Binary != old.Binary {
		t.Fatalf("restarted as %+v, want the recorded %+v", restarted, old)
	}
	if !checked {
		t.Fatal("restart returned without checking health")
	}
}

func TestRestartRefusesAnUnknownProcess(t *testing.T) {
	c := &Cluster{StateDir: t.TempDir()}
	if err := c.restart(context.Background(), "kube-apiserver", nil); err == nil {
		t.Fatal("restart of a process not on the record succeeded")
	}
}
