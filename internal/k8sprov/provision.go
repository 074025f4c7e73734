package k8sprov

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"regexp"
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
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/pki"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Provisioner creates one job's builders, waits for them by watching, proves each answers over
// mutual TLS, diagnoses failures with Kubernetes' own reasons, and removes what it created.
type Provisioner struct {
	Client kubernetes.Interface
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Progress receives live progress (pod phase changes, events); nil discards.
	Progress func(Progress)
	// Verify asks a builder for its workers; nil means ListWorkers over mutual TLS.
	Verify func(ctx context.Context, endpoint string, tlsConfig *tls.Config) (WorkerReport, error)
	// VerifyInterval is the pause between attempts to reach a running builder; zero means 100ms.
	VerifyInterval time.Duration
	// SecretCreated, when set, learns the job's TLS Secret the moment it exists, so the caller
	// can record it for a cleanup that may come after this process was killed: the runners'
	// Role cannot read Secrets, so nothing could find it again.
	SecretCreated func(ObjectRef) error
	// EarlierSecrets are Secrets an earlier, killed attempt of the same job recorded; Provision
	// deletes them with that attempt's pods.
	EarlierSecrets []ObjectRef
}

// Progress is one line of live progress about a builder.
type Progress struct {
	Platform platform.Platform
	Pod      string
	Message  string
	At       time.Time
}

// Builder is one provisioned, verified builder.
type Builder struct {
	Platform        platform.Platform
	Pod             string
	Node            string
	Endpoint        string
	ServerName      string
	BuildkitVersion string
	WorkerPlatforms []ocispec.Platform
	// Timestamps as this process observed them.
	Created, Scheduled, Started, Ready time.Time
}

// Result is a provisioned job: its plan, its client credentials and one builder per platform in
// the plan's order.
type Result struct {
	Plan        Plan
	Credentials *Credentials
	Builders    []Builder
	// Secret is the job's TLS Secret, for TeardownOptions.Secrets.
	Secret ObjectRef
}

// BuilderError is a builder that cannot become ready, with the reason Kubernetes gives.
type BuilderError struct {
	Platform platform.Platform
	Pod      string
	// Reason is a short cause: Unschedulable, ErrImagePull, CrashLoop, DeadlineExceeded, ...
	Reason  string
	Message string
	// Logs holds buildkitd's last log lines when the container ran.
	Logs string
}

func (e *BuilderError) Error() string {
	msg := fmt.Sprintf("builder for %s (pod %s): %s: %s", e.Platform, e.Pod, e.Reason, e.Message)
	if e.Logs != "" {
		msg += "\nlast buildkitd log lines:\n" + e.Logs
	}
	return msg
}

func (p *Provisioner) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Provisioner) progress(pl platform.Platform, pod, format string, args ...any) {
	if p.Progress != nil {
		p.Progress(Progress{Platform: pl, Pod: pod, Message: fmt.Sprintf(format, args...), At: p.now()})
	}
}

// fatalWaitingReasons are container states that will not fix themselves within a CI job's
// patience; ErrImagePull is included because an image that failed once here is missing or
// forbidden far more often than flaky.
var fatalWaitingReasons = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
	"CrashLoopBackOff": true,
}

