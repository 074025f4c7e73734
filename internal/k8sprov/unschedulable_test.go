package k8sprov

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

func unschedulablePod(sel map[string]string, memory string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "buildkit-abc-s390x", Namespace: "ci"},
		Spec:       corev1.PodSpec{NodeSelector: sel, Containers: []corev1.Container{{Name: ContainerName}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
			Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		}}},
	}
	if memory != "" {
		pod.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memory)}
	}
	return pod
}

func TestUnschedulableNamesSelectorPlatformAndNodes(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{corev1.LabelArchStable: "amd64", corev1.LabelOSStable: "linux"}},
		Status:     corev1.NodeStatus{Allocatable: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("3Gi")}},
	}
	s390x, _ := platform.Parse("linux/s390x")
	for _, tc := range []struct {
		name, scheduler, memory string
		denyNodes               bool
		want                    []string
	}{{
		name:      "selector matched nothing",
		scheduler: "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
		want: []string{"the builder for linux/s390x selects nodes with kubernetes.io/arch=s390x,kubernetes.io/os=linux",
			"nodes: node-1 (kubernetes.io/arch=amd64, kubernetes.io/os=linux)"},
	}, {
		name:      "token may not list nodes",
		scheduler: "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
		denyNodes: true,
		want:      []string{"selects nodes with kubernetes.io/arch=s390x", "which nodes exist is unknown: the token may not list nodes"},
	}, {
		name:      "node out of memory",
		scheduler: "0/1 nodes are available: 1 Insufficient memory.",
		memory:    "64Gi",
		want:      []string{"the builder for linux/s390x requests memory=64Gi (input requests)", "nodes: node-1 (allocatable memory=3Gi (3.0Gi))"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(node)
			if tc.denyNodes {
				client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", nil)
				})
			}
			p := &Provisioner{Client: client}
			pod := unschedulablePod(map[string]string{corev1.LabelArchStable: "s390x", corev1.LabelOSStable: "linux"}, tc.memory)
			pod.Status.Conditions[0].Message = tc.scheduler
			berr := p.diagnose(context.Background(), pod, &Builder{Platform: s390x, Pod: pod.Name}, false)
			if berr == nil || berr.Reason != "Unschedulable" {
				t.Fatalf("diagnosis %v, want Unschedulable", berr)
			}
			if !strings.HasPrefix(berr.Message, strings.TrimSuffix(tc.scheduler, ".")) {
				t.Errorf("the scheduler's own message is lost: %q", berr.Message)
			}
			for _, w := range tc.want {
				if !strings.Contains(berr.Message, w) {
					t.Errorf("message lacks %q:\n%s", w, berr.Message)
				}
			}
		})
	}
}

// A cache volume's claim created a moment ago is "not found" to the scheduler until its cache
// has it: that is a wait (bounded by the cache volume's attach timeout), not a diagnosis. The same
// message for a pod that mounts no claim is diagnosed as before.
func TestUnschedulableForAClaimIsAWait(t *testing.T) {
	s390x, _ := platform.Parse("linux/s390x")
	for _, msg := range []string{
		`0/1 nodes are available: persistentvolumeclaim "buildkit-cache-8fc03dab5466e5bbd8ae-0" not found. not found`,
		"0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
	} {
		p := &Provisioner{Client: fake.NewClientset()}
		pod := unschedulablePod(nil, "")
		pod.Status.Conditions[0].Message = msg
		if berr := p.diagnose(context.Background(), pod, &Builder{Platform: s390x, Pod: pod.Name}, false); berr == nil || berr.Reason != "Unschedulable" {
			t.Errorf("no claim mounted, %q: diagnosis %v, want Unschedulable", msg, berr)
		}
		pod.Spec.Volumes = []corev1.Volume{{Name: "cache", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "buildkit-cache-8fc03dab5466e5bbd8ae-0"}}}}
		if berr := p.diagnose(context.Background(), pod, &Builder{Platform: s390x, Pod: pod.Name}, false); berr != nil {
			t.Errorf("claim mounted, %q: diagnosis %v, want a wait", msg, berr)
		}
		// Once the volume controller has given up on the claim, waiting is pointless.
		failed := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "claim.1", Namespace: "ci"}, Reason: "ProvisioningFailed",
			InvolvedObject: corev1.ObjectReference{Kind: "PersistentVolumeClaim", Name: "buildkit-cache-8fc03dab5466e5bbd8ae-0"},
			Message:        `storageclass.storage.k8s.io "no-such-class" not found`}
		p.Client = fake.NewClientset(failed)
		berr := p.diagnose(context.Background(), pod, &Builder{Platform: s390x, Pod: pod.Name}, false)
		if berr == nil || berr.Reason != "Unschedulable" || !strings.Contains(berr.Message, `claim buildkit-cache-8fc03dab5466e5bbd8ae-0: storageclass.storage.k8s.io "no-such-class" not found`) {
			t.Errorf("claim failed to provision, %q: diagnosis %v, want Unschedulable naming the claim's failure", msg, berr)
		}
	}
}
