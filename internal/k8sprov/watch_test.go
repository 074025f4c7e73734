package k8sprov

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// fakeServer hands out scripted watches and lists and records the resource versions asked for.
type fakeServer struct {
	mu       sync.Mutex
	watchRVs []string
	// watchErrs are returned by the next watch calls, in order, before watches are handed out.
	watchErrs []error
	watches   chan *watch.FakeWatcher
	listRV    string
	listItems []runtime.Object
	lists     int
}

func newFakeServer() *fakeServer { return &fakeServer{watches: make(chan *watch.FakeWatcher, 10)} }

func (s *fakeServer) watch(ctx context.Context, rv string) (watch.Interface, error) {
	s.mu.Lock()
	s.watchRVs = append(s.watchRVs, rv)
	if len(s.watchErrs) > 0 {
		err := s.watchErrs[0]
		s.watchErrs = s.watchErrs[1:]
		s.mu.Unlock()
		return nil, err
	}
	s.mu.Unlock()
	w := watch.NewFakeWithChanSize(10, false)
	s.watches <- w
	return w, nil
}

func (s *fakeServer) list(ctx context.Context) (string, []runtime.Object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lists++
	return s.listRV, s.listItems, nil
}

func (s *fakeServer) rvs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.watchRVs...)
}

func fakePod(name, rv string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ci", ResourceVersion: rv, UID: types.UID("uid-" + name)}}
}

func (s *fakeServer) next(t *testing.T) *watch.FakeWatcher {
	t.Helper()
	select {
	case w := <-s.watches:
		return w
	case <-time.After(5 * time.Second):
		t.Fatal("no watch was started")
		return nil
	}
}

func receive(t *testing.T, w *resumingWatch) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
		return watch.Event{}
	}
}

