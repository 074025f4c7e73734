package k8sprov

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// TeardownOptions tune Teardown.
type TeardownOptions struct {
	// Wait blocks until the pods are gone (their preStop hooks have run).
	Wait bool
	// Timeout bounds the whole teardown; zero means 60 seconds.
	Timeout time.Duration
	// GracePeriod overrides the pods' termination grace period; nil keeps theirs, so the preStop
	// hook can let running builds finish.
	GracePeriod *int64
	// Secrets are the job's TLS Secrets as Provision created them (Result.Secret), deleted by
	// name with their UID as precondition, without reading any Secret: the runners' Role grants
	// no read access to Secrets, which would expose every Secret in the runner namespace (other
	// runners' registration tokens among them) to the code of every CI job.
	Secrets []ObjectRef
	// ListSecrets finds the job's Secrets by label instead, and checks each before deleting it,
	// for callers whose Role may list Secrets (the janitor).
	ListSecrets bool
}

// ObjectRef names one object the provisioner created, by name and UID.
type ObjectRef struct {
	Name string
	UID  types.UID
}

// TeardownReport lists what Teardown deleted, what was already being deleted, and what it
// refused to touch, and why.
type TeardownReport struct {
	Deleted []string
	// Deleting are pods an earlier teardown (the provisioner's own rollback, a first cleanup,
	// the janitor) already deleted, still running their preStop drain. They are not deleted
	// again unless GracePeriod asks to shorten their grace.
	Deleting []string
	Skipped  []string
}

// Teardown deletes exactly the pods and Secret of one job key in ns. It lists the pods by the
// job-key label, then checks each again before deleting it: it must carry the managed-by label
// and that job key, and, when owner is given, an owner reference to that pod's UID. Secrets are
// deleted by name and UID as opts.Secrets gives them, or, with opts.ListSecrets, found and
// checked like the pods; then the job key's other SecretNames by name alone, so that a Secret
// whose attempt was killed before recording it goes too. Deletes are conditional on the object's UID, so an object replaced
// meanwhile is left alone. NotFound is success: teardown is safe to run twice, late, or after a
// crash.
func (p *Provisioner) Teardown(ctx context.Context, ns string, key JobKey, owner *RunnerPod, opts TeardownOptions) (TeardownReport, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var report TeardownReport
	deletedPods, err := p.deletePods(ctx, ns, key, owner, opts.GracePeriod, &report)
	if err != nil && deletedPods == nil {
		return report, err
	}
	errs := []error{err, p.deleteSecrets(ctx, ns, key, owner, opts, &report)}
	if opts.Wait && len(deletedPods) > 0 {
		errs = append(errs, p.waitPodsGone(ctx, ns, key, deletedPods))
	}
	return report, errors.Join(errs...)
}

// deletePods deletes the job's pods that refuseDelete allows and returns the UIDs of those
// deleted or already being deleted. It returns nil UIDs and the error when it cannot list them.
func (p *Provisioner) deletePods(ctx context.Context, ns string, key JobKey, owner *RunnerPod, grace *int64, report *TeardownReport) ([]types.UID, error) {
	var pods *corev1.PodList
	err := retryTransient(ctx, func(ctx context.Context) (err error) {
		pods, err = p.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(key)})
		return err
	})
	if err != nil {
		return nil, explainAPIError(err, "list", "pods", ns, "listing the job's builder pods")
	}
	deleted := []types.UID{}
	var errs []error
	for i := range pods.Items {
		pod := &pods.Items[i]
		if why := refuseDelete(pod, key, owner); why != "" {
			report.Skipped = append(report.Skipped, "pod/"+pod.Name+": "+why)
			continue
		}
		if pod.DeletionTimestamp != nil && grace == nil {
			report.Deleting = append(report.Deleting, "pod/"+pod.Name)
			deleted = append(deleted, pod.UID)
			continue
		}
		err := retryTransient(ctx, func(ctx context.Context) error {
			return p.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{
				Preconditions:      &metav1.Preconditions{UID: &pod.UID},
				GracePeriodSeconds: grace,
			})
		})
		switch {
		case err == nil:
			report.Deleted = append(report.Deleted, "pod/"+pod.Name)
			deleted = append(deleted, pod.UID)
		case apierrors.IsNotFound(err):
		case apierrors.IsConflict(err):
			report.Skipped = append(report.Skipped, "pod/"+pod.Name+": replaced by another object of that name")
		default:
			errs = append(errs, explainAPIError(err, "delete", "pods", ns, "deleting builder pod "+pod.Name))
		}
	}
	return deleted, errors.Join(errs...)
}

