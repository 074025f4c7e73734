package k8sprov

import (
	"context"
	"errors"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SecretSlots is how many names a job's TLS Secret may have: "buildkit-<jobkey>-<slot>-tls" with
// slot 0 to SecretSlots-1. The names are few and known from the job key alone, so a retry whose
// state was lost, and a teardown without a recorded Secret, can delete every one of them by name
// (NotFound is success) without the right to read or list Secrets, which the runners' Role does
// not grant. There is more than one so that a retry can take a name that no pod of the killed
// attempt mounts: a kubelet keeps an immutable Secret cached while a pod that mounts it is
// still terminating, and must never hand the old certificates to the new pod.
const SecretSlots = 4

// SecretNames returns every name the TLS Secret of job key can have.
func SecretNames(key JobKey) []string {
	names := make([]string, SecretSlots)
	for slot := range names {
		names[slot] = secretNameForSlot(key, slot)
	}
	return names
}

func secretNameForSlot(key JobKey, slot int) string {
	return "buildkit-" + string(key) + "-" + strconv.Itoa(slot) + "-tls"
}

// preferredSecretSlot spreads attempts over the slots by their creation time, so that even
// attempts that see no earlier pod rarely take the name the previous one used.
func preferredSecretSlot(createdAt time.Time) int {
	return int(createdAt.Unix() % SecretSlots)
}

// secretSlotOffset returns how far from the preferred slot the first slot is that none of pods
// mounts (0 when they mount none of the job's names, or every one).
func secretSlotOffset(key JobKey, createdAt time.Time, pods []corev1.Pod) int {
	mounted := map[string]bool{}
	for _, pod := range pods {
		for _, v := range pod.Spec.Volumes {
			if v.Secret != nil {
				mounted[v.Secret.SecretName] = true
			}
		}
	}
	preferred := preferredSecretSlot(createdAt)
	for offset := range SecretSlots {
		if !mounted[secretNameForSlot(key, (preferred+offset)%SecretSlots)] {
			return offset
		}
	}
	return 0
}

// deleteSecretsByName deletes every Secret name job key can have, except those in skip, without
// reading them; it reports those it deleted. The names carry the job key, and the admission
// policy lets a runner delete only Secrets managed by setup-ephemeral-buildkit.
func (p *Provisioner) deleteSecretsByName(ctx context.Context, ns string, key JobKey, skip map[string]bool, report *TeardownReport) error {
	var errs []error
	for _, name := range SecretNames(key) {
		if skip[name] {
			continue
		}
		err := retryTransient(ctx, func(ctx context.Context) error {
			return p.Client.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{})
		})
		switch {
		case err == nil:
			report.Deleted = append(report.Deleted, "secret/"+name)
		case apierrors.IsNotFound(err):
		default:
			errs = append(errs, explainAPIError(err, "delete", "secrets", ns, "deleting Secret "+name))
		}
	}
	return errors.Join(errs...)
}
