package k8sprov

import (
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// restartRefusalWindow is how long after the API server last failed to answer at all a Forbidden
// or Unauthorized answer is taken for a server still starting. A restarted kube-apiserver accepts
// connections before its authorizer and authenticator caches are filled, and until then refuses
// requests it will allow a moment later (measured here: the runner's watch refused with "cannot
// watch resource pods" right after a real restart, although its Role grants it).
const restartRefusalWindow = 15 * time.Second

// retryable reports whether the watch should try again after err: a transient failure, or a
// refusal from an API server that was away moments ago.
func (w *resumingWatch) retryable(err error) bool {
	if isTransient(err) {
		return true
	}
	w.mu.Lock()
	last := w.lastUnanswered
	w.mu.Unlock()
	return restartRefusal(err, last, w.now())
}

// restartRefusal reports whether err is a Forbidden or Unauthorized answer within
// restartRefusalWindow of lastUnanswered, when the API server last did not answer at all: a
// server still starting, not a denial.
func restartRefusal(err error, lastUnanswered, now time.Time) bool {
	if !apierrors.IsForbidden(err) && !apierrors.IsUnauthorized(err) {
		return false
	}
	return !lastUnanswered.IsZero() && now.Sub(lastUnanswered) < restartRefusalWindow
}
