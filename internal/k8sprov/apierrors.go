package k8sprov

import (
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// ForbiddenError is an API call the runner's ServiceAccount may not make. It names the verb and
// resource so the fix (a rule in the Role from deploy/rbac.yaml) is obvious.
type ForbiddenError struct {
	Verb, Resource, Namespace, Doing string
	Err                              error
}

func (e *ForbiddenError) Error() string {
	return fmt.Sprintf("%s: forbidden: the service account may not %s %s in namespace %q; "+
		"grant it with the Role in deploy/rbac.yaml (rule: resources [%s], verbs [%s]): %v",
		e.Doing, e.Verb, e.Resource, e.Namespace, e.Resource, e.Verb, e.Err)
}

func (e *ForbiddenError) Unwrap() error { return e.Err }

// explainAPIError turns a Forbidden answer into a PodSecurityError, QuotaError or
// LimitRangeError when that admission refused, or else a ForbiddenError (RBAC), and wraps
// anything else with what was being done.
func explainAPIError(err error, verb, resource, namespace, doing string) error {
	if err == nil {
		return nil
	}
	if pse, ok := asPodSecurityError(err, namespace, doing); ok {
		return pse
	}
	if le, ok := asAdmissionLimitError(err, namespace, doing); ok {
		return le
	}
	if apierrors.IsForbidden(err) {
		return &ForbiddenError{Verb: verb, Resource: resource, Namespace: namespace, Doing: doing, Err: err}
	}
	var fe *ForbiddenError
	var pse *PodSecurityError
	var qe *QuotaError
	var lre *LimitRangeError
	if errors.As(err, &fe) || errors.As(err, &pse) || errors.As(err, &qe) || errors.As(err, &lre) {
		return err
	}
	return fmt.Errorf("%s: %w", doing, err)
}
