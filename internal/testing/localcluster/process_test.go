package localcluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestEarlyExitIsReportedWithTheLogTail(t *testing.T) {
	dir := t.TempDir()
	rec, _ := loadHostRecord(dir)
	p, err := startProcess(rec, filepath.Join(dir, "logs"), "broken", "/bin/sh", []string{"-c", "echo flag --nope not understood; exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.waitHealthy(ctx, func(context.Context) error { return errors.New("not yet") })
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "--nope not understood") {
		t.Fatalf("waitHealthy = %v, want an early-exit error with the log tail", err)
	}
	again, _ := loadHostRecord(dir)
	if len(again.Processes) != 1 || again.Processes[0].Name != "broken" {
		t.Fatalf("the process was not on record before start-up finished: %+v", again.Processes)
	}
}

func TestStopProcessGroupStopsChildrenToo(t *testing.T) {
	dir := t.TempDir()
	rec, _ := loadHostRecord(dir)
	pidFile := filepath.Join(dir, "child.pid")
	// The shell ignores SIGTERM, so the group has to be killed; its child must go with it.
	p, err := startProcess(rec, filepath.Join(dir, "logs"), "parent", "/bin/sh",
		[]string{"-c", "trap '' TERM; sleep 300 & echo $! > " + pidFile + "; wait"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for i := 0; i < 100 && child == 0; i++ {
		data, _ := os.ReadFile(pidFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		time.Sleep(20 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("child never started")
	}
	if err := stopProcessGroup(rec.Processes[0], 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	for i := 0; i < 100 && processAlive(child, ""); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if processAlive(child, "") {
		t.Fatalf("child %d of the stopped group still runs", child)
	}
}

func TestProcessAliveChecksTheBinary(t *testing.T) {
	if !processAlive(os.Getpid(), "") {
		t.Fatal("this process is not alive")
	}
	// A recorded PID now running another program must not be signalled.
	if processAlive(os.Getpid(), "/usr/bin/definitely-not-this-test") {
		t.Fatal("processAlive accepted a PID running another binary")
	}
}
