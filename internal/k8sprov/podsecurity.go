package k8sprov

import (
	"fmt"
	"regexp"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// PodSecurityError is a builder pod refused by Pod Security admission: the namespace enforces a
// level the pod does not meet. It is no RBAC denial (the Role may grant pods/create), so it says
// which level refused which fields and what an administrator can change.
type PodSecurityError struct {
	Namespace, Doing string
	// Level is the enforced level and version, "baseline:latest".
	Level string
	// Violations is the admission's list of what the pod does that the level forbids.
	Violations string
	Err        error
}

func (e *PodSecurityError) Error() string {
	return fmt.Sprintf("%s: refused by Pod Security admission: namespace %q enforces the %q level, and the builder pod violates it: %s. "+
		"BuildKit needs the privileged level (rootless: true still needs unconfined seccomp and AppArmor profiles, which baseline forbids): "+
		"an administrator can label the namespace pod-security.kubernetes.io/enforce=privileged, or give the builders a namespace of "+
		"their own with that label (input namespace)",
		e.Doing, e.Namespace, e.Level, e.Violations)
}

func (e *PodSecurityError) Unwrap() error { return e.Err }

// podSecurityRefusal matches the message of Pod Security admission's Forbidden answer:
// `pods "x" is forbidden: violates PodSecurity "baseline:latest": privileged (container ...)`.
var podSecurityRefusal = regexp.MustCompile(`violates PodSecurity "([^"]+)": (.*)$`)

// asPodSecurityError returns err as a PodSecurityError when it is Pod Security's refusal.
func asPodSecurityError(err error, namespace, doing string) (*PodSecurityError, bool) {
	if !apierrors.IsForbidden(err) {
		return nil, false
	}
	m := podSecurityRefusal.FindStringSubmatch(err.Error())
	if m == nil {
		return nil, false
	}
	return &PodSecurityError{Namespace: namespace, Doing: doing, Level: m[1], Violations: m[2], Err: err}, true
}
