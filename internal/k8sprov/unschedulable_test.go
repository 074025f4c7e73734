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
