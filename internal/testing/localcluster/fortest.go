package localcluster

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// StateDirEnv names the environment variable that points tests at the running cluster;
// the Makefile sets it for `make test`.
const StateDirEnv = "CLUSTER_DIR"

// ForTest returns the running local cluster for an integration test. Under -short it skips the
// test; otherwise a missing cluster fails the test, because a real-cluster test that silently
// does not run would count as passing. The test shares the cluster with every other ForTest
// caller, in any test process, and keeps a ForDisruptiveTest caller waiting until it ends.
func ForTest(t testing.TB) *Cluster {
	t.Helper()
	return forTest(t, syscall.LOCK_SH)
}

// ForDisruptiveTest is ForTest for a test that disrupts the cluster for everyone, such as one
// that calls RestartAPIServer: it waits until no other test in any process holds the cluster,
// and keeps every other ForTest caller waiting until it ends. A test (or subtest of a test) that
// already called ForTest must not call it: it would wait for itself.
func ForDisruptiveTest(t testing.TB) *Cluster {
	t.Helper()
	return forTest(t, syscall.LOCK_EX)
}

func forTest(t testing.TB, how int) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs the local cluster (run `make test`)")
	}
	dir := os.Getenv(StateDirEnv)
	if dir == "" {
		t.Fatalf("%s is not set: run the integration tests with `make test`, or `make cluster-up` and CLUSTER_DIR=<state dir> go test", StateDirEnv)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := lockFile(filepath.Join(dir, "tests.lock"), how)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	return c
}
