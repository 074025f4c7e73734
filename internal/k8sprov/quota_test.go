package k8sprov

import (
	"errors"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// refused is an admission refusal of a builder pod as a client receives it.
func refused(msg string) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "buildkit-abc-amd64", errors.New(msg))
}

func TestQuotaAndLimitRangeRefusalsAreNamed(t *testing.T) {
	for _, tc := range []struct {
		name, refusal string
		want          []string
	}{{
		name:    "quota exceeded",
		refusal: "exceeded quota: builders, requested: limits.cpu=2,requests.memory=128Mi, used: limits.cpu=0,requests.memory=0, limited: limits.cpu=1,requests.memory=64Mi",
		want: []string{`ResourceQuota "builders" in namespace "ci"`, "requests.memory: the pod asks 128Mi, 0 is already used, the quota allows 64Mi (input requests)",
			"limits.cpu: the pod asks 2, 0 is already used, the quota allows 1 (input limits)", "kubectl edit resourcequota builders -n ci"},
	}, {
		name:    "quota needs a limit the pod does not set",
		refusal: "failed quota: builders: must specify limits.cpu for: buildkitd; limits.memory for: buildkitd",
		want:    []string{`ResourceQuota "builders"`, "limits.cpu for: buildkitd", "requests/limits inputs"},
	}, {
		name:    "quota usage not computed",
		refusal: "status unknown for quota: builders, resources: requests.memory",
		want:    []string{`ResourceQuota "builders"`, "usage of requests.memory is not computed yet", "resourcequota controller"},
	}, {
		name:    "limit above a LimitRange maximum",
		refusal: "maximum cpu usage per Container is 500m, but limit is 1",
		want:    []string{`a LimitRange in namespace "ci"`, "maximum cpu usage per Container is 500m, but limit is 1 (input limits)", "kubectl describe limitrange -n ci"},
	}, {
		name:    "limit-to-request ratio without a request",
		refusal: "cpu max limit to request ratio per Container is 2, but no request is specified or request is 0",
		want:    []string{"cpu max limit to request ratio per Container is 2, but no request is specified or request is 0 (input requests)"},
	}, {
		name:    "two violations, a request below a minimum",
		refusal: "[minimum memory usage per Container is 1Gi, but request is 512Mi, maximum cpu usage per Pod is 2, but limit is 4]",
		want:    []string{"minimum memory usage per Container is 1Gi, but request is 512Mi (input requests)", "maximum cpu usage per Pod is 2, but limit is 4 (input limits)"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			err := explainAPIError(refused(tc.refusal), "create", "pods", "ci", "creating builder pod buildkit-abc-amd64")
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message lacks %q:\n%s", w, msg)
				}
			}
			var fe *ForbiddenError
			if errors.As(err, &fe) || strings.Contains(msg, "rbac.yaml") {
				t.Errorf("refusal worded as an RBAC denial:\n%s", msg)
			}
			if !apierrors.IsForbidden(err) {
				t.Error("the API's Forbidden is no longer reachable")
			}
		})
	}
}
