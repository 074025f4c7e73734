package k8sprov

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/org/setup-ephemeral-buildkit/internal/pki"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// builderWaiter follows one job's builder pods, from before they are created until each answers
// over mutual TLS: it turns pod changes and events into progress, diagnoses pods that will not
// become ready, and starts verifying each builder once its container runs.
type builderWaiter struct {
	p          *Provisioner
	plan       Plan
	tlsConfig  *tls.Config
	podWatch   *resumingWatch
	eventWatch *resumingWatch

	builders  []Builder
	byPod     map[string]int
	lastState []string
	verifying []bool
	ready     int
	// scaleUp marks pods a cluster autoscaler is adding a node for.
	scaleUp    map[string]bool
	verifiedCh chan verified
	// verifyErrs holds, per pod name, the last error reaching the builder, for the timeout message.
	verifyErrs sync.Map
}

// verified is the outcome of verifying builder index.
type verified struct {
	index  int
	report WorkerReport
	err    error
}

// startWaiting lists the job's pods and starts watching them and the namespace's pod events,
// before anything is created, so no transition is missed.
func (p *Provisioner) startWaiting(ctx context.Context, plan Plan, tlsConfig *tls.Config) (*builderWaiter, error) {
	podWatch, err := p.watchPods(ctx, plan.Namespace, plan.Key, "builder pods")
	if err != nil {
		return nil, err
	}
	eventWatch, err := p.watchEvents(ctx, plan.Namespace)
	if err != nil {
		podWatch.Stop()
		return nil, err
	}
	n := len(plan.Platforms)
	w := &builderWaiter{
		p: p, plan: plan, tlsConfig: tlsConfig, podWatch: podWatch, eventWatch: eventWatch,
		builders: make([]Builder, n), byPod: map[string]int{}, lastState: make([]string, n),
		verifying: make([]bool, n), scaleUp: map[string]bool{}, verifiedCh: make(chan verified, n),
	}
	for i, pl := range plan.Platforms {
		name := plan.PodName(pl)
		w.byPod[name] = i
		w.builders[i] = Builder{Platform: pl, Pod: name, ServerName: pki.ServerName}
	}
	return w, nil
}

// watchPods lists job key's pods in ns and returns a watch of them from that list on, which
// survives closed watches and an API server that goes away (resumingWatch).
func (p *Provisioner) watchPods(ctx context.Context, ns string, key JobKey, what string) (*resumingWatch, error) {
	pods := p.Client.CoreV1().Pods(ns)
	opts := metav1.ListOptions{LabelSelector: JobSelector(key)}
	list := func(ctx context.Context) (string, []runtime.Object, error) {
		l, err := pods.List(ctx, opts)
		if err != nil {
			return "", nil, err
		}
		items := make([]runtime.Object, len(l.Items))
		for i := range l.Items {
			items[i] = &l.Items[i]
		}
		return l.ResourceVersion, items, nil
	}
	var (
		rv      string
		initial []runtime.Object
	)
	err := retryTransient(ctx, func(ctx context.Context) (err error) {
		rv, initial, err = list(ctx)
		return err
	})
	if err != nil {
		return nil, explainAPIError(err, "list", "pods", ns, "listing "+what)
	}
	w := p.resumingWatch(what, list, func(ctx context.Context, rv string) (watch.Interface, error) {
		o := opts
		o.ResourceVersion = rv
		return pods.Watch(ctx, o)
	})
	w.replay = true
	for _, item := range initial {
		w.remember(watch.Event{Type: watch.Added, Object: item})
	}
	return startResumingWatch(ctx, w, rv), nil
}

// resumingWatch returns a resumingWatch that reports the API server's absences as progress.
func (p *Provisioner) resumingWatch(what string, list listFunc, watchFn watchFunc) *resumingWatch {
	return &resumingWatch{
		what: what, list: list, watch: watchFn, now: p.now,
		onAway: func(what string, away time.Duration, err error) {
			var urlErr *url.Error
			if errors.As(err, &urlErr) {
				err = urlErr.Err // the URL says nothing the user needs
			}
			if away == 0 {
				p.progress(ProgressAPIServer, platform.Platform{}, "", "the API server does not answer (%v); watching %s again as soon as it does", err, what)
				return
			}
			p.progress(ProgressAPIServer, platform.Platform{}, "", "the API server has not answered for %.1fs (%v); watching %s again as soon as it does",
				away.Seconds(), err, what)
		},
		onBack: func(what string, away time.Duration) {
			p.progress(ProgressAPIServer, platform.Platform{}, "", "the API server answers again after %.1fs; watching %s from where the watch broke", away.Seconds(), what)
		},
	}
}

