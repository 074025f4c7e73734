package k8sprov

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestIntegrationPodSecurityRefusalIsDiagnosed provisions into a namespace that enforces the
// baseline Pod Security level: the error must name Pod Security, the level and the field, and
// what an administrator can do, not a missing RBAC rule; nothing may be left behind.
func TestIntegrationPodSecurityRefusalIsDiagnosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	ns, err := env.admin.CoreV1().Namespaces().Get(ctx, env.ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels["pod-security.kubernetes.io/enforce"] = "baseline"
	if _, err := env.admin.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	plan := env.plan(t, "podsecurity", Inputs{Platforms: "linux/amd64"})
	started := time.Now()
	_, err = env.provisioner(t).Provision(ctx, plan)
	t.Logf("after %s: %v", time.Since(started).Round(time.Millisecond), err)
	var pse *PodSecurityError
	if !errors.As(err, &pse) {
		t.Fatalf("got %T, want a PodSecurityError: %v", err, err)
	}
	msg := err.Error()
	for _, want := range []string{`"baseline:latest" level`, "privileged", "pod-security.kubernetes.io/enforce=privileged"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q", want)
		}
	}
	if strings.Contains(msg, "rbac.yaml") {
		t.Errorf("Pod Security refusal worded as RBAC denial")
	}
	pods, _ := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	secrets, _ := env.admin.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if len(pods.Items)+len(secrets.Items) != 0 {
		t.Errorf("left after the refusal: %d pods, %d Secrets", len(pods.Items), len(secrets.Items))
	}
}
