package k8sprov

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// DefaultCacheMaxUnused is how long the janitor keeps a cache volume no job claimed.
const DefaultCacheMaxUnused = 7 * 24 * time.Hour

// CacheBudget is what the janitor keeps of a namespace's cache volumes: none unused for longer
// than MaxUnused, at most MaxCount volumes and MaxSize of requested storage (zero: no limit),
// removing the least recently used first. A volume in use is never removed.
type CacheBudget struct {
	MaxUnused time.Duration
	MaxCount  int
	MaxSize   resource.Quantity
}

// CacheDecision is the janitor's verdict on one cache volume.
type CacheDecision struct {
	Volume string
	Delete bool
	Reason string
}

// judgeCacheVolumes decides, from the volumes and whether each is in use (inUse, by name), which
// go: the unused past MaxUnused, then free ones least recently used first until the namespace is
// within MaxCount and MaxSize.
func judgeCacheVolumes(pvcs []corev1.PersistentVolumeClaim, inUse map[string]string, now time.Time, b CacheBudget) []CacheDecision {
	slices.SortStableFunc(pvcs, func(x, y corev1.PersistentVolumeClaim) int { return lastUsed(&x).Compare(lastUsed(&y)) })
	decisions := make([]CacheDecision, len(pvcs))
	count := len(pvcs)
	var size resource.Quantity
	for i := range pvcs {
		size.Add(pvcs[i].Spec.Resources.Requests[corev1.ResourceStorage])
	}
	remove := func(i int, reason string) {
		decisions[i].Delete, decisions[i].Reason = true, reason
		count--
		size.Sub(pvcs[i].Spec.Resources.Requests[corev1.ResourceStorage])
	}
	for i := range pvcs {
		pvc := &pvcs[i]
		decisions[i] = CacheDecision{Volume: pvc.Name}
		unused := now.Sub(lastUsed(pvc))
		switch {
		case inUse[pvc.Name] != "":
			decisions[i].Reason = inUse[pvc.Name]
		case pvc.DeletionTimestamp != nil:
			decisions[i].Reason = "already being deleted"
			count--
			size.Sub(pvc.Spec.Resources.Requests[corev1.ResourceStorage])
		case b.MaxUnused > 0 && unused > b.MaxUnused:
			remove(i, fmt.Sprintf("unused for %s (more than %s)", unused.Truncate(time.Minute), b.MaxUnused))
		default:
			decisions[i].Reason = fmt.Sprintf("last used %s ago", unused.Truncate(time.Second))
		}
	}
	for i := range pvcs {
		over := (b.MaxCount > 0 && count > b.MaxCount) || (!b.MaxSize.IsZero() && size.Cmp(b.MaxSize) > 0)
		if !over {
			break
		}
		if decisions[i].Delete || inUse[pvcs[i].Name] != "" || pvcs[i].DeletionTimestamp != nil {
			continue
		}
		remove(i, "least recently used, over the namespace's budget ("+b.describe()+")")
	}
	return decisions
}

// CollectCacheVolumes applies budget to the cache volumes in ns and, unless dryRun, deletes what
// it judged unused. It uses the janitor's Role.
func (p *Provisioner) CollectCacheVolumes(ctx context.Context, ns string, budget CacheBudget, dryRun bool) ([]CacheDecision, error) {
	list, err := p.Client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{LabelSelector: CacheSelector()})
	if err != nil {
		return nil, forRole(explainAPIError(err, "list", "persistentvolumeclaims", ns, "listing cache volumes"), JanitorRole)
	}
	now := p.now()
	inUse := map[string]string{}
	for i := range list.Items {
		pvc := &list.Items[i]
		pod, err := p.holderPodState(ctx, ns, pvc)
		if err != nil {
			return nil, forRole(err, JanitorRole)
		}
		if free, why := slotFree(pvc, pod, now); !free {
			inUse[pvc.Name] = "in use: " + why
		}
	}
	decisions := judgeCacheVolumes(list.Items, inUse, now, budget)
	if dryRun {
		return decisions, nil
	}
	version := map[string]string{}
	for _, pvc := range list.Items {
		version[pvc.Name] = pvc.ResourceVersion
	}
	var errs []error
	for i, d := range decisions {
		if !d.Delete {
			continue
		}
		// Only the version judged: a job that claimed the volume since makes this a conflict,
		// and the volume stays.
		err := p.Client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, d.Volume, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{ResourceVersion: ptr.To(version[d.Volume])},
		})
		switch {
		case apierrors.IsConflict(err):
			decisions[i].Delete, decisions[i].Reason = false, "claimed by a job meanwhile; kept"
		case err != nil && !apierrors.IsNotFound(err):
			errs = append(errs, forRole(explainAPIError(err, "delete", "persistentvolumeclaims", ns, "removing cache volume "+d.Volume), JanitorRole))
		}
	}
	return decisions, errors.Join(errs...)
}

// describe names the budget's limits that are set.
func (b CacheBudget) describe() string {
	var limits []string
	if b.MaxCount > 0 {
		limits = append(limits, fmt.Sprintf("at most %d volumes", b.MaxCount))
	}
	if !b.MaxSize.IsZero() {
		limits = append(limits, "at most "+b.MaxSize.String())
	}
	return strings.Join(limits, ", ")
}