// created records when the pods were created.
func (w *builderWaiter) created(at time.Time) {
	for i := range w.builders {
		w.builders[i].Created = at
	}
}

func (w *builderWaiter) stop() {
	w.podWatch.Stop()
	w.eventWatch.Stop()
}

// wait returns the builders once every one is verified, or the first reason one will not be.
func (w *builderWaiter) wait(ctx context.Context) ([]Builder, error) {
	eventCh := w.eventWatch.ResultChan()
	for w.ready < len(w.builders) {
		select {
		case <-ctx.Done():
			return nil, w.timeoutError(ctx)
		case v := <-w.verifiedCh:
			if err := w.onVerified(v); err != nil {
				return nil, err
			}
		case ev, ok := <-eventCh:
			if !ok {
				eventCh = nil // events only add detail
				continue
			}
			w.onEvent(ev)
		case ev, ok := <-w.podWatch.ResultChan():
			if !ok {
				// Closed only when ctx ends or after a fatal error event.
				return nil, w.timeoutError(ctx)
			}
			if err := w.onPod(ctx, ev); err != nil {
				return nil, err
			}
		}
	}
	return w.builders, nil
}

func (w *builderWaiter) onVerified(v verified) error {
	b := &w.builders[v.index]
	if v.err != nil {
		return &BuilderError{Platform: b.Platform, Pod: b.Pod, Reason: "WrongPlatform", Message: v.err.Error()}
	}
	b.BuildkitVersion = v.report.BuildkitVersion
	b.WorkerPlatforms = v.report.Platforms
	b.Ready = w.p.now()
	w.ready++
	w.p.progress(ProgressReady, b.Platform, b.Pod, "ready: BuildKit %s on %s at %s", b.BuildkitVersion, b.Node, b.Endpoint)
	return nil
}

func (w *builderWaiter) onEvent(ev watch.Event) {
	event, isEvent := ev.Object.(*corev1.Event)
	if !isEvent || event.InvolvedObject.Kind != "Pod" {
		return
	}
	i, ours := w.byPod[event.InvolvedObject.Name]
	if !ours {
		return
	}
	b := &w.builders[i]
	w.p.progress(ProgressEvent, b.Platform, b.Pod, "event %s: %s", event.Reason, event.Message)
	if event.Reason == "TriggeredScaleUp" {
		// A cluster autoscaler is adding a node: unschedulable is then only a phase.
		w.scaleUp[b.Pod] = true
	}
}

func (w *builderWaiter) onPod(ctx context.Context, ev watch.Event) error {
	if ev.Type == watch.Error {
		return explainAPIError(apierrors.FromObject(ev.Object), "watch", "pods", w.plan.Namespace, "watching builder pods")
	}
	pod, isPod := ev.Object.(*corev1.Pod)
	if !isPod {
		return nil
	}
	i, ours := w.byPod[pod.Name]
	if !ours {
		return nil
	}
	b := &w.builders[i]
	if ev.Type == watch.Deleted || pod.DeletionTimestamp != nil {
		return w.p.deletedError(ctx, w.plan, b)
	}
	if state := describePod(pod); state != w.lastState[i] {
		w.lastState[i] = state
		w.p.progress(ProgressPodState, b.Platform, b.Pod, "%s", state)
	}
	w.p.observeTimes(b, pod)
	if berr := w.p.diagnose(ctx, pod, b, w.scaleUp[b.Pod]); berr != nil {
		return berr
	}
	if !w.verifying[i] && pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" && containerStarted(pod) {
		w.verifying[i] = true
		b.Endpoint = Endpoint(pod.Status.PodIP)
		b.Node = pod.Spec.NodeName
		go w.verify(ctx, i, b.Platform, b.Endpoint)
	}
	return nil
}

// verify asks builder i until it answers, checks it serves its platform and reports on verifiedCh.
func (w *builderWaiter) verify(ctx context.Context, i int, pl platform.Platform, endpoint string) {
	pod := w.builders[i].Pod
	report, err := w.p.verifyUntilAnswer(ctx, endpoint, w.tlsConfig, func(err error) { w.verifyErrs.Store(pod, err) })
	if err == nil && !pl.ServedBy(report.Platforms) {
		err = fmt.Errorf("BuildKit at %s reports platforms %s, not %s: the node selector for %s picked a node of another architecture",
			endpoint, formatOCIPlatforms(report.Platforms), pl, pl)
	}
	if err != nil && ctx.Err() != nil {
		return // wait reports the timeout
	}
	w.verifiedCh <- verified{index: i, report: report, err: err}
}

