package k8sprov

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

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
	// Warning receives what makes a job slower but does not fail it (a cache volume it could not
	// use); nil sends it to Progress.
	Warning func(string)
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
	// Cache says, per platform, which cache volume its builder uses and why, or why it is cold;
	// empty when the cache is off.
	Cache []CacheChoice
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

// Provision creates the plan's Secret and pods, waits until every builder answers ListWorkers
// over mutual TLS with its platform, and returns them. Objects of the same job key left by an
// earlier, killed attempt are replaced. On any failure it removes what it created.
//
// The plan comes from NewPlan, which validated its options; Provision does not check them again.
func (p *Provisioner) Provision(ctx context.Context, plan Plan) (*Result, error) {
	if plan.Options.Cache.Mode != CacheVolume {
		return p.provisionOnce(ctx, plan, plan.Options.ReadinessTimeout)
	}
	choices := p.claimCacheVolumes(ctx, plan)
	plan.CacheVolumes = map[platform.Platform]string{}
	for _, c := range choices {
		p.progress(ProgressStep, c.Platform, "", "cache: %s", c.Why)
		if c.Volume != "" {
			plan.CacheVolumes[c.Platform] = c.Volume
		}
	}
	if len(plan.CacheVolumes) == 0 {
		result, err := p.provisionOnce(ctx, plan, plan.Options.ReadinessTimeout)
		if result != nil {
			result.Cache = choices
		}
		return result, err
	}
	// A volume that cannot be attached in a short bound, or on which buildkitd fails, must not
	// make the job slower than a cold builder by more than that bound.
	bound := min(plan.Options.ReadinessTimeout, plan.Options.Cache.AttachTimeout)
	result, err := p.provisionOnce(ctx, plan, bound)
	if err == nil {
		result.Cache = choices
		return result, nil
	}
	if ctx.Err() != nil || !cacheMayBeTheCause(err) {
		return nil, err
	}
	reason := err.Error() + p.dropFailedCacheVolumes(ctx, plan, err)
	p.warn(fmt.Sprintf("cache: the builders on cache volumes did not start within %s, going on with cold builders: %s", bound, reason))
	for i := range choices {
		if choices[i].Volume != "" {
			choices[i] = CacheChoice{Platform: choices[i].Platform, Why: "cold builder: its cache volume failed: " + reason}
		}
	}
	plan.CacheVolumes = nil
	result, err = p.provisionOnce(ctx, plan, plan.Options.ReadinessTimeout)
	if result != nil {
		result.Cache = choices
	}
	return result, err
}

// dropFailedCacheVolumes removes from the pool the cache volumes of a failed start that are of no
// use to a later job: one buildkitd exited on (damaged), and one that never bound to storage (no
// data on it to lose; a wrong StorageClass would fail every job that claims it). A volume that
// was only slow to attach is kept. It returns what it did, for the warning.
func (p *Provisioner) dropFailedCacheVolumes(ctx context.Context, plan Plan, err error) string {
	var be *BuilderError
	exited := errors.As(err, &be) && be.Reason == "ContainerExited"
	var notes string
	for _, pl := range plan.Platforms {
		name := plan.CacheVolumes[pl]
		if name == "" {
			continue
		}
		why := ""
		if exited && be.Platform == pl {
			why = "is damaged"
		} else if pvc, gerr := p.Client.CoreV1().PersistentVolumeClaims(plan.Namespace).Get(ctx, name, metav1.GetOptions{}); gerr == nil && pvc.Status.Phase != corev1.ClaimBound {
			why = "never bound to storage (" + string(pvc.Status.Phase) + ")"
		}
		if why == "" {
			continue
		}
		if derr := p.dropCacheVolume(ctx, plan.Namespace, name); derr != nil {
			notes += fmt.Sprintf("; cache volume %s %s, and removing it failed: %v", name, why, derr)
		} else {
			notes += fmt.Sprintf("; cache volume %s %s and was removed from the pool", name, why)
		}
	}
	return notes
}

// cacheMayBeTheCause says whether a failed start on cache volumes is worth a cold retry: not
// when the image cannot be pulled or Pod Security, a quota or a LimitRange refuses the pod,
// which a cold builder shares. A refusal by RBAC or an admission policy is retried cold: a
// policy that does not allow volumes (deploy/admission-policy.yaml does not yet) refuses only
// the cached pod.
func cacheMayBeTheCause(err error) bool {
	var be *BuilderError
	if errors.As(err, &be) {
		return !fatalWaitingReasons[be.Reason]
	}
	var pse *PodSecurityError
	var qe *QuotaError
	var lre *LimitRangeError
	return !errors.As(err, &pse) && !errors.As(err, &qe) && !errors.As(err, &lre)
}

func (p *Provisioner) warn(msg string) {
	if p.Warning != nil {
		p.Warning(msg)
		return
	}
	p.progress(ProgressStep, platform.Platform{}, "", "warning: %s", msg)
}

