package k8sprov

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// explainUnschedulable adds to the scheduler's message what it does not say: for a selector that
// matched nothing, the builder's node selector, its platform and the nodes there are with their
// arch labels; for a node short of memory or CPU, what the builder requests and what each node
// has allocatable. Nodes are listed only if the token may (the shipped Role does not grant it).
func (p *Provisioner) explainUnschedulable(ctx context.Context, pod *corev1.Pod, pl platform.Platform, schedulerMsg string) string {
	var notes []string
	selectorMismatch := strings.Contains(schedulerMsg, "didn't match Pod's node affinity/selector")
	if selectorMismatch {
		notes = append(notes, fmt.Sprintf("the builder for %s selects nodes with %s", pl, formatSelector(pod.Spec.NodeSelector)))
	}
	var short []corev1.ResourceName
	for _, r := range []corev1.ResourceName{corev1.ResourceMemory, corev1.ResourceCPU} {
		if strings.Contains(schedulerMsg, "Insufficient "+string(r)) {
			short = append(short, r)
			notes = append(notes, fmt.Sprintf("the builder for %s requests %s=%s (input %s)", pl, r, podRequest(pod, r), InputRequests))
		}
	}
	if len(notes) == 0 {
		return schedulerMsg
	}
	nodes, err := p.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	switch {
	case err != nil:
		notes = append(notes, fmt.Sprintf("which nodes exist is unknown: the token may not list nodes (%v)", err))
	case len(nodes.Items) == 0:
		notes = append(notes, "the cluster has no nodes")
	default:
		var ns []string
		for _, n := range nodes.Items {
			ns = append(ns, describeNode(n, selectorMismatch, short))
		}
		notes = append(notes, "nodes: "+strings.Join(ns, ", "))
	}
	return strings.TrimSuffix(strings.TrimSpace(schedulerMsg), ".") + "; " + strings.Join(notes, "; ")
}

// describeNode is a node's name with its arch and OS labels and, for each resource a builder
// was short of, what it has allocatable.
func describeNode(n corev1.Node, labels bool, short []corev1.ResourceName) string {
	var facts []string
	if labels {
		for _, k := range []string{corev1.LabelArchStable, corev1.LabelOSStable} {
			v, ok := n.Labels[k]
			if !ok {
				v = "(unset)"
			}
			facts = append(facts, k+"="+v)
		}
	}
	for _, r := range short {
		q := n.Status.Allocatable[r]
		fact := fmt.Sprintf("allocatable %s=%s", r, q.String())
		if r == corev1.ResourceMemory {
			fact += fmt.Sprintf(" (%.1fGi)", float64(q.Value())/(1<<30)) // nodes report Ki
		}
		facts = append(facts, fact)
	}
	return fmt.Sprintf("%s (%s)", n.Name, strings.Join(facts, ", "))
}

func formatSelector(sel map[string]string) string {
	if len(sel) == 0 {
		return "no node selector"
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		kv = append(kv, k+"="+sel[k])
	}
	return strings.Join(kv, ",")
}

// podRequest sums the pod's containers' requests of r.
func podRequest(pod *corev1.Pod, r corev1.ResourceName) string {
	var total resource.Quantity
	none := true
	for _, c := range pod.Spec.Containers {
		if q, ok := c.Resources.Requests[r]; ok {
			total.Add(q)
			none = false
		}
	}
	if none {
		return "(none)"
	}
	return total.String()
}
