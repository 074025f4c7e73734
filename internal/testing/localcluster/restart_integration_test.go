package localcluster

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestIntegrationRestartAPIServer restarts the real kube-apiserver process and checks that a
// client made before the restart keeps working against the new process, which serves what was
// stored before.
func TestIntegrationRestartAPIServer(t *testing.T) {
	c := ForDisruptiveTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := kubernetes.NewForConfigOrDie(c.AdminConfig())
	ns := c.CreateNamespace(ctx, t, "restart")
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "before"}, Data: map[string]string{"k": "v"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := apiServerRecord(t, c)

	started := time.Now()
	if err := c.RestartAPIServer(ctx); err != nil {
		t.Fatalf("restarting the API server: %v", err)
	}
	t.Logf("API server restarted and ready in %.1fs", time.Since(started).Seconds())

	after := apiServerRecord(t, c)
	if after.PID == before.PID {
		t.Fatalf("API server pid is still %d: it was not restarted", before.PID)
	}
	if processAlive(before.PID, before.Binary) {
		t.Fatalf("the old API server (pid %d) still runs", before.PID)
	}
	got, err := client.CoreV1().ConfigMaps(ns).Get(ctx, "before", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading with the client made before the restart: %v", err)
	}
	if got.Data["k"] != "v" {
		t.Fatalf("configmap after restart = %v, want k=v", got.Data)
	}
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "after"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("writing with the client made before the restart: %v", err)
	}
}

// apiServerRecord is the API server's entry on the host record.
func apiServerRecord(t *testing.T, c *Cluster) processRecord {
	t.Helper()
	rec, err := loadHostRecord(c.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := rec.process(apiServerName)
	if !ok {
		t.Fatalf("no %s on the record in %s", apiServerName, c.StateDir)
	}
	return p
}
