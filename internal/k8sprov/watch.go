package k8sprov

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
)

// Pauses between attempts to reach an API server that does not answer: short at first, since a
// restarted kube-apiserver or a reset connection is usually back within a second or two, and at
// most a second, so that a job notices within a second that it is back.
const (
	rewatchMinPause = 100 * time.Millisecond
	rewatchMaxPause = time.Second
	// awayReminder is how often a continuing outage is reported again.
	awayReminder = 5 * time.Second
)

// listFunc lists what a watch follows: the list's resource version and, for watches that replay
// state after a re-list, its items.
type listFunc func(ctx context.Context) (resourceVersion string, items []runtime.Object, err error)

// watchFunc starts a watch from resourceVersion.
type watchFunc func(ctx context.Context, resourceVersion string) (watch.Interface, error)

// resumingWatch is a watch that survives what API servers do routinely: close watches (their own
// timeout, a restart, a load balancer), break them (a reset connection), or go away for a while.
// A closed or broken watch is started again from the last resource version it delivered; a
// 410 Gone (that version is no longer kept) re-lists, and with replay the re-list is delivered as
// Modified events for what exists and Deleted events for what went meanwhile, so a consumer sees
// every change as if the watch had never broken. Only a refusal retrying cannot fix (Forbidden,
// Unauthorized, an unknown resource) ends it, after delivering that error as an Error event.
//
// client-go's RetryWatcher does the first half, but refuses to start from the empty resource
// version fake clients list with, loops on a 410 returned by the watch call instead of re-listing,
// and logs to klog; its informers (UntilWithSync) re-list, but say nothing about an API server that
// is away. This type does both and tells its owner how long the API server has been away.
type resumingWatch struct {
	what   string
	list   listFunc
	watch  watchFunc
	replay bool
	now    func() time.Time
	// onAway is told when the API server stops answering, and again every awayReminder;
	// onBack when it answers again. Either may be nil.
	onAway func(what string, away time.Duration, err error)
	onBack func(what string, away time.Duration)
	// minPause and maxPause bound the pause between attempts; zero means rewatchMinPause and
	// rewatchMaxPause.
	minPause, maxPause time.Duration

	events chan watch.Event
	stopCh chan struct{}
	once   sync.Once

	mu        sync.Mutex
	awaySince time.Time
	awayErr   error
	reminded  time.Time
	// lastUnanswered is when the API server last did not answer at all (restartRefusal).
	lastUnanswered time.Time
	// known is what was delivered and not deleted, by namespace/name, for replay.
	known map[string]runtime.Object
}

// startResumingWatch starts following from resourceVersion (that of a list the caller made).
func startResumingWatch(ctx context.Context, w *resumingWatch, resourceVersion string) *resumingWatch {
	if w.now == nil {
		w.now = time.Now
	}
	if w.minPause <= 0 {
		w.minPause = rewatchMinPause
	}
	if w.maxPause <= 0 {
		w.maxPause = rewatchMaxPause
	}
	w.events = make(chan watch.Event)
	w.stopCh = make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		<-w.stopCh
		cancel()
	}()
	go w.run(ctx, resourceVersion)
	return w
}

// ResultChan delivers the events; it is closed when the context ends, Stop is called, or after a
// fatal Error event.
func (w *resumingWatch) ResultChan() <-chan watch.Event { return w.events }

// Stop ends the watch.
func (w *resumingWatch) Stop() { w.once.Do(func() { close(w.stopCh) }) }

// Away reports since when the API server has not answered, and its last error; zero when it
// answers.
func (w *resumingWatch) Away() (since time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.awaySince, w.awayErr
}

func (w *resumingWatch) run(ctx context.Context, rv string) {
	defer close(w.events)
	pause := w.minPause
	for ctx.Err() == nil {
		inner, err := w.watch(ctx, rv)
		switch {
		case err == nil:
			w.answered()
			pause = w.minPause
			var gone, fatal bool
			rv, gone, fatal = w.forward(ctx, inner, rv)
			inner.Stop()
			if fatal {
				return
			}
			if gone {
				if rv, fatal = w.relist(ctx); fatal {
					return
				}
			}
			continue
		case isGone(err):
			var fatal bool
			if rv, fatal = w.relist(ctx); fatal {
				return
			}
			continue
		case !w.retryable(err):
			w.send(ctx, errorEvent(err))
			return
		}
		w.unanswered(err)
		pause = w.sleep(ctx, pause)
	}
}

