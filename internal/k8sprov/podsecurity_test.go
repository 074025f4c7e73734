package k8sprov

import (
	"errors"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestPodSecurityRefusalIsNotCalledRBAC(t *testing.T) {
	// The message kube-apiserver's PodSecurity admission gives, as a client receives it.
	refusal := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "buildkit-abc-amd64",
		errors.New(`violates PodSecurity "baseline:latest": privileged (container "buildkitd" must not set securityContext.privileged=true)`))
	err := explainAPIError(refusal, "create", "pods", "ci", "creating builder pod buildkit-abc-amd64")
	var pse *PodSecurityError
	if !errors.As(err, &pse) {
		t.Fatalf("got %T %v, want a PodSecurityError", err, err)
	}
	if pse.Level != "baseline:latest" || !strings.Contains(pse.Violations, "securityContext.privileged=true") {
		t.Errorf("level %q, violations %q", pse.Level, pse.Violations)
	}
	msg := err.Error()
	for _, want := range []string{`"baseline:latest" level`, "privileged=true", "pod-security.kubernetes.io/enforce=privileged", "input namespace"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "rbac.yaml") || strings.Contains(msg, "service account may not") {
		t.Errorf("a Pod Security refusal is worded as an RBAC denial:\n%s", msg)
	}
	if !apierrors.IsForbidden(err) {
		t.Error("the API's Forbidden is no longer reachable through errors.As")
	}

	rbac := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New(`User "system:serviceaccount:ci:runner" cannot create resource "pods"`))
	var fe *ForbiddenError
	if err := explainAPIError(rbac, "create", "pods", "ci", "creating builder pod"); !errors.As(err, &fe) {
		t.Errorf("an RBAC denial became %T: %v", err, err)
	}
}
