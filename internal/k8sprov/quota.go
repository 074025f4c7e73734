package k8sprov

import (
	"fmt"
	"regexp"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// QuotaError is a builder pod refused by the namespace's ResourceQuota: the pod's requests or
// limits, added to what the namespace already uses, exceed what the quota allows. It is no RBAC
// denial, so it names the quota, each resource with what was asked, used and allowed, and what
// the user (the requests and limits inputs) or an administrator (the quota) can change.
type QuotaError struct {
	Namespace, Doing string
	// Quota is the ResourceQuota's name.
	Quota string
	// Requested, Used and Limited are the admission's lists, "requests.memory=128Mi,...".
	Requested, Used, Limited string
	// Unspecified lists resources the quota covers that the pod does not set, when that was
	// the refusal ("must specify limits.cpu for: buildkitd").
	Unspecified string
	// Uncomputed lists the resources whose usage the quota controller has not computed yet,
	// when that was the refusal ("status unknown for quota: q, resources: requests.memory").
	Uncomputed string
	Err        error
}

func (e *QuotaError) Error() string {
	change := "lower the builder's requests/limits inputs (or ask for fewer platforms at once), or an administrator can raise " +
		"the quota (kubectl edit resourcequota " + e.Quota + " -n " + e.Namespace + ") or give the builders a namespace of their own (input namespace)"
	if e.Uncomputed != "" {
		return fmt.Sprintf("%s: refused by ResourceQuota %q in namespace %q: its usage of %s is not computed yet, so no pod is admitted. "+
			"The quota is new or the cluster's resourcequota controller is not running; running the job again once it is computed "+
			"may succeed, otherwise an administrator must look at kube-controller-manager (kubectl describe resourcequota %s -n %s)",
			e.Doing, e.Quota, e.Namespace, e.Uncomputed, e.Quota, e.Namespace)
	}
	if e.Unspecified != "" {
		return fmt.Sprintf("%s: refused by ResourceQuota %q in namespace %q: the quota covers %s, so every pod must set it, and the builder pod does not. "+
			"Set it with the requests/limits inputs (for example limits: cpu=1,memory=2Gi), or an administrator can give the builders a namespace "+
			"without that quota (input namespace)", e.Doing, e.Quota, e.Namespace, e.Unspecified)
	}
	return fmt.Sprintf("%s: refused by ResourceQuota %q in namespace %q: %s. To fit, %s",
		e.Doing, e.Quota, e.Namespace, quotaLines(e.Requested, e.Used, e.Limited), change)
}

func (e *QuotaError) Unwrap() error { return e.Err }

// quotaLines pairs the admission's three lists per resource: "requests.memory: the pod asks
// 128Mi, 0 is used, the quota allows 64Mi".
func quotaLines(requested, used, limited string) string {
	asked, inUse := quantities(requested), quantities(used)
	var lines []string
	for _, kv := range strings.Split(limited, ",") {
		name, allowed, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: the pod asks %s, %s is already used, the quota allows %s (input %s)",
			name, orUnknown(asked[name]), orUnknown(inUse[name]), allowed, inputForQuotaResource(name)))
	}
	if len(lines) == 0 {
		return fmt.Sprintf("requested %s, used %s, limited %s", requested, used, limited)
	}
	return strings.Join(lines, "; ")
}