// forward delivers inner's events until it closes or reports an error, and returns the last
// resource version delivered, whether that version is gone, and whether the error is fatal (it
// was delivered then).
func (w *resumingWatch) forward(ctx context.Context, inner watch.Interface, rv string) (string, bool, bool) {
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return rv, false, false
		case ev, ok = <-inner.ResultChan():
		}
		if !ok {
			return rv, false, false
		}
		if ev.Type == watch.Error {
			err := apierrors.FromObject(ev.Object)
			switch {
			case isGone(err):
				return rv, true, false
			case isTransient(err):
				// A broken stream ("unable to decode an event"), a server-side timeout: watch again.
				return rv, false, false
			}
			w.send(ctx, ev)
			return rv, false, true
		}
		if obj, err := meta.Accessor(ev.Object); err == nil && obj.GetResourceVersion() != "" {
			rv = obj.GetResourceVersion()
		}
		if ev.Type == watch.Bookmark {
			continue
		}
		w.remember(ev)
		if !w.send(ctx, ev) {
			return rv, false, false
		}
	}
}

// relist lists again until the API server answers, delivers the difference when replaying, and
// returns the list's resource version; fatal is true when the list was refused for good.
func (w *resumingWatch) relist(ctx context.Context) (rv string, fatal bool) {
	pause := w.minPause
	for ctx.Err() == nil {
		rv, items, err := w.list(ctx)
		if err == nil {
			w.answered()
			w.replayList(ctx, items)
			return rv, false
		}
		if !w.retryable(err) {
			w.send(ctx, errorEvent(err))
			return "", true
		}
		w.unanswered(err)
		pause = w.sleep(ctx, pause)
	}
	return "", true
}

func (w *resumingWatch) replayList(ctx context.Context, items []runtime.Object) {
	if !w.replay {
		return
	}
	listed := map[string]bool{}
	for _, item := range items {
		listed[objectKey(item)] = true
		ev := watch.Event{Type: watch.Modified, Object: item}
		w.remember(ev)
		w.send(ctx, ev)
	}
	for key, obj := range w.knownSnapshot() {
		if !listed[key] {
			ev := watch.Event{Type: watch.Deleted, Object: obj}
			w.remember(ev)
			w.send(ctx, ev)
		}
	}
}

func (w *resumingWatch) remember(ev watch.Event) {
	if !w.replay {
		return
	}
	key := objectKey(ev.Object)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.known == nil {
		w.known = map[string]runtime.Object{}
	}
	if ev.Type == watch.Deleted {
		delete(w.known, key)
	} else {
		w.known[key] = ev.Object
	}
}

func (w *resumingWatch) knownSnapshot() map[string]runtime.Object {
	w.mu.Lock()
	defer w.mu.Unlock()
	snapshot := make(map[string]runtime.Object, len(w.known))
	for k, v := range w.known {
		snapshot[k] = v
	}
	return snapshot
}

func (w *resumingWatch) send(ctx context.Context, ev watch.Event) bool {
	select {
	case w.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// sleep pauses before the next attempt and returns the pause after it.
func (w *resumingWatch) sleep(ctx context.Context, pause time.Duration) time.Duration {
	select {
	case <-ctx.Done():
	case <-time.After(pause):
	}
	return min(2*pause, w.maxPause)
}

func (w *resumingWatch) unanswered(err error) {
	now := w.now()
	w.mu.Lock()
	if w.awaySince.IsZero() {
		w.awaySince = now
	}
	w.awayErr = err
	if isTransient(err) { // not a refusal retried by restartRefusalWindow: that would extend it
		w.lastUnanswered = now
	}
	since := w.awaySince
	remind := w.reminded.IsZero() || now.Sub(w.reminded) >= awayReminder
	if remind {
		w.reminded = now
	}
	w.mu.Unlock()
	if remind && w.onAway != nil {
		w.onAway(w.what, now.Sub(since), err)
	}
}

func (w *resumingWatch) answered() {
	w.mu.Lock()
	since := w.awaySince
	w.awaySince, w.awayErr, w.reminded = time.Time{}, nil, time.Time{}
	w.mu.Unlock()
	if !since.IsZero() && w.onBack != nil {
		w.onBack(w.what, w.now().Sub(since))
	}
}

func isGone(err error) bool { return apierrors.IsGone(err) || apierrors.IsResourceExpired(err) }

func errorEvent(err error) watch.Event {
	if status, ok := err.(apierrors.APIStatus); ok {
		s := status.Status()
		return watch.Event{Type: watch.Error, Object: &s}
	}
	s := apierrors.NewInternalError(err).ErrStatus
	return watch.Event{Type: watch.Error, Object: &s}
}

func objectKey(obj runtime.Object) string {
	m, err := meta.Accessor(obj)
	if err != nil {
		return fmt.Sprintf("%p", obj)
	}
	return m.GetNamespace() + "/" + m.GetName()
}
