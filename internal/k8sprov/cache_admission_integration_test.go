package k8sprov

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Under the shipped admission policy, with the runner pod's own bound token: the cache volume
// flow works (a new volume, then the next job warm on it, no cold fallback), and the API server
// refuses what a job could do with the runners' claim rights beyond it: a claim past the size
// bound, a claim that is not ours, a clone of another claim, an update beyond the holder
// annotations, a pod mounting a claim that is not ours, and another runner's token marking or
// deleting this runner's claim.
func TestIntegrationCacheVolumeUnderAdmissionPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, nil)
	prov := env.provisioner(t)
	var mu sync.Mutex
	var warnings []string
	prov.Warning = func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		warnings = append(warnings, msg)
		t.Logf("warning: %s", msg)
	}
	contextDir := busyboxContext(t)
	in := Inputs{CacheSize: "1Gi"}
	run := func(jobID string) CacheChoice {
		t.Helper()
		r, err := prov.Provision(ctx, env.cachePlan(t, jobID, false, in, time.Minute))
		if err != nil {
			t.Fatalf("%s under the admission policy: %v", jobID, err)
		}
		took, cached := buildStep(t, ctx, r, contextDir)
		env.teardown(t, ctx, prov, r)
		t.Logf("%s: %s; build %.2fs, step cached %v", jobID, r.Cache[0].Why, took.Seconds(), cached)
		if jobID == "policy-second" && !cached {
			t.Errorf("%s: the step ran again; want it from the warm volume", jobID)
		}
		return r.Cache[0]
	}
	first := run("policy-first")
	second := run("policy-second")
	if !first.New || first.Volume == "" {
		t.Errorf("first job: %+v; want a new cache volume", first)
	}
	if second.Volume != first.Volume || !strings.HasPrefix(second.Why, "warm") {
		t.Errorf("second job: %+v; want %s, warm", second, first.Volume)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings under the policy (a cold fallback?): %q", warnings)
	}
	claims := env.admin.CoreV1().PersistentVolumeClaims(env.ns)
	ours, err := claims.Get(ctx, first.Volume, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ours.Annotations[AnnotationCacheHolderOwner]; got != string(env.runner.UID) {
		t.Errorf("the claim's holder owner is %q, want runner pod %s's UID %s", got, env.runner.Name, env.runner.UID)
	}

	a := env.runnerClient.CoreV1().PersistentVolumeClaims(env.ns)
	amd := platform.MustParse("linux/amd64")
	plan := env.cachePlan(t, "policy-probe", false, in, time.Minute)
	lineage := plan.Options.Cache.Lineage(plan.Options.Job, amd)
	const maxSlot = 7 // a slot no job above used

	big := RenderCacheVolume(plan, amd, lineage, maxSlot, time.Now())
	big.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("501Gi")
	_, err = a.Create(ctx, big, dryRun)
	assertRefused(t, "a cache volume past the size bound", err, "a storage request of 501Gi above the maximum 500Gi")
	fits := RenderCacheVolume(plan, amd, lineage, maxSlot, time.Now())
	fits.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("500Gi")
	if _, err := a.Create(ctx, fits, dryRun); err != nil {
		t.Errorf("a cache volume of exactly the bound is refused: %v", err)
	}

	notOurs := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data-postgres-0", Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	_, err = a.Create(ctx, notOurs, dryRun)
	assertRefused(t, "a claim that is not a cache volume", err, "PersistentVolumeClaim data-postgres-0 is not one")

	clone := RenderCacheVolume(plan, amd, lineage, maxSlot, time.Now())
	clone.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "data-postgres-0"}
	_, err = a.Create(ctx, clone, dryRun)
	assertRefused(t, "a cache volume cloned from another claim", err, "a dataSource")

	relabelled := ours.DeepCopy()
	relabelled.Labels[LabelCacheTrust] = "untrusted"
	_, err = a.Update(ctx, relabelled, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
	assertRefused(t, "an update of a cache volume's labels", err, "changes labels")

	// A builder that mounts a claim that is not ours, as its state or under another name.
	foreign := plan
	foreign.CacheVolumes = map[platform.Platform]string{amd: "data-postgres-0"}
	pod, err := RenderPod(foreign, amd)
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.runnerClient.CoreV1().Pods(env.ns).Create(ctx, pod, dryRun)
	assertRefused(t, "a builder mounting a claim that is not ours", err, "has volume(s) buildkit-state (persistentVolumeClaim data-postgres-0)")
	mounted := plan
	mounted.CacheVolumes = map[platform.Platform]string{amd: first.Volume}
	pod, err = RenderPod(mounted, amd)
	if err != nil {
		t.Fatal(err)
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "extra", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: first.Volume}}})
	_, err = env.runnerClient.CoreV1().Pods(env.ns).Create(ctx, pod, dryRun)
	assertRefused(t, "a builder mounting a cache volume a second time, elsewhere", err, "has volume(s) extra")
	pod.Spec.Volumes = pod.Spec.Volumes[:len(pod.Spec.Volumes)-1]
	pod.Spec.Containers[0].VolumeMounts[0].MountPath = "/etc"
	_, err = env.runnerClient.CoreV1().Pods(env.ns).Create(ctx, pod, dryRun)
	assertRefused(t, "a builder mounting its cache volume elsewhere", err, "mounted other than read-write at BuildKit's state directory")

	// Another runner pod's token: it may claim the free slot for its own builder, not write
	// runner A as the holder's owner, nor delete runner A's claim.
	runnerB := env.cluster.CreateRunnerPod(ctx, t, env.ns, "runner-pod-b", "runner")
	b := kubernetes.NewForConfigOrDie(env.podBoundConfig(t, ctx, env.saConfig, runnerB)).CoreV1().PersistentVolumeClaims(env.ns)
	dryUpdate := metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}
	mine := ours.DeepCopy()
	mine.Annotations[AnnotationCacheHolder] = CacheHolder{Pod: "buildkit-b-linux-amd64", Since: time.Now().UTC().Truncate(time.Second)}.String()
	mine.Annotations[AnnotationCacheHolderOwner] = string(runnerB.UID)
	if _, err := b.Update(ctx, mine, dryUpdate); err != nil {
		t.Errorf("runner B may not claim a free slot for its own builder: %v", err)
	}
	forged := mine.DeepCopy()
	forged.Annotations[AnnotationCacheHolderOwner] = string(env.runner.UID)
	_, err = b.Update(ctx, forged, dryUpdate)
	assertRefused(t, "runner B claims a slot in runner A's name", err, "with a token bound to pod "+runnerB.Name)
	err = b.Delete(ctx, first.Volume, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
	assertRefused(t, "runner B deletes runner A's cache volume", err, "may only delete cache volumes its own builders hold")
	if err := a.Delete(ctx, first.Volume, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("runner A may not delete the cache volume its builder held: %v", err)
	}
	// A token bound to no pod claims for builders without an owner only.
	_, err = env.unboundClient.CoreV1().PersistentVolumeClaims(env.ns).Update(ctx, mine, dryUpdate)
	assertRefused(t, "an unbound token claims a slot for runner B", err, "with a token bound to no pod may only claim cache volumes for its own builders (annotation setup-ephemeral-buildkit.io/cache-holder-owner: none)")
}