// timeoutError explains a deadline or cancellation: what each builder not ready was doing.
func (w *builderWaiter) timeoutError(ctx context.Context) error {
	why := fmt.Sprintf("not ready within the readiness timeout (%s)", w.plan.Options.ReadinessTimeout)
	if errors.Is(ctx.Err(), context.Canceled) {
		// The caller gave up (a cancelled job), not the timeout.
		why = "cancelled while starting"
	}
	var lines []string
	for i, b := range w.builders {
		if !b.Ready.IsZero() {
			continue
		}
		state := w.lastState[i]
		if state == "" {
			state = "no status yet"
		}
		if v, ok := w.verifyErrs.Load(b.Pod); ok {
			state += fmt.Sprintf(" (last attempt to reach buildkitd: %v)", v)
		}
		lines = append(lines, fmt.Sprintf("%s (pod %s): %s", b.Platform, b.Pod, state))
	}
	if since, err := w.podWatch.Away(); !since.IsZero() {
		// What the builders did since is unknown: say so rather than blame them.
		return fmt.Errorf("builders %s: the API server has not answered for %.1fs (last error: %v); the builders' last known state: %s: %w",
			why, w.p.now().Sub(since).Seconds(), err, strings.Join(lines, "; "), ctx.Err())
	}
	return fmt.Errorf("builders %s: %s: %w", why, strings.Join(lines, "; "), ctx.Err())
}

// fatalWaitingReasons are container states that will not fix themselves within a CI job's
// patience; ErrImagePull is included because an image that failed once here is missing or
// forbidden far more often than flaky.
var fatalWaitingReasons = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
	"CrashLoopBackOff": true,
}

// verifyUntilAnswer calls ListWorkers until the builder answers or ctx ends. This polls the
// builder, not the API server: buildkitd opens its port about a second after the container
// starts, and there is no event for that.
func (p *Provisioner) verifyUntilAnswer(ctx context.Context, endpoint string, tlsConfig *tls.Config, failed func(error)) (WorkerReport, error) {
	verify := p.Verify
	if verify == nil {
		verify = ListWorkers
	}
	interval := p.VerifyInterval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		report, err := verify(attemptCtx, endpoint, tlsConfig)
		cancel()
		if err == nil {
			return report, nil
		}
		failed(err)
		select {
		case <-ctx.Done():
			return WorkerReport{}, fmt.Errorf("builder at %s never answered: %w", endpoint, err)
		case <-time.After(interval):
		}
	}
}

func (p *Provisioner) watchEvents(ctx context.Context, ns string) (*resumingWatch, error) {
	events := p.Client.CoreV1().Events(ns)
	selector := fields.OneTermEqualSelector("involvedObject.kind", "Pod").String()
	// Events are news, not state: a re-list only finds where to watch from.
	list := func(ctx context.Context) (string, []runtime.Object, error) {
		l, err := events.List(ctx, metav1.ListOptions{FieldSelector: selector, Limit: 1})
		if err != nil {
			return "", nil, err
		}
		return l.ResourceVersion, nil, nil
	}
	var rv string
	err := retryTransient(ctx, func(ctx context.Context) (err error) {
		rv, _, err = list(ctx)
		return err
	})
	if err != nil {
		return nil, explainAPIError(err, "list", "events", ns, "listing events")
	}
	w := p.resumingWatch("pod events", list, func(ctx context.Context, rv string) (watch.Interface, error) {
		return events.Watch(ctx, metav1.ListOptions{FieldSelector: selector, ResourceVersion: rv})
	})
	return startResumingWatch(ctx, w, rv), nil
}

func (p *Provisioner) observeTimes(b *Builder, pod *corev1.Pod) {
	now := p.now()
	if b.Scheduled.IsZero() && pod.Spec.NodeName != "" {
		b.Scheduled = now
		b.Node = pod.Spec.NodeName
	}
	if b.Started.IsZero() && containerStarted(pod) {
		b.Started = now
	}
}

// waitingForClaim says whether the scheduler refused pod only for a claim it mounts: a cache
// volume created a moment ago is "not found" until the scheduler's cache has it, and one waiting
// for its volume is unbound. The scheduler tries again by itself; the cache volume's attach
// bound, not this diagnosis, ends a wait that lasts.
func waitingForClaim(pod *corev1.Pod, schedulerMsg string) bool {
	if !strings.Contains(strings.ToLower(schedulerMsg), "persistentvolumeclaim") {
		return false
	}
	return slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.PersistentVolumeClaim != nil })
}

