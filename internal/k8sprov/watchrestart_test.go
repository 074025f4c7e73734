package k8sprov

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
)

// A restarted kube-apiserver refuses requests until its authorizer's caches are filled: right
// after it was away, a Forbidden is retried, not the end of the job.
func TestResumingWatchRetriesARefusalRightAfterAnOutage(t *testing.T) {
	s := newFakeServer()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("cannot watch resource pods"))
	s.watchErrs = []error{refused, forbidden, forbidden}
	w, _ := startFake(t, s, false)
	s.next(t).Add(fakePod("a", "11"))
	if ev := receive(t, w); ev.Type != watch.Added {
		t.Fatalf("got %v %v, want the pod once the API server allows the watch again", ev.Type, ev.Object)
	}
}

// Long after the outage, a Forbidden is a refusal again.
func TestResumingWatchEndsOnARefusalLongAfterAnOutage(t *testing.T) {
	w := &resumingWatch{now: func() time.Time { return time.Unix(1000, 0) }}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("no"))
	if w.retryable(forbidden) {
		t.Error("a Forbidden with no outage before it is retried")
	}
	w.lastUnanswered = time.Unix(1000, 0).Add(-restartRefusalWindow - time.Second)
	if w.retryable(forbidden) {
		t.Errorf("a Forbidden %v after the outage is retried", restartRefusalWindow+time.Second)
	}
	w.lastUnanswered = time.Unix(1000, 0).Add(-time.Second)
	if !w.retryable(forbidden) {
		t.Error("a Forbidden 1s after the outage is not retried")
	}
	if w.retryable(apierrors.NewBadRequest("bad")) {
		t.Error("a bad request right after an outage is retried")
	}
}

// Refusals retried during the window do not extend it: an API server that keeps refusing ends
// the watch restartRefusalWindow after it last did not answer.
func TestRefusalsDoNotExtendTheRestartWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	w := &resumingWatch{now: func() time.Time { return now }}
	w.unanswered(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})
	now = now.Add(10 * time.Second)
	w.unanswered(apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("no")))
	if got := w.lastUnanswered; !got.Equal(time.Unix(1000, 0)) {
		t.Errorf("lastUnanswered = %v after a refusal, want the outage's %v", got, time.Unix(1000, 0))
	}
}

// Teardown's and provisioning's single calls likewise retry a refusal that follows an outage,
// and only then.
func TestRetryTransientRetriesARefusalRightAfterAnOutage(t *testing.T) {
	defer func(p time.Duration) { retryPause = p }(retryPause)
	retryPause = time.Millisecond
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("cannot list resource pods"))
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	answers := []error{refused, forbidden, forbidden, nil}
	calls := 0
	err := retryTransient(context.Background(), func(context.Context) error {
		calls++
		return answers[calls-1]
	})
	if err != nil || calls != 4 {
		t.Errorf("after an outage: err %v after %d calls, want success at the 4th", err, calls)
	}
	calls = 0
	err = retryTransient(context.Background(), func(context.Context) error {
		calls++
		return forbidden
	})
	if !apierrors.IsForbidden(err) || calls != 1 {
		t.Errorf("without an outage: err %v after %d calls, want the Forbidden at once", err, calls)
	}
}
