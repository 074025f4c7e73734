package k8sprov

import (
	"context"
	"errors"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestRetryTransient(t *testing.T) {
	defer func(a, p time.Duration) { attemptTimeout, retryPause = a, p }(attemptTimeout, retryPause)
	attemptTimeout, retryPause = 50*time.Millisecond, time.Millisecond
	pods := schema.GroupResource{Resource: "pods"}
	for _, tc := range []struct {
		name      string
		failures  []error // returned by the first attempts; nil entries hang until the attempt times out
		wantCalls int
		wantErr   bool
	}{
		{name: "a hanging attempt is given up and retried", failures: []error{nil}, wantCalls: 2},
		{name: "503 and 429 are retried", failures: []error{apierrors.NewServiceUnavailable("etcd"), apierrors.NewTooManyRequests("slow down", 1)}, wantCalls: 3},
		{name: "forbidden is not", failures: []error{apierrors.NewForbidden(pods, "x", errors.New("no"))}, wantCalls: 1, wantErr: true},
		{name: "not found is not", failures: []error{apierrors.NewNotFound(pods, "x")}, wantCalls: 1, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := retryTransient(context.Background(), func(ctx context.Context) error {
				calls++
				if calls > len(tc.failures) {
					return nil
				}
				if f := tc.failures[calls-1]; f != nil {
					return f
				}
				<-ctx.Done()
				return ctx.Err()
			})
			if calls != tc.wantCalls || (err != nil) != tc.wantErr {
				t.Errorf("%d calls, err %v; want %d calls, error %v", calls, err, tc.wantCalls, tc.wantErr)
			}
		})
	}
	// The caller's deadline ends the retries with the last error.
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := retryTransient(ctx, func(context.Context) error { return apierrors.NewServiceUnavailable("down") })
	if !apierrors.IsServiceUnavailable(err) || time.Since(start) > time.Second {
		t.Errorf("retrying until the deadline: %v after %v", err, time.Since(start))
	}
}