// Provision creates the plan's Secret and pods, waits until every builder answers ListWorkers
// over mutual TLS with its platform, and returns them. Objects of the same job key left by an
// earlier, killed attempt are replaced. On any failure it removes what it created.
func (p *Provisioner) Provision(ctx context.Context, plan Plan) (result *Result, err error) {
	ns := plan.Namespace
	timeout := plan.Options.ReadinessTimeout
	if timeout <= 0 {
		timeout = DefaultReadinessTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	if err := p.replaceLeftovers(ctx, plan); err != nil {
		return nil, err
	}
	creds, err := IssueCredentials(plan)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := creds.ClientTLSConfig()
	if err != nil {
		return nil, err
	}
	secret, err := RenderSecret(plan, creds)
	if err != nil {
		return nil, err
	}
	pods := make([]*corev1.Pod, len(plan.Platforms))
	for i, pl := range plan.Platforms {
		if pods[i], err = RenderPod(plan, pl); err != nil {
			return nil, err
		}
	}
	var createdSecret ObjectRef
	defer func() {
		if err != nil {
			cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, terr := p.Teardown(cleanupCtx, ns, plan.Key, plan.Owner, TeardownOptions{Secrets: []ObjectRef{createdSecret}}); terr != nil {
				err = errors.Join(err, fmt.Errorf("removing the failed job's builders: %w", terr))
			}
		}
	}()

	// Watch from before the first create, so no transition is missed.
	podList, err := p.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if err != nil {
		return nil, explainAPIError(err, "list", "pods", ns, "listing builder pods")
	}
	podWatch, err := p.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key), ResourceVersion: podList.ResourceVersion})
	if err != nil {
		return nil, explainAPIError(err, "watch", "pods", ns, "watching builder pods")
	}
	defer podWatch.Stop()
	eventWatch, err := p.watchEvents(ctx, ns)
	if err != nil {
		return nil, err
	}
	if eventWatch != nil {
		defer eventWatch.Stop()
	}

	created, err := p.Client.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{})
	if err != nil {
		return nil, explainAPIError(err, "create", "secrets", ns, "creating the builders' TLS Secret")
	}
	createdSecret = ObjectRef{Name: created.Name, UID: created.UID}
	if p.SecretCreated != nil {
		if err := p.SecretCreated(createdSecret); err != nil {
			return nil, err
		}
	}
	builders := make([]Builder, len(plan.Platforms))
	byPod := map[string]int{}
	var wg sync.WaitGroup
	createErrs := make([]error, len(pods))
	for i, pod := range pods {
		byPod[pod.Name] = i
		builders[i] = Builder{Platform: plan.Platforms[i], Pod: pod.Name, ServerName: pki.ServerName, Created: p.now()}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			createErrs[i] = explainAPIError(err, "create", "pods", ns, "creating builder pod "+pod.Name)
		}()
	}
	wg.Wait()
	if err := errors.Join(createErrs...); err != nil {
		return nil, err
	}

	type verified struct {
		index  int
		report WorkerReport
		err    error
	}
	verifiedCh := make(chan verified, len(pods))
	verifying := make([]bool, len(pods))
	ready := 0
	lastState := make([]string, len(pods))
	var eventCh <-chan watch.Event
	if eventWatch != nil {
		eventCh = eventWatch.ResultChan()
	}
	scaleUp := map[string]bool{}
	var verifyErrs sync.Map // pod name -> last error reaching the builder, for the timeout message
	for ready < len(pods) {
		select {
		case <-ctx.Done():
			for i, b := range builders {
				if v, ok := verifyErrs.Load(b.Pod); ok && b.Ready.IsZero() {
					lastState[i] += fmt.Sprintf(" (last attempt to reach buildkitd: %v)", v)
				}
			}
			return nil, p.timeoutError(ctx, plan, builders, lastState)
		case v := <-verifiedCh:
			b := &builders[v.index]
			if v.err != nil {
				return nil, &BuilderError{Platform: b.Platform, Pod: b.Pod, Reason: "WrongPlatform", Message: v.err.Error()}
			}
			b.BuildkitVersion = v.report.BuildkitVersion
			b.WorkerPlatforms = v.report.Platforms
			b.Ready = p.now()
			ready++
			p.progress(b.Platform, b.Pod, "ready: BuildKit %s on %s at %s", b.BuildkitVersion, b.Node, b.Endpoint)
		case ev, ok := <-eventCh:
			if !ok {
				eventCh = nil
				continue
			}
			event, isEvent := ev.Object.(*corev1.Event)
			if !isEvent || event.InvolvedObject.Kind != "Pod" {
				continue
			}
			i, ours := byPod[event.InvolvedObject.Name]
			if !ours {
				continue
			}
			b := &builders[i]
			p.progress(b.Platform, b.Pod, "event %s: %s", event.Reason, event.Message)
			if event.Reason == "TriggeredScaleUp" {
				// A cluster autoscaler is adding a node: unschedulable is then only a phase.
				scaleUp[b.Pod] = true
			}
		case ev, ok := <-podWatch.ResultChan():
			if !ok {
				return nil, fmt.Errorf("watch on builder pods closed unexpectedly")
			}
			if ev.Type == watch.Error {
				return nil, fmt.Errorf("watching builder pods: %v", apierrors.FromObject(ev.Object))
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				continue
			}
			i, ours := byPod[pod.Name]
			if !ours {
				continue
			}
			b := &builders[i]
			if ev.Type == watch.Deleted || pod.DeletionTimestamp != nil {
				return nil, p.deletedError(ctx, plan, b)
			}
			state := describePod(pod)
			if state != lastState[i] {
				lastState[i] = state
				p.progress(b.Platform, b.Pod, "%s", state)
			}
			p.observeTimes(b, pod)
			if berr := p.diagnose(ctx, pod, b, scaleUp[b.Pod]); berr != nil {
				return nil, berr
			}
			if !verifying[i] && pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" && containerStarted(pod) {
				verifying[i] = true
				b.Endpoint = Endpoint(pod.Status.PodIP)
				b.Node = pod.Spec.NodeName
				go func(i int, pl platform.Platform, endpoint string) {
					report, err := p.verifyUntilAnswer(ctx, endpoint, tlsConfig, func(err error) { verifyErrs.Store(pods[i].Name, err) })
					if err == nil && !pl.ServedBy(report.Platforms) {
						err = fmt.Errorf("BuildKit at %s reports platforms %s, not %s: the node selector for %s picked a node of another architecture",
							endpoint, formatOCIPlatforms(report.Platforms), pl, pl)
					}
					if err != nil && ctx.Err() != nil {
						return // the main loop reports the timeout
					}
					verifiedCh <- verified{index: i, report: report, err: err}
				}(i, b.Platform, b.Endpoint)
			}
		}
	}
	return &Result{Plan: plan, Credentials: creds, Builders: builders, Secret: createdSecret}, nil
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

