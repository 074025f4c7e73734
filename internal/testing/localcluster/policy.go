package localcluster

import (
	"context"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
)

// ApplyAdmissionPolicyIn creates the ValidatingAdmissionPolicy and binding of manifest (as
// `setup-ephemeral-buildkit policy` prints them) under names of namespace ns, the binding
// judging ns only, so that tests in other namespaces are unaffected; both go when the test ends.
// It returns the policy's name. The policy takes a moment to reach the admission chain: callers
// wait for its first refusal.
func (c *Cluster) ApplyAdmissionPolicyIn(ctx context.Context, t testing.TB, ns string, manifest []byte) string {
	t.Helper()
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	var binding admissionregistrationv1.ValidatingAdmissionPolicyBinding
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(manifest)), 4096)
	if err := dec.Decode(&policy); err != nil {
		t.Fatalf("decoding the admission policy: %v", err)
	}
	if err := dec.Decode(&binding); err != nil {
		t.Fatalf("decoding the admission policy binding: %v", err)
	}
	policy.Name += "-" + ns
	binding.Name += "-" + ns
	binding.Spec.PolicyName = policy.Name
	binding.Spec.MatchResources = &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
		MatchLabels: map[string]string{corev1.LabelMetadataName: ns},
	}}
	api := kubernetes.NewForConfigOrDie(c.AdminConfig()).AdmissionregistrationV1()
	if _, err := api.ValidatingAdmissionPolicies().Create(ctx, &policy, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the admission policy: %v", err)
	}
	t.Cleanup(func() {
		_ = api.ValidatingAdmissionPolicies().Delete(context.Background(), policy.Name, metav1.DeleteOptions{})
	})
	if _, err := api.ValidatingAdmissionPolicyBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the admission policy binding: %v", err)
	}
	t.Cleanup(func() {
		_ = api.ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})
	return policy.Name
}
