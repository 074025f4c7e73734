package k8sprov

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// JobChecker answers whether the CI job behind a builder has finished, given the identity the
// builder's annotations record (JobFromAnnotations). Package jobstatus implements it with the
// GitHub and GitLab APIs, dispatched by the identity's CIPlatform; the CI adapters of package ci
// have nothing to do with it. An error means "unknown": the janitor then keeps the builder,
// because deleting a running job's builder is worse than keeping a dead one a while.
type JobChecker interface {
	JobFinished(ctx context.Context, job cijob.Identity) (finished bool, err error)
}

// GCDecision is the janitor's verdict on one job's objects.
type GCDecision struct {
	Key     JobKey
	Objects []string
	Delete  bool
	// Deleting says every object of the job is already being deleted (its pods drain running
	// builds first): nothing to judge, and no CI system is asked again.
	Deleting bool
	Reason   string
}

// JobFromAnnotations reads the job identity the provisioner wrote onto a builder.
func JobFromAnnotations(obj metav1.Object) cijob.Identity {
	a := obj.GetAnnotations()
	return cijob.Identity{
		CIPlatform: a[AnnotationCIPlatform], Repository: a[AnnotationRepository], RepositoryID: a[AnnotationRepositoryID], RunID: a[AnnotationRunID],
		RunAttempt: a[AnnotationRunAttempt], JobID: a[AnnotationJobID], JobName: a[AnnotationJobName],
		Commit: a[AnnotationCommit], URL: a[AnnotationJobURL],
	}
}

// CollectGarbage lists the managed pods and Secrets in ns, groups them by job key and deletes a
// job's objects when its expiry has passed, its owner pod no longer exists (or has another UID),
// or checker says the job finished. Objects without our labels are never looked at. With dryRun
// it only reports.
func (p *Provisioner) CollectGarbage(ctx context.Context, ns string, checker JobChecker, dryRun bool) ([]GCDecision, error) {
	selector := metav1.ListOptions{LabelSelector: ManagedSelector()}
	pods, err := p.Client.CoreV1().Pods(ns).List(ctx, selector)
	if err != nil {
		return nil, explainAPIError(err, "list", "pods", ns, "listing managed builder pods")
	}
	secrets, err := p.Client.CoreV1().Secrets(ns).List(ctx, selector)
	if err != nil {
		return nil, explainAPIError(err, "list", "secrets", ns, "listing managed Secrets")
	}
	type job struct {
		objects []metav1.Object
		names   []string
	}
	jobs := map[JobKey]*job{}
	add := func(kind string, obj metav1.Object) {
		if !IsManaged(obj) {
			return
		}
		key := JobKey(obj.GetLabels()[LabelJobKey])
		if jobs[key] == nil {
			jobs[key] = &job{}
		}
		jobs[key].objects = append(jobs[key].objects, obj)
		jobs[key].names = append(jobs[key].names, kind+"/"+obj.GetName())
	}
	for i := range pods.Items {
		add("pod", &pods.Items[i])
	}
	for i := range secrets.Items {
		add("secret", &secrets.Items[i])
	}
	keys := make([]string, 0, len(jobs))
	for k := range jobs {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	ownerExists := map[types.UID]bool{}
	var decisions []GCDecision
	var errs []error
	for _, k := range keys {
		key := JobKey(k)
		j := jobs[key]
		decision := GCDecision{Key: key, Objects: j.names}
		if allBeingDeleted(j.objects) {
			decision.Deleting, decision.Reason = true, "already being deleted"
			decisions = append(decisions, decision)
			continue
		}
		decision.Delete, decision.Reason, err = p.judge(ctx, ns, j.objects, checker, ownerExists)
		if err != nil {
			errs = append(errs, err)
		}
		decisions = append(decisions, decision)
		if decision.Delete && !dryRun {
			if _, err := p.Teardown(ctx, ns, key, nil, TeardownOptions{ListSecrets: true}); err != nil {
				errs = append(errs, fmt.Errorf("removing job %s: %w", key, err))
			}
		}
	}
	return decisions, errors.Join(errs...)
}

// allBeingDeleted reports whether every object has a deletion timestamp: a job an earlier run
// (or its post step) already removed, whose pods are still draining.
func allBeingDeleted(objects []metav1.Object) bool {
	for _, obj := range objects {
		if obj.GetDeletionTimestamp() == nil {
			return false
		}
	}
	return len(objects) > 0
}

// judge decides about one job's objects: expiry first (needs no API call), then the owner, then
// the CI platform's answer.
func (p *Provisioner) judge(ctx context.Context, ns string, objects []metav1.Object, checker JobChecker, ownerExists map[types.UID]bool) (bool, string, error) {
	now := p.now()
	for _, obj := range objects {
		if expires, ok := ExpiresAt(obj); ok && now.After(expires) {
			return true, fmt.Sprintf("expired at %s", expires.Format(time.RFC3339)), nil
		}
	}
	for _, obj := range objects {
		for _, ref := range obj.GetOwnerReferences() {
			if ref.Kind != "Pod" {
				continue
			}
			exists, known := ownerExists[ref.UID]
			if !known {
				owner, err := p.Client.CoreV1().Pods(ns).Get(ctx, ref.Name, metav1.GetOptions{})
				switch {
				case apierrors.IsNotFound(err):
					exists = false
				case err != nil:
					return false, "owner lookup failed", explainAPIError(err, "get", "pods", ns, "looking up owner "+ref.Name)
				default:
					exists = owner.UID == ref.UID
				}
				ownerExists[ref.UID] = exists
			}
			if !exists {
				return true, fmt.Sprintf("owner pod %s (uid %s) is gone", ref.Name, ref.UID), nil
			}
		}
	}
	if checker != nil && len(objects) > 0 {
		job := JobFromAnnotations(objects[0])
		finished, err := checker.JobFinished(ctx, job)
		if err != nil {
			return false, "job status unknown; kept", fmt.Errorf("asking whether job %s of %s finished: %w", job.JobID, job.Repository, err)
		}
		if finished {
			return true, "the CI job has finished", nil
		}
		return false, "the CI job is still running", nil
	}
	return false, "owner alive and not expired", nil
}