// provisionOnce is one attempt of Provision, bounded by timeout.
func (p *Provisioner) provisionOnce(ctx context.Context, plan Plan, timeout time.Duration) (result *Result, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	if plan.SecretSlotOffset, err = p.replaceLeftovers(ctx, plan); err != nil {
		return nil, err
	}
	objs, err := renderObjects(plan)
	if err != nil {
		return nil, err
	}
	var createdSecret ObjectRef
	defer func() {
		if err != nil {
			err = p.rollback(ctx, plan, createdSecret, err)
		}
	}()

	// Watch from before the first create, so no transition is missed.
	w, err := p.startWaiting(ctx, plan, objs.tlsConfig)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	if createdSecret, err = p.createSecret(ctx, plan, objs.secret); err != nil {
		return nil, err
	}
	w.created(p.now())
	created, err := p.createPods(ctx, plan.Namespace, objs.pods)
	if err != nil {
		return nil, err
	}
	if err := p.recordHolders(ctx, plan, created); err != nil {
		// The claims still hold their slots for cacheClaimGrace, and RWOP keeps a second pod
		// off the volumes; a job is not failed for it.
		p.warn(fmt.Sprintf("cache: %v", err))
	}
	builders, err := w.wait(ctx)
	if err != nil {
		return nil, err
	}
	return &Result{Plan: plan, Credentials: objs.creds, Builders: builders, Secret: createdSecret}, nil
}

// jobObjects are a job's rendered objects and the client side of its credentials.
type jobObjects struct {
	creds     *Credentials
	tlsConfig *tls.Config
	secret    *corev1.Secret
	pods      []*corev1.Pod
}

// renderObjects issues the job's credentials and renders its Secret and one pod per platform.
func renderObjects(plan Plan) (jobObjects, error) {
	var objs jobObjects
	var err error
	if objs.creds, err = IssueCredentials(plan); err != nil {
		return objs, err
	}
	if objs.tlsConfig, err = objs.creds.ClientTLSConfig(); err != nil {
		return objs, err
	}
	if objs.secret, err = RenderSecret(plan, objs.creds); err != nil {
		return objs, err
	}
	objs.pods = make([]*corev1.Pod, len(plan.Platforms))
	for i, pl := range plan.Platforms {
		if objs.pods[i], err = RenderPod(plan, pl); err != nil {
			return objs, err
		}
	}
	return objs, nil
}

// createSecret creates the job's Secret and tells SecretCreated. It returns the Secret it
// created also when SecretCreated failed, so that the rollback deletes it.
func (p *Provisioner) createSecret(ctx context.Context, plan Plan, secret *corev1.Secret) (ObjectRef, error) {
	ns := plan.Namespace
	created, err := p.Client.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{})
	if err != nil {
		return ObjectRef{}, explainAPIError(err, "create", "secrets", ns, "creating the builders' TLS Secret")
	}
	ref := ObjectRef{Name: created.Name, UID: created.UID}
	if p.SecretCreated != nil {
		if err := p.SecretCreated(ref); err != nil {
			return ref, err
		}
	}
	return ref, nil
}

// createPods creates the builder pods in parallel and returns them as created.
func (p *Provisioner) createPods(ctx context.Context, ns string, pods []*corev1.Pod) ([]*corev1.Pod, error) {
	var wg sync.WaitGroup
	errs := make([]error, len(pods))
	created := make([]*corev1.Pod, len(pods))
	for i, pod := range pods {
		wg.Go(func() {
			var err error
			created[i], err = p.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			errs[i] = explainAPIError(err, "create", "pods", ns, "creating builder pod "+pod.Name)
		})
	}
	wg.Wait()
	return created, errors.Join(errs...)
}

// rollback removes what a failed Provision created and returns err with any problem doing so.
func (p *Provisioner) rollback(ctx context.Context, plan Plan, secret ObjectRef, err error) error {
	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, terr := p.Teardown(cleanupCtx, plan.Namespace, plan.Key, plan.Owner, TeardownOptions{Secrets: []ObjectRef{secret}}); terr != nil {
		return errors.Join(err, fmt.Errorf("removing the failed job's builders: %w", terr))
	}
	return err
}

// replaceLeftovers removes what an earlier attempt of the same job left behind (its provisioning
// was killed), so this attempt starts clean, and returns the Secret slot offset that keeps this
// attempt's Secret name off every name those pods mount. Their CA key died with that attempt, so
// they cannot be reused. Pods are deleted with no grace period: no build can be running on a
// builder whose client never got its credentials. The earlier attempt's Secret is deleted by
// name, whether or not the caller recorded it (EarlierSecrets): its name is one of the job key's
// SecretNames, and the runners' Role may delete Secrets but not read them.
func (p *Provisioner) replaceLeftovers(ctx context.Context, plan Plan) (int, error) {
	ns := plan.Namespace
	pods, err := p.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if err != nil {
		return 0, explainAPIError(err, "list", "pods", ns, "looking for builders of an earlier attempt")
	}
	offset := secretSlotOffset(plan.Key, plan.CreatedAt, pods.Items)
	if len(pods.Items) > 0 || len(p.EarlierSecrets) > 0 {
		p.progress(ProgressStep, platform.Platform{}, "", "replacing %d pod(s) and %d recorded Secret(s) left by an earlier attempt of this job", len(pods.Items), len(p.EarlierSecrets))
	}
	// Any owner: a retry may run in a new runner pod, and the job key alone says these are ours.
	report, err := p.Teardown(ctx, ns, plan.Key, nil, TeardownOptions{GracePeriod: ptr.To[int64](0), Wait: true, Secrets: p.EarlierSecrets})
	if len(pods.Items) == 0 && len(p.EarlierSecrets) == 0 && len(report.Deleted) > 0 {
		p.progress(ProgressStep, platform.Platform{}, "", "removed %v left by an earlier attempt of this job", report.Deleted)
	}
	return offset, err
}