func startFake(t *testing.T, s *fakeServer, replay bool) (*resumingWatch, *[]string) {
	var mu sync.Mutex
	var notes []string
	w := &resumingWatch{what: "pods", list: s.list, watch: s.watch, replay: replay, minPause: time.Millisecond, maxPause: 5 * time.Millisecond,
		onAway: func(what string, away time.Duration, err error) {
			mu.Lock()
			notes = append(notes, "away: "+err.Error())
			mu.Unlock()
		},
		onBack: func(what string, away time.Duration) {
			mu.Lock()
			notes = append(notes, "back")
			mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	startResumingWatch(ctx, w, "10")
	t.Cleanup(w.Stop)
	return w, &notes
}

func TestResumingWatchResumesFromLastVersionAfterClose(t *testing.T) {
	s := newFakeServer()
	w, _ := startFake(t, s, false)
	first := s.next(t)
	first.Add(fakePod("a", "11"))
	if ev := receive(t, w); ev.Type != watch.Added {
		t.Fatalf("got %v", ev.Type)
	}
	first.Stop() // the API server closed the watch
	second := s.next(t)
	second.Modify(fakePod("a", "12"))
	if ev := receive(t, w); ev.Type != watch.Modified || ev.Object.(*corev1.Pod).ResourceVersion != "12" {
		t.Fatalf("got %v %v", ev.Type, ev.Object)
	}
	if got := s.rvs(); len(got) != 2 || got[0] != "10" || got[1] != "11" {
		t.Errorf("watched from %v, want [10 11]", got)
	}
}

func TestResumingWatchResumesAfterBrokenStream(t *testing.T) {
	s := newFakeServer()
	w, _ := startFake(t, s, false)
	first := s.next(t)
	first.Add(fakePod("a", "11"))
	receive(t, w)
	// What client-go's stream watcher sends when a connection is reset under it.
	first.Error(&apierrors.NewInternalError(errors.New("unable to decode an event from the watch stream: connection reset by peer")).ErrStatus)
	second := s.next(t)
	second.Modify(fakePod("a", "13"))
	if ev := receive(t, w); ev.Type != watch.Modified {
		t.Fatalf("got %v, want the next change, not the error", ev.Type)
	}
	if got := s.rvs(); got[len(got)-1] != "11" {
		t.Errorf("watched again from %v, want 11", got)
	}
}

func TestResumingWatchReportsAbsenceAndReturn(t *testing.T) {
	s := newFakeServer()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	s.watchErrs = []error{refused, refused, refused}
	w, notes := startFake(t, s, false)
	first := s.next(t)
	first.Add(fakePod("a", "11"))
	receive(t, w)
	if since, _ := w.Away(); !since.IsZero() {
		t.Errorf("Away() = %v after the API server answered, want zero", since)
	}
	w.Stop()
	for range w.ResultChan() {
	}
	if len(*notes) != 2 || (*notes)[0] != "away: dial tcp: connection refused" || (*notes)[1] != "back" {
		t.Errorf("notes %q, want one away (the reminder is later) and one back", *notes)
	}
}

func TestResumingWatchRelistsOnGoneAndReplays(t *testing.T) {
	s := newFakeServer()
	w, _ := startFake(t, s, true)
	first := s.next(t)
	first.Add(fakePod("a", "11"))
	first.Add(fakePod("b", "12"))
	receive(t, w)
	receive(t, w)
	s.mu.Lock()
	s.listRV = "20"
	s.listItems = []runtime.Object{fakePod("a", "19")} // b went while nobody watched
	s.mu.Unlock()
	first.Error(&apierrors.NewResourceExpired("too old resource version: 12 (15)").ErrStatus)
	got := map[string]watch.EventType{}
	for range 2 {
		ev := receive(t, w)
		got[ev.Object.(*corev1.Pod).Name] = ev.Type
	}
	if got["a"] != watch.Modified || got["b"] != watch.Deleted {
		t.Errorf("replayed %v, want a Modified and b Deleted", got)
	}
	s.next(t)
	if rvs := s.rvs(); rvs[len(rvs)-1] != "20" {
		t.Errorf("watched again from %v, want the re-list's 20", rvs)
	}
}

func TestResumingWatchRelistsWhenWatchCallIsGone(t *testing.T) {
	s := newFakeServer()
	s.listRV = "30"
	s.watchErrs = []error{apierrors.NewGone("too old")}
	startFake(t, s, false)
	s.next(t)
	if rvs := s.rvs(); len(rvs) != 2 || rvs[1] != "30" {
		t.Errorf("watched from %v, want [10 30]", rvs)
	}
}

func TestResumingWatchEndsOnForbidden(t *testing.T) {
	s := newFakeServer()
	s.watchErrs = []error{apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("no"))}
	w, _ := startFake(t, s, false)
	ev := receive(t, w)
	if ev.Type != watch.Error || !apierrors.IsForbidden(apierrors.FromObject(ev.Object)) {
		t.Fatalf("got %v %v, want a Forbidden error event", ev.Type, ev.Object)
	}
	if _, ok := <-w.ResultChan(); ok {
		t.Error("watch still open after a refusal retrying cannot fix")
	}
}

// A deadline that passes while the API server is away is reported as the API server's absence,
// with how long it has lasted, not as builders that failed to start.
func TestTimeoutWhileAPIServerAwayNamesTheAPIServer(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	pw := &resumingWatch{awaySince: now.Add(-12 * time.Second), awayErr: errors.New("dial tcp 10.0.0.1:6443: connect: connection refused")}
	w := &builderWaiter{
		p:         &Provisioner{Now: func() time.Time { return now }},
		plan:      Plan{Options: Options{ReadinessTimeout: time.Minute}},
		podWatch:  pw,
		builders:  []Builder{{Pod: "buildkit-x-amd64"}},
		lastState: []string{"Pending, on node-1"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-ctx.Done()
	msg := w.timeoutError(ctx).Error()
	for _, want := range []string{"the API server has not answered for 12.0s", "connection refused", "last known state", "Pending, on node-1"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
}
