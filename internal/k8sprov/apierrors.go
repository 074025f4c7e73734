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
	// Role names the Role that grants the right; empty means the runners' (RunnersRole).
	Role string
	Err  error
}

// Where each caller's rights are granted: the runners' Role lets a job make and remove its own
// builders; only the janitor's Role may list Secrets.
const (
	RunnersRole = "the runners' Role in deploy/rbac.yaml"
	JanitorRole = "the janitor's Role in deploy/janitor-cronjob.yaml (gc is meant to run with that Role, not the runners')"
)

func (e *ForbiddenError) Error() string {
	role := e.Role
	if role == "" {
		role = RunnersRole
	}
	return fmt.Sprintf("%s: forbidden: the service account may not %s %s in namespace %q; "+
		"grant it with %s (rule: resources [%s], verbs [%s]): %v",
		e.Doing, e.Verb, e.Resource, e.Namespace, role, e.Resource, e.Verb, e.Err)
}

// forRole points every ForbiddenError in err at role and returns err.
func forRole(err error, role string) error {
	for _, e := range Flatten(err) {
		var fe *ForbiddenError
		if errors.As(e, &fe) {
			fe.Role = role
		}
	}
	return err
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
