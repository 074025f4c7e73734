package localcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// RestartAPIServer stops kube-apiserver's whole process group and starts it again with the same
// binary and flags, returning once /readyz answers. Clients see their connections drop and the
// API come back at the same address, as after a control-plane crash or upgrade. It works from any
// process that loaded the cluster, because the record holds the flags. Tests that call it get the
// cluster from ForDisruptiveTest, so no other test runs against it meanwhile.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	client, err := adminHTTPClient(c.Info.CAFile, c.Info.AdminCertFile, c.Info.AdminKeyFile)
	if err != nil {
		return err
	}
	return c.restart(ctx, apiServerName, httpCheck(client, c.Info.Server+"/readyz"))
}

// restart stops the recorded process called name and starts it again as recorded, then waits
// for check. The new PID replaces the old one on the record, so Down stops the new process.
func (c *Cluster) restart(ctx context.Context, name string, check func(context.Context) error) error {
	rec, err := loadHostRecord(c.StateDir)
	if err != nil {
		return err
	}
	old, ok := rec.process(name)
	if !ok {
		return fmt.Errorf("restarting %s: no such process on the record %s", name, rec.path)
	}
	if len(old.Args) == 0 {
		return fmt.Errorf("restarting %s: the record %s has no flags for it (written by an older localcluster); start the cluster again", name, rec.path)
	}
	if err := stopProcessGroup(old, 10*time.Second); err != nil {
		return fmt.Errorf("restarting %s: %w", name, err)
	}
	p, err := startProcess(rec, filepath.Join(c.StateDir, "logs"), name, old.Binary, old.Args, old.Env)
	if err != nil {
		return fmt.Errorf("restarting %s: %w", name, err)
	}
	return p.waitHealthy(ctx, check)
}

// lockFile takes a lock on path (syscall.LOCK_SH or LOCK_EX), creating the file, and returns the
// function that releases it. The lock is released when the process ends, however it ends.
func lockFile(path string, how int) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
