package k8sprov

import (
	"context"
	"errors"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// grantNodeList lets env's runner ServiceAccount list nodes, as some clusters' runners may,
// until the test ends.
func grantNodeList(t *testing.T, ctx context.Context, env *jobEnv) {
	t.Helper()
	name := "list-nodes-" + env.ns
	roles, bindings := env.admin.RbacV1().ClusterRoles(), env.admin.RbacV1().ClusterRoleBindings()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list"}}}}
	if _, err := roles.Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = roles.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "runner", Namespace: env.ns}}}
	if _, err := bindings.Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bindings.Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// provisionUnschedulable provisions plan and returns its Unschedulable diagnosis.
func provisionUnschedulable(t *testing.T, ctx context.Context, env *jobEnv, plan Plan) *BuilderError {
	t.Helper()
	started := time.Now()
	_, err := env.provisioner(t).Provision(ctx, plan)
	elapsed := time.Since(started)
	t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
	var berr *BuilderError
	if !errors.As(err, &berr) || berr.Reason != "Unschedulable" {
		t.Fatalf("Provision error = %v, want an Unschedulable BuilderError", err)
	}
	if elapsed > 10*time.Second {
		t.Errorf("diagnosed after %v, want under 10s", elapsed)
	}
	assertNothingLeft(t, ctx, env, plan)
	return berr
}

// TestIntegrationUnschedulableNamesNodesAndRequests: with a token that may list nodes, a
// selector that matched nothing is shown beside each node's arch label, and a request no node
// can meet (Insufficient memory) beside the request's input and what the node has allocatable.
func TestIntegrationUnschedulableNamesNodesAndRequests(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Inputs
		want []string
	}{{
		name: "selector matched nothing",
		in:   Inputs{Platforms: "linux/s390x", NodeSelector: "*=kubernetes.io/os=linux"},
		want: []string{"didn't match Pod's node affinity/selector", "the builder for linux/s390x selects nodes with kubernetes.io/arch=s390x",
			"nodes: ", "(kubernetes.io/arch=amd64, kubernetes.io/os=linux)"},
	}, {
		name: "insufficient memory",
		in:   Inputs{Platforms: "linux/amd64", Requests: "memory=1Ti"},
		want: []string{"Insufficient memory", "the builder for linux/amd64 requests memory=1Ti (input requests)", "(allocatable memory="},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			env := newJobEnv(t, ctx)
			grantNodeList(t, ctx, env)
			berr := provisionUnschedulable(t, ctx, env, env.plan(t, "unschedulable", tc.in))
			assertMentions(t, berr.Message, tc.want...)
		})
	}
}