// deleteSecrets deletes the Secrets opts names, and with opts.ListSecrets those of the job that
// refuseDelete allows, each conditional on its UID; then any other of the job key's SecretNames,
// by name.
func (p *Provisioner) deleteSecrets(ctx context.Context, ns string, key JobKey, owner *RunnerPod, opts TeardownOptions, report *TeardownReport) error {
	var errs []error
	secrets := opts.Secrets
	if opts.ListSecrets {
		var list *corev1.SecretList
		err := retryTransient(ctx, func(ctx context.Context) (err error) {
			list, err = p.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(key)})
			return err
		})
		if err != nil {
			errs = append(errs, explainAPIError(err, "list", "secrets", ns, "listing the job's Secrets"))
			list = &corev1.SecretList{}
		}
		for i := range list.Items {
			secret := &list.Items[i]
			if why := refuseDelete(secret, key, owner); why != "" {
				report.Skipped = append(report.Skipped, "secret/"+secret.Name+": "+why)
				continue
			}
			secrets = append(secrets, ObjectRef{Name: secret.Name, UID: secret.UID})
		}
	}
	byUID := map[string]bool{}
	for _, secret := range secrets {
		if secret.Name == "" || secret.UID == "" {
			continue
		}
		byUID[secret.Name] = true
		err := retryTransient(ctx, func(ctx context.Context) error {
			return p.Client.CoreV1().Secrets(ns).Delete(ctx, secret.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &secret.UID}})
		})
		switch {
		case err == nil:
			report.Deleted = append(report.Deleted, "secret/"+secret.Name)
		case apierrors.IsNotFound(err):
		case apierrors.IsConflict(err):
			report.Skipped = append(report.Skipped, "secret/"+secret.Name+": replaced by another object of that name")
		default:
			errs = append(errs, explainAPIError(err, "delete", "secrets", ns, "deleting Secret "+secret.Name))
		}
	}
	// A Secret nobody recorded (its attempt was killed before saving its state) has one of the
	// job's few names.
	errs = append(errs, p.deleteSecretsByName(ctx, ns, key, byUID, report))
	return errors.Join(errs...)
}

// refuseDelete says why obj must not be deleted as part of job key's teardown, or "" if it may.
func refuseDelete(obj metav1.Object, key JobKey, owner *RunnerPod) string {
	if !IsManaged(obj) {
		return "not managed by setup-ephemeral-buildkit"
	}
	if got := obj.GetLabels()[LabelJobKey]; got != string(key) {
		return fmt.Sprintf("belongs to job %s", got)
	}
	if owner != nil {
		for _, ref := range obj.GetOwnerReferences() {
			if ref.Kind == "Pod" && ref.UID == owner.UID {
				return ""
			}
		}
		return fmt.Sprintf("not owned by runner pod %s (uid %s)", owner.Name, owner.UID)
	}
	return ""
}

// waitPodsGone watches until none of the given pods exists. The watch survives closed watches and
// an API server that goes away for a while (resumingWatch); only ctx ends the wait.
func (p *Provisioner) waitPodsGone(ctx context.Context, ns string, key JobKey, uids []types.UID) error {
	w, err := p.watchPods(ctx, ns, key, "builder pods (waiting for them to go)")
	if err != nil {
		return err
	}
	defer w.Stop()
	remaining := map[types.UID]bool{}
	present := map[types.UID]bool{}
	for _, obj := range w.knownSnapshot() {
		if pod, ok := obj.(*corev1.Pod); ok {
			present[pod.UID] = true
		}
	}
	for _, uid := range uids {
		if present[uid] {
			remaining[uid] = true
		}
	}
	for len(remaining) > 0 {
		select {
		case <-ctx.Done():
			return p.waitGoneError(ctx, w, len(remaining))
		case ev, ok := <-w.ResultChan():
			if !ok {
				return p.waitGoneError(ctx, w, len(remaining))
			}
			if ev.Type == watch.Error {
				return explainAPIError(apierrors.FromObject(ev.Object), "watch", "pods", ns, "waiting for builder pods to go")
			}
			if pod, isPod := ev.Object.(*corev1.Pod); isPod && ev.Type == watch.Deleted {
				delete(remaining, pod.UID)
			}
		}
	}
	return nil
}

// waitGoneError explains why n pods were not seen to go, naming an API server that is away.
func (p *Provisioner) waitGoneError(ctx context.Context, w *resumingWatch, n int) error {
	if since, err := w.Away(); !since.IsZero() {
		return fmt.Errorf("waiting for %d builder pod(s) to go: the API server has not answered for %.1fs (last error: %v): %w",
			n, p.now().Sub(since).Seconds(), err, ctx.Err())
	}
	return fmt.Errorf("waiting for %d builder pod(s) to go: %w", n, ctx.Err())
}
