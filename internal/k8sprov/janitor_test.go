package k8sprov

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

// TestCollectGarbageReasons: every verdict gives a true reason, in particular for builders with no
// owner pod at all (owner-pod: none, or orphaned), which only their deadline removes.
func TestCollectGarbageReasons(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour).Format(time.RFC3339)
	runner := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "runner", Namespace: "ci", UID: "uid-runner"}}
	builder := func(key, expires string, owner *metav1.OwnerReference) *corev1.Pod {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: "buildkit-" + key + "-amd64", Namespace: "ci",
			Labels: map[string]string{LabelManagedBy: ManagedBy, LabelJobKey: key},
		}}
		if expires != "" {
			pod.Annotations = map[string]string{AnnotationExpiresAt: expires}
		}
		if owner != nil {
			pod.OwnerReferences = []metav1.OwnerReference{*owner}
		}
		return pod
	}
	ref := func(name string, uid types.UID) *metav1.OwnerReference {
		return &metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: name, UID: uid}
	}
	client := fake.NewClientset(runner,
		builder("alive", later, ref("runner", "uid-runner")),
		builder("gone", later, ref("runner-old", "uid-old")),
		builder("none", later, nil),
		builder("nodeadline", "", nil),
	)
	p := &Provisioner{Client: client, Now: func() time.Time { return now }}
	decisions, err := p.CollectGarbage(context.Background(), "ci", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[JobKey]struct {
		delete bool
		reason string
	}{
		"alive":      {false, "owner alive and not expired; expires at " + later},
		"gone":       {true, "owner pod runner-old (uid uid-old) is gone"},
		"none":       {false, "no owner pod; kept until it expires at " + later},
		"nodeadline": {false, "no owner pod and no deadline"},
	}
	if len(decisions) != len(want) {
		t.Fatalf("decisions %+v", decisions)
	}
	for _, d := range decisions {
		w := want[d.Key]
		if d.Delete != w.delete || !strings.HasPrefix(d.Reason, w.reason) {
			t.Errorf("job %s: delete %v, reason %q; want delete %v, reason %q", d.Key, d.Delete, d.Reason, w.delete, w.reason)
		}
		if strings.Contains(d.Reason, "  ") {
			t.Errorf("job %s: reason %q has an empty part", d.Key, d.Reason)
		}
	}
}