// claimProvisioningFailed returns why provisioning a claim pod mounts failed (the volume
// controller's ProvisioningFailed event, e.g. a StorageClass that does not exist), or "" while
// none has: such a claim never binds, and waiting for it would only delay the cold builder.
func (p *Provisioner) claimProvisioningFailed(ctx context.Context, pod *corev1.Pod) string {
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		selector := fields.Set{"involvedObject.kind": "PersistentVolumeClaim", "involvedObject.name": v.PersistentVolumeClaim.ClaimName,
			"reason": "ProvisioningFailed"}.AsSelector().String()
		events, err := p.Client.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil || len(events.Items) == 0 {
			continue
		}
		return fmt.Sprintf("claim %s: %s", v.PersistentVolumeClaim.ClaimName, events.Items[len(events.Items)-1].Message)
	}
	return ""
}

func containerStarted(pod *corev1.Pod) bool {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == ContainerName && cs.State.Running != nil {
			return true
		}
	}
	return false
}

// diagnose returns a BuilderError when the pod's status shows it will not become ready.
func (p *Provisioner) diagnose(ctx context.Context, pod *corev1.Pod, b *Builder, scalingUp bool) *BuilderError {
	berr := func(reason, message string) *BuilderError {
		return &BuilderError{Platform: b.Platform, Pod: pod.Name, Reason: reason, Message: message}
	}
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable && !scalingUp {
			if !waitingForClaim(pod, cond.Message) {
				return berr("Unschedulable", p.explainUnschedulable(ctx, pod, b.Platform, cond.Message))
			}
			if why := p.claimProvisioningFailed(ctx, pod); why != "" {
				return berr("Unschedulable", strings.TrimSuffix(strings.TrimSpace(cond.Message), ".")+"; "+why)
			}
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != ContainerName {
			continue
		}
		if w := cs.State.Waiting; w != nil && fatalWaitingReasons[w.Reason] {
			return berr(w.Reason, fmt.Sprintf("image %s: %s", cs.Image, w.Message))
		}
		if t := cs.State.Terminated; t != nil {
			e := berr("ContainerExited", fmt.Sprintf("buildkitd exited with code %d (%s) %s", t.ExitCode, t.Reason, strings.TrimSpace(t.Message)))
			e.Logs = p.lastLogLines(ctx, pod.Namespace, pod.Name, 20)
			return e
		}
	}
	if pod.Status.Phase == corev1.PodFailed {
		reason := pod.Status.Reason
		if reason == "" {
			reason = "Failed"
		}
		return berr(reason, pod.Status.Message)
	}
	return nil
}

// deletedError explains a builder deleted while it started. The usual cause is the garbage
// collector acting on an owner that is gone or has another UID.
func (p *Provisioner) deletedError(ctx context.Context, plan Plan, b *Builder) error {
	e := &BuilderError{Platform: b.Platform, Pod: b.Pod, Reason: "Deleted", Message: "the pod was deleted while starting"}
	if plan.Owner != nil {
		owner, err := p.Client.CoreV1().Pods(plan.Namespace).Get(ctx, plan.Owner.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			e.Message += fmt.Sprintf("; its owner, runner pod %s, no longer exists, so the garbage collector removed it", plan.Owner.Name)
		case err == nil && owner.UID != plan.Owner.UID:
			e.Message += fmt.Sprintf("; runner pod %s now has UID %s, not %s: the owner was replaced, so the garbage collector removed it",
				plan.Owner.Name, owner.UID, plan.Owner.UID)
		}
	}
	return e
}

// describePod is a one-line summary of a pod's progress.
func describePod(pod *corev1.Pod) string {
	parts := []string{string(pod.Status.Phase)}
	if pod.Spec.NodeName != "" {
		parts = append(parts, "on "+pod.Spec.NodeName)
	}
	if pod.Status.PodIP != "" {
		parts = append(parts, "ip "+pod.Status.PodIP)
	}
	for _, cs := range pod.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			parts = append(parts, "waiting: "+cs.State.Waiting.Reason)
		case cs.State.Running != nil:
			parts = append(parts, "running")
		case cs.State.Terminated != nil:
			parts = append(parts, fmt.Sprintf("terminated: %s (%d)", cs.State.Terminated.Reason, cs.State.Terminated.ExitCode))
		}
	}
	for _, cond := range pod.Status.Conditions {
		if cond.Status == corev1.ConditionFalse && cond.Reason != "" {
			parts = append(parts, fmt.Sprintf("%s=%s", cond.Type, cond.Reason))
		}
	}
	return strings.Join(parts, ", ")
}

func formatOCIPlatforms(ps []ocispec.Platform) string {
	var s []string
	for _, p := range ps {
		s = append(s, strings.Join(slices.DeleteFunc([]string{p.OS, p.Architecture, p.Variant}, func(x string) bool { return x == "" }), "/"))
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}