func (p *Provisioner) watchEvents(ctx context.Context, ns string) (watch.Interface, error) {
	selector := fields.OneTermEqualSelector("involvedObject.kind", "Pod").String()
	list, err := p.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: selector, Limit: 1})
	if err != nil {
		return nil, explainAPIError(err, "list", "events", ns, "listing events")
	}
	w, err := p.Client.CoreV1().Events(ns).Watch(ctx, metav1.ListOptions{FieldSelector: selector, ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, explainAPIError(err, "watch", "events", ns, "watching events")
	}
	return w, nil
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
			return berr("Unschedulable", cond.Message)
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

// lastLogLines fetches the tail of buildkitd's log, condensed by summarizeLog; failure to read
// it is reported in its place.
func (p *Provisioner) lastLogLines(ctx context.Context, ns, pod string, lines int64) string {
	logCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// Read more than is shown: the line that explains a crash (a usage error) is often followed by
	// pages of help text.
	fetch := lines * 10
	data, err := p.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: ContainerName, TailLines: &fetch}).DoRaw(logCtx)
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", explainAPIError(err, "get", "pods/log", ns, "reading buildkitd's log"))
	}
	return summarizeLog(string(data), int(lines))
}

// errorLine matches log lines that usually say why a process died.
var errorLine = regexp.MustCompile(`(?i)(error|fatal|panic|incorrect usage|not defined|failed)`)

// summarizeLog keeps the last n lines of log and, before them, up to 10 earlier lines that look
// like the reason (errors, usage complaints), so the cause is not lost behind help text.
func summarizeLog(log string, n int) string {
	all := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(all) <= n {
		return strings.Join(all, "\n")
	}
	head, tail := all[:len(all)-n], all[len(all)-n:]
	var reasons []string
	for _, line := range head {
		if errorLine.MatchString(line) && len(reasons) < 10 {
			reasons = append(reasons, line)
		}
	}
	if len(reasons) == 0 {
		return strings.Join(tail, "\n")
	}
	return strings.Join(reasons, "\n") + "\n[...]\n" + strings.Join(tail, "\n")
}

// LastLogLines returns the last lines of a builder's buildkitd log, for post steps that show
// them when a job failed.
func (p *Provisioner) LastLogLines(ctx context.Context, ns, pod string, lines int64) string {
	return p.lastLogLines(ctx, ns, pod, lines)
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

func (p *Provisioner) timeoutError(ctx context.Context, plan Plan, builders []Builder, lastState []string) error {
	why := fmt.Sprintf("not ready within the readiness timeout (%s)", plan.Options.ReadinessTimeout)
	if errors.Is(ctx.Err(), context.Canceled) {
		// The caller gave up (a cancelled job), not the timeout.
		why = "cancelled while starting"
	}
	var lines []string
	for i, b := range builders {
		if !b.Ready.IsZero() {
			continue
		}
		state := lastState[i]
		if state == "" {
			state = "no status yet"
		}
		lines = append(lines, fmt.Sprintf("%s (pod %s): %s", b.Platform, b.Pod, state))
	}
	return fmt.Errorf("builders %s: %s: %w", why, strings.Join(lines, "; "), ctx.Err())
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

// replaceLeftovers removes the pods an earlier attempt of the same job left behind (its
// provisioning was killed), so this attempt starts clean. Their CA key died with that attempt,
// so they cannot be reused. Pods are deleted with no grace period: no build can be running on a
// builder whose client never got its credentials. The earlier attempt's Secret has a name of its
// own and the runners' Role may not read Secrets: it is deleted when the caller recorded it
// (EarlierSecrets), and otherwise goes with its owner (the runner pod), at its deadline, or
// through the janitor.
func (p *Provisioner) replaceLeftovers(ctx context.Context, plan Plan) error {
	ns := plan.Namespace
	pods, err := p.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if err != nil {
		return explainAPIError(err, "list", "pods", ns, "looking for builders of an earlier attempt")
	}
	if len(pods.Items) == 0 && len(p.EarlierSecrets) == 0 {
		return nil
	}
	p.progress(platform.Platform{}, "", "replacing %d pod(s) and %d recorded Secret(s) left by an earlier attempt of this job", len(pods.Items), len(p.EarlierSecrets))
	// Any owner: a retry may run in a new runner pod, and the job key alone says these are ours.
	_, err = p.Teardown(ctx, ns, plan.Key, nil, TeardownOptions{GracePeriod: ptr.To[int64](0), Wait: true, Secrets: p.EarlierSecrets})
	return err
}
