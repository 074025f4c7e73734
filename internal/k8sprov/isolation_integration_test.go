package k8sprov

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// TestIntegrationAdmissionPolicyKeepsJobsApart gives two runner pods of the same ServiceAccount
// their own pod-bound tokens, as the kubelet mounts them, and checks that the API server refuses
// each one's requests on the other's builders and Secrets while allowing its own; and that a
// token bound to no pod may only handle builders without an owner.
func TestIntegrationAdmissionPolicyKeepsJobsApart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, nil)
	a := env.runnerClient
	runnerB := env.cluster.CreateRunnerPod(ctx, t, env.ns, "runner-pod-b", "runner")
	b := kubernetes.NewForConfigOrDie(env.podBoundConfig(t, ctx, env.saConfig, runnerB))

	// Runner A's job, for real: its own token may create its Secret and builder.
	planA := env.plan(t, "isolation-a", Inputs{Platforms: "linux/amd64"})
	secretA, podsA := renderJob(t, planA)
	if _, err := a.CoreV1().Secrets(env.ns).Create(ctx, secretA, metav1.CreateOptions{}); err != nil {
		t.Fatalf("runner A may not create its own Secret: %v", err)
	}
	if _, err := a.CoreV1().Pods(env.ns).Create(ctx, podsA[0], metav1.CreateOptions{}); err != nil {
		t.Fatalf("runner A may not create its own builder: %v", err)
	}
	podA, secretNameA := podsA[0].Name, secretA.Name

	// Runner B's own job is admitted.
	planB := env.plan(t, "isolation-b", Inputs{Platforms: "linux/amd64"})
	planB.Owner = &RunnerPod{Name: runnerB.Name, Namespace: env.ns, UID: runnerB.UID}
	secretB, podsB := renderJob(t, planB)
	if _, err := b.CoreV1().Secrets(env.ns).Create(ctx, secretB, dryRun); err != nil {
		t.Errorf("runner B may not create its own Secret: %v", err)
	}
	if _, err := b.CoreV1().Pods(env.ns).Create(ctx, podsB[0], dryRun); err != nil {
		t.Errorf("runner B may not create its own builder: %v", err)
	}

	// Runner B on runner A's builders: delete, create in A's name, patch.
	bOnly := "with a token bound to pod " + runnerB.Name
	dryDelete := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}
	err := b.CoreV1().Pods(env.ns).Delete(ctx, podA, dryDelete)
	assertRefused(t, "runner B deletes runner A's builder", err, bOnly+" (uid "+string(runnerB.UID)+") may only delete builders owned by that pod; pod "+podA+" is owned by Pod "+env.runner.Name)
	err = b.CoreV1().Secrets(env.ns).Delete(ctx, secretNameA, dryDelete)
	assertRefused(t, "runner B deletes runner A's Secret", err, bOnly)
	_, err = b.CoreV1().Pods(env.ns).Create(ctx, podsA[0].DeepCopy(), dryRun)
	assertRefused(t, "runner B creates a builder owned by runner A", err, bOnly)
	// The name alone is not enough: B's pod name with another UID is refused too.
	forged := podsB[0].DeepCopy()
	forged.OwnerReferences[0].UID = env.runner.UID
	_, err = b.CoreV1().Pods(env.ns).Create(ctx, forged, dryRun)
	assertRefused(t, "runner B creates a builder owned by its pod name with runner A's UID", err, bOnly)
	patch := []byte(`{"metadata":{"labels":{"example.com/touched":"yes"}}}`)
	_, err = b.CoreV1().Pods(env.ns).Patch(ctx, podA, types.StrategicMergePatchType, patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
	// The shipped Role has no patch verb (403); a wider one meets the policy's refusal of any
	// UPDATE (TestIntegrationAdmissionPolicyRefusesEverythingElse).
	if err == nil || !(apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) {
		t.Errorf("runner B patches runner A's builder: %v, want refused", err)
	} else {
		t.Logf("runner B patches runner A's builder: refused: %v", err)
	}

	// A pod-bound token has a pod to own its builders: owner-pod: none is not for it.
	ownerless := env.plan(t, "isolation-ownerless", Inputs{Platforms: "linux/amd64", OwnerPod: "none"})
	secretN, podsN := renderJob(t, ownerless)
	_, err = a.CoreV1().Pods(env.ns).Create(ctx, podsN[0], dryRun)
	assertRefused(t, "runner A creates a builder without an owner", err, "may only create builders owned by that pod; pod "+podsN[0].Name+" is owned by nothing")

	// A token bound to no pod: builders without an owner only.
	unbound := env.unboundClient
	if _, err := unbound.CoreV1().Secrets(env.ns).Create(ctx, secretN, dryRun); err != nil {
		t.Errorf("an unbound token may not create an ownerless Secret: %v", err)
	}
	if _, err := unbound.CoreV1().Pods(env.ns).Create(ctx, podsN[0], dryRun); err != nil {
		t.Errorf("an unbound token may not create an ownerless builder: %v", err)
	}
	const noPod = "with a token bound to no pod may only "
	_, err = unbound.CoreV1().Pods(env.ns).Create(ctx, podsB[0], dryRun)
	assertRefused(t, "an unbound token creates a builder owned by a runner pod", err, noPod+"create builders without an owner (owner-pod: none)")
	err = unbound.CoreV1().Pods(env.ns).Delete(ctx, podA, dryDelete)
	assertRefused(t, "an unbound token deletes runner A's builder", err, noPod+"delete builders without an owner")
	err = unbound.CoreV1().Secrets(env.ns).Delete(ctx, secretNameA, dryDelete)
	assertRefused(t, "an unbound token deletes runner A's Secret", err, noPod+"delete builders without an owner")

	// Runner A removes its own, for real.
	if err := a.CoreV1().Pods(env.ns).Delete(ctx, podA, metav1.DeleteOptions{}); err != nil {
		t.Errorf("runner A may not delete its own builder: %v", err)
	}
	if err := a.CoreV1().Secrets(env.ns).Delete(ctx, secretNameA, metav1.DeleteOptions{}); err != nil {
		t.Errorf("runner A may not delete its own Secret: %v", err)
	}
}
