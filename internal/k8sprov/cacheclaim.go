package k8sprov

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// claimAttempts bounds the rounds of list-and-swap for one lineage; each lost race means another
// job took a slot, so a new round sees one fewer free slot and the rounds end.
const claimAttempts = 8

// CacheChoice is the outcome of claiming a cache volume for one builder.
type CacheChoice struct {
	Platform platform.Platform
	// Volume is the claim's name; empty means a cold builder.
	Volume string
	// Slot is the slot's index; New says it was made for this job (empty, so cold this time).
	Slot int
	New  bool
	// Why says which slot and why, or why cold, for the log.
	Why string
}

// claimCacheVolumes claims a slot of its lineage for every platform's builder of plan. A problem
// with the cache never fails the job: that builder starts cold and the choice says why.
func (p *Provisioner) claimCacheVolumes(ctx context.Context, plan Plan) []CacheChoice {
	choices := make([]CacheChoice, 0, len(plan.Platforms))
	for _, pl := range plan.Platforms {
		choice, err := p.claimCacheVolume(ctx, plan, pl)
		if err != nil {
			choice = CacheChoice{Platform: pl, Why: fmt.Sprintf("cold builder: claiming a cache volume failed: %v", err)}
		}
		choices = append(choices, choice)
	}
	return choices
}

// claimCacheVolume takes the most recently used free slot of pl's lineage by a compare-and-swap
// on its holder annotation, or makes a new slot when all are busy and fewer than MaxSlots exist.
func (p *Provisioner) claimCacheVolume(ctx context.Context, plan Plan, pl platform.Platform) (CacheChoice, error) {
	c := plan.Options.Cache
	lineage := c.Lineage(plan.Options.Job, pl)
	ns := plan.Namespace
	claims := p.Client.CoreV1().PersistentVolumeClaims(ns)
	pod := plan.PodName(pl)
	for range claimAttempts {
		list, err := claims.List(ctx, metav1.ListOptions{LabelSelector: LineageSelector(lineage)})
		if err != nil {
			return CacheChoice{}, explainAPIError(err, "list", "persistentvolumeclaims", ns, "listing the cache volumes of lineage "+lineage)
		}
		slots := list.Items
		orderSlots(slots)
		busy := 0
		lost := false
		for i := range slots {
			slot := &slots[i]
			holderPod, err := p.holderPodState(ctx, ns, slot)
			if err != nil {
				return CacheChoice{}, err
			}
			now := p.now()
			free, why := slotFree(slot, holderPod, now)
			if !free {
				busy++
				continue
			}
			claimed := slot.DeepCopy()
			claimed.Annotations = maps.Clone(claimed.Annotations)
			if claimed.Annotations == nil {
				claimed.Annotations = map[string]string{}
			}
			claimed.Annotations[AnnotationCacheHolder] = CacheHolder{Pod: pod, Since: now.UTC().Truncate(time.Second)}.String()
			claimed.Annotations[AnnotationCacheHolderOwner] = plan.holderOwner()
			claimed.Annotations[AnnotationCacheLastUsed] = now.UTC().Format(time.RFC3339)
			// The update carries the resourceVersion listed: it fails with a conflict when another
			// job claimed the slot since, and only one of two racing jobs wins.
			if _, err := claims.Update(ctx, claimed, metav1.UpdateOptions{}); err != nil {
				if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
					lost = true
					break
				}
				return CacheChoice{}, explainAPIError(err, "update", "persistentvolumeclaims", ns, "claiming cache volume "+slot.Name)
			}
			return CacheChoice{Platform: pl, Volume: slot.Name, Slot: slotIndex(slot),
				Why: fmt.Sprintf("warm: cache volume %s (slot %d, last used %s; %s)", slot.Name, slotIndex(slot), lastUsed(slot).Format(time.RFC3339), why)}, nil
		}
		if lost {
			continue
		}
		index := freeSlotIndex(slots, c.MaxSlots)
		if index < 0 {
			return CacheChoice{Platform: pl, Why: fmt.Sprintf("cold builder: all %d cache volumes of this lineage are in use (%s is %d)", len(slots), InputCacheMaxSlots, c.MaxSlots)}, nil
		}
		pvc := RenderCacheVolume(plan, pl, lineage, index, p.now())
		if _, err := claims.Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			return CacheChoice{}, explainAPIError(err, "create", "persistentvolumeclaims", ns, "creating cache volume "+pvc.Name)
		}
		why := "new cache volume %s (slot %d): this lineage had none yet; this build is cold and fills it"
		args := []any{pvc.Name, index}
		if len(slots) > 0 {
			why = "new cache volume %s (slot %d): the %d existing ones are in use; this build is cold and fills it"
			args = append(args, busy)
		}
		return CacheChoice{Platform: pl, Volume: pvc.Name, Slot: index, New: true, Why: fmt.Sprintf(why, args...)}, nil
	}
	return CacheChoice{Platform: pl, Why: fmt.Sprintf("cold builder: lost the race for a cache volume %d times", claimAttempts)}, nil
}

// holderPodState looks up the pod a slot's holder names.
func (p *Provisioner) holderPodState(ctx context.Context, ns string, slot *corev1.PersistentVolumeClaim) (PodState, error) {
	h, ok := holderOf(slot)
	if !ok {
		return PodState{}, nil
	}
	pod, err := p.Client.CoreV1().Pods(ns).Get(ctx, h.Pod, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return PodState{}, nil
	case err != nil:
		return PodState{}, explainAPIError(err, "get", "pods", ns, "looking up pod "+h.Pod+", which holds cache volume "+slot.Name)
	}
	return PodState{Exists: true, UID: pod.UID}, nil
}

// recordHolders writes the builder pods' UIDs into the holder annotations of the slots they
// claimed, so a slot is free the moment its pod is gone, not only after cacheClaimGrace.
func (p *Provisioner) recordHolders(ctx context.Context, plan Plan, pods []*corev1.Pod) error {
	var errs []error
	for _, pod := range pods {
		name := pod.Annotations[AnnotationCacheVolume]
		if name == "" {
			continue
		}
		errs = append(errs, p.recordHolder(ctx, plan.Namespace, name, pod))
	}
	return errors.Join(errs...)
}

func (p *Provisioner) recordHolder(ctx context.Context, ns, name string, pod *corev1.Pod) error {
	claims := p.Client.CoreV1().PersistentVolumeClaims(ns)
	for range claimAttempts {
		pvc, err := claims.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return explainAPIError(err, "get", "persistentvolumeclaims", ns, "recording the holder of cache volume "+name)
		}
		h, ok := holderOf(pvc)
		if !ok || h.Pod != pod.Name {
			return fmt.Errorf("cache volume %s is no longer claimed for pod %s (holder %q)", name, pod.Name, pvc.Annotations[AnnotationCacheHolder])
		}
		h.UID = pod.UID
		pvc.Annotations[AnnotationCacheHolder] = h.String()
		if _, err := claims.Update(ctx, pvc, metav1.UpdateOptions{}); err == nil {
			return nil
		} else if !apierrors.IsConflict(err) {
			return explainAPIError(err, "update", "persistentvolumeclaims", ns, "recording the holder of cache volume "+name)
		}
	}
	return fmt.Errorf("recording the holder of cache volume %s: too many conflicting updates", name)
}

// dropCacheVolume removes a damaged cache volume from the pool: deleted, it is never claimed
// again (the API server keeps it until the pod using it is gone).
func (p *Provisioner) dropCacheVolume(ctx context.Context, ns, name string) error {
	err := p.Client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return explainAPIError(err, "delete", "persistentvolumeclaims", ns, "removing damaged cache volume "+name)
}
