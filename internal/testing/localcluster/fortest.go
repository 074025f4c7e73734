package localcluster

import (
	"os"
	"testing"
)

// StateDirEnv names the environment variable that points tests at the running cluster;
// the Makefile sets it for `make test`.
const StateDirEnv = "CLUSTER_DIR"

// ForTest returns the running local cluster for an integration test. Under -short it skips the
// test; otherwise a missing cluster fails the test, because a real-cluster test that silently
// does not run would count as passing.
func ForTest(t testing.TB) *Cluster {
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
	return c
}
