package k8sprov

import (
	"context"
	"errors"
	"net"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Bounds of retried API calls: each attempt gets attemptTimeout, so a connection that hangs
// (a lost SYN, a stalled proxy) is given up and dialled afresh instead of eating the caller's
// whole budget; attempts are retryPause apart. Variables for tests.
var (
	attemptTimeout = 5 * time.Second
	retryPause     = 250 * time.Millisecond
)

// retryTransient runs call until it succeeds, fails for a reason retrying cannot fix, or ctx
// ends. Transient are: the attempt's own timeout, connection errors, and the API server's
// 429, 500, 503 and 504 answers, and a refusal just after one of those (restartRefusal). It
// returns call's last error.
func retryTransient(ctx context.Context, call func(ctx context.Context) error) error {
	var lastUnanswered time.Time
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := call(attemptCtx)
		attemptTimedOut := attemptCtx.Err() != nil
		cancel()
		if attemptTimedOut || isTransient(err) {
			lastUnanswered = time.Now()
		}
		if err == nil || ctx.Err() != nil || !(attemptTimedOut || isTransient(err) || restartRefusal(err, lastUnanswered, time.Now())) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(retryPause):
		}
	}
}

// isTransient reports whether err is an API or network failure that a later attempt may not see.
func isTransient(err error) bool {
	var netErr net.Error
	return apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || errors.As(err, &netErr)
}
