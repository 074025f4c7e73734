package k8sprov

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestIntegrationResourceQuotaRefusalIsDiagnosed provisions into a namespace whose ResourceQuota
// is too small for one builder: the error must name the quota, the resource, what was asked and
// allowed and what to change, not a missing RBAC rule; nothing may be left behind.
func TestIntegrationResourceQuotaRefusalIsDiagnosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	quota := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "ci-small"},
		Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourceRequestsMemory: resource.MustParse("64Mi")}},
	}
	if _, err := env.admin.CoreV1().ResourceQuotas(env.ns).Create(ctx, quota, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Quota admission refuses every pod until the resourcequota controller has computed the
	// quota's usage; a real namespace's quota has long been computed.
	for {
		q, err := env.admin.CoreV1().ResourceQuotas(env.ns).Get(ctx, quota.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := q.Status.Used[corev1.ResourceRequestsMemory]; ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the resourcequota controller never computed the quota's usage: is it running in the controller-manager?")
		case <-time.After(100 * time.Millisecond):
		}
	}
	plan := env.plan(t, "quota", Inputs{Platforms: "linux/amd64", Requests: "memory=128Mi"})
	err := provisionRefused(t, ctx, env, plan)
	var qe *QuotaError
	if !errors.As(err, &qe) {
		t.Fatalf("got %T, want a QuotaError: %v", err, err)
	}
	assertRefusalMessage(t, err, `ResourceQuota "ci-small"`, "requests.memory: the pod asks 128Mi, 0 is already used, the quota allows 64Mi (input requests)",
		"kubectl edit resourcequota ci-small")
}

// TestIntegrationLimitRangeRefusalIsDiagnosed provisions with a CPU limit above the namespace's
// LimitRange maximum: the error must say so and name the limits input, not a missing RBAC rule.
func TestIntegrationLimitRangeRefusalIsDiagnosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	lr := &corev1.LimitRange{
		ObjectMeta: metav1.ObjectMeta{Name: "ci-cpu"},
		Spec: corev1.LimitRangeSpec{Limits: []corev1.LimitRangeItem{{
			Type: corev1.LimitTypeContainer, Max: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")},
		}}},
	}
	if _, err := env.admin.CoreV1().LimitRanges(env.ns).Create(ctx, lr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	plan := env.plan(t, "limitrange", Inputs{Platforms: "linux/amd64", Requests: "cpu=100m", Limits: "cpu=1"})
	err := provisionRefused(t, ctx, env, plan)
	var lre *LimitRangeError
	if !errors.As(err, &lre) {
		t.Fatalf("got %T, want a LimitRangeError: %v", err, err)
	}
	assertRefusalMessage(t, err, "a LimitRange in namespace", "maximum cpu usage per Container is 500m, but limit is 1 (input limits)",
		"kubectl describe limitrange")
}

// provisionRefused provisions plan, which must fail, and checks nothing is left behind.
func provisionRefused(t *testing.T, ctx context.Context, env *jobEnv, plan Plan) error {
	t.Helper()
	started := time.Now()
	_, err := env.provisioner(t).Provision(ctx, plan)
	t.Logf("after %s: %v", time.Since(started).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("provisioned, want a refusal")
	}
	assertNothingLeft(t, ctx, env, plan)
	return err
}

// assertMentions checks msg has each of want.
func assertMentions(t *testing.T, msg string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q:\n%s", w, msg)
		}
	}
}

// assertRefusalMessage checks an admission refusal's message has each of want and no RBAC wording.
func assertRefusalMessage(t *testing.T, err error, want ...string) {
	t.Helper()
	msg := err.Error()
	assertMentions(t, msg, want...)
	if strings.Contains(msg, "rbac.yaml") || strings.Contains(msg, "service account may not") {
		t.Errorf("refusal worded as an RBAC denial:\n%s", msg)
	}
}