func quantities(list string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(list, ",") {
		if name, q, ok := strings.Cut(kv, "="); ok {
			m[name] = q
		}
	}
	return m
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// inputForQuotaResource says which input sets a quota's resource: a bare "cpu" or "memory" in
// a quota means requests.
func inputForQuotaResource(name string) string {
	switch {
	case strings.HasPrefix(name, "limits."):
		return InputLimits
	case strings.HasPrefix(name, "requests."), name == "cpu", name == "memory", name == "ephemeral-storage":
		return InputRequests
	}
	return "platforms: one pod per platform"
}

// LimitRangeError is a builder pod refused by a LimitRange in the namespace: a container's
// request or limit is outside its bounds. The refusal does not name the LimitRange, and the
// runner's Role may not list them, so it says where to look.
type LimitRangeError struct {
	Namespace, Doing string
	// Violations are the admission's sentences, "maximum cpu usage per Container is 500m, but limit is 1".
	Violations []string
	Err        error
}

func (e *LimitRangeError) Error() string {
	var lines []string
	for _, v := range e.Violations {
		lines = append(lines, v+" ("+limitRangeInput(v)+")")
	}
	return fmt.Sprintf("%s: refused by a LimitRange in namespace %q: %s. Set the requests/limits inputs within its bounds "+
		"(kubectl describe limitrange -n %s shows them), or an administrator can change the LimitRange or give the builders "+
		"a namespace of their own (input namespace)", e.Doing, e.Namespace, strings.Join(lines, "; "), e.Namespace)
}

func (e *LimitRangeError) Unwrap() error { return e.Err }

// limitRangeInput names the input a LimitRange sentence is about.
func limitRangeInput(violation string) string {
	v := strings.ToLower(violation)
	switch {
	case strings.Contains(v, "but limit is"), strings.Contains(v, "no limit is specified"):
		return "input " + InputLimits
	case strings.Contains(v, "but request is"), strings.Contains(v, "no request is specified"):
		return "input " + InputRequests
	}
	return "inputs " + InputRequests + " and " + InputLimits
}

var (
	// quotaRefusal matches ResourceQuota admission's message:
	// `exceeded quota: q, requested: requests.memory=128Mi, used: requests.memory=0, limited: requests.memory=64Mi`.
	quotaRefusal = regexp.MustCompile(`exceeded quota: ([^,]+), requested: (\S+), used: (\S+), limited: (\S+)`)
	// quotaUnspecified matches `failed quota: q: must specify limits.cpu for: buildkitd; limits.memory for: buildkitd`.
	quotaUnspecified = regexp.MustCompile(`failed quota: ([^:]+): must specify (.*)$`)
	// quotaUnknown matches `status unknown for quota: q, resources: requests.memory`.
	quotaUnknown = regexp.MustCompile(`status unknown for quota: ([^,]+), resources?: (.*)$`)
	// limitRangeViolation matches each of LimitRanger's sentences, `maximum cpu usage per Container is 500m, but limit is 1`,
	// `minimum memory usage per Container is 1Gi, but request is 512Mi`, and the ratio and "No ... is specified" forms.
	limitRangeViolation = regexp.MustCompile(`(?:(?:maximum|minimum) \S+ usage per (?:Container|Pod) is [^,\]]+(?:, but (?:limit|request) is [^,\]]+|\.\s+No (?:limit|request) is specified)` +
		`|\S+ max limit to request ratio per (?:Container|Pod) is [^,\]]+, but (?:provided ratio is [^,\]]+|no (?:limit|request) is specified(?: or (?:limit|request) is 0)?))`)
)

// asAdmissionLimitError returns err as a QuotaError or LimitRangeError when it is one of those
// admissions' refusals.
func asAdmissionLimitError(err error, namespace, doing string) (error, bool) {
	if !apierrors.IsForbidden(err) {
		return nil, false
	}
	msg := err.Error()
	if m := quotaRefusal.FindStringSubmatch(msg); m != nil {
		return &QuotaError{Namespace: namespace, Doing: doing, Quota: m[1], Requested: m[2], Used: m[3], Limited: m[4], Err: err}, true
	}
	if m := quotaUnspecified.FindStringSubmatch(msg); m != nil {
		return &QuotaError{Namespace: namespace, Doing: doing, Quota: m[1], Unspecified: m[2], Err: err}, true
	}
	if m := quotaUnknown.FindStringSubmatch(msg); m != nil {
		return &QuotaError{Namespace: namespace, Doing: doing, Quota: m[1], Uncomputed: m[2], Err: err}, true
	}
	if vs := limitRangeViolation.FindAllString(msg, -1); vs != nil {
		return &LimitRangeError{Namespace: namespace, Doing: doing, Violations: vs, Err: err}, true
	}
	return nil, false
}
