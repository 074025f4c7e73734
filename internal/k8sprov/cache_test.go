package k8sprov

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

func TestCacheInputsErrorsNameInputValueAndAccepted(t *testing.T) {
	for _, tc := range []struct {
		in            Inputs
		input, value  string
		acceptedWords string
	}{
		{Inputs{Cache: "disk"}, InputCache, "disk", AcceptedCache},
		{Inputs{Cache: "volume", CacheSize: "big"}, InputCacheSize, "big", AcceptedCacheSize},
		{Inputs{Cache: "volume", CacheSize: "100Mi"}, InputCacheSize, "100Mi", AcceptedCacheSize},
		{Inputs{Cache: "volume", CacheSize: "2Ti"}, InputCacheSize, "2Ti", AcceptedCacheSize},
		{Inputs{Cache: "volume", CacheMaxSlots: "0"}, InputCacheMaxSlots, "0", AcceptedCacheMaxSlots},
		{Inputs{Cache: "volume", CacheMaxSlots: "two"}, InputCacheMaxSlots, "two", AcceptedCacheMaxSlots},
		{Inputs{Cache: "volume", CacheStorageClass: "Fast_SSD"}, InputCacheStorageClass, "Fast_SSD", AcceptedStorageClass},
		{Inputs{Cache: "volume", CacheKey: "a\nb"}, InputCacheKey, "a\nb", AcceptedCacheKey},
	} {
		_, err := ParseOptions(testJob, tc.in)
		var ie *InputError
		if !errors.As(err, &ie) || ie.Input != tc.input || ie.Value != tc.value || ie.Accepted != tc.acceptedWords {
			t.Errorf("ParseOptions(%+v) = %v, want an error naming %s, %q and %q", tc.in, err, tc.input, tc.value, tc.acceptedWords)
		}
	}
	noRepo := testJob
	noRepo.Repository, noRepo.RepositoryID = "", ""
	if _, err := ParseOptions(noRepo, Inputs{Cache: "volume"}); err == nil || !strings.Contains(err.Error(), InputCacheKey) {
		t.Errorf("cache volume without repository or cache-key: %v, want an error naming %s", err, InputCacheKey)
	}
	opts, err := ParseOptions(testJob, Inputs{})
	if err != nil || opts.Cache.Mode != CacheOff || opts.Cache.MaxSlots != DefaultCacheMaxSlots || opts.Cache.Size.Cmp(DefaultCacheSize) != 0 {
		t.Errorf("defaults: %+v, %v", opts.Cache, err)
	}
}

// Lineages keep apart what must not share a volume: platforms, keys and, above all, trusted
// and untrusted (fork) jobs of the same repository and key.
func TestLineagesSeparateTrustKeyAndPlatform(t *testing.T) {
	amd, arm := platform.MustParse("linux/amd64"), platform.MustParse("linux/arm64")
	c := CacheSettings{}.withDefaults()
	fork := testJob
	fork.Untrusted = true
	otherRun := testJob
	otherRun.RunID, otherRun.JobID, otherRun.Commit = "1", "2", "abcdef0"
	keyed := c
	keyed.Key = "Dockerfile.api"
	base := c.Lineage(testJob, amd)
	otherRepo := testJob
	otherRepo.RepositoryID = "42"
	otherKeyed := keyed
	if keyed.Lineage(otherRepo, amd) == otherKeyed.Lineage(testJob, amd) {
		t.Errorf("one cache-key in two repositories shares a lineage")
	}
	if c.Lineage(otherRun, amd) != base {
		t.Errorf("two jobs of one repository have different lineages")
	}
	for name, other := range map[string]string{
		"fork":     c.Lineage(fork, amd),
		"platform": c.Lineage(testJob, arm),
		"key":      keyed.Lineage(testJob, amd),
	} {
		if other == base {
			t.Errorf("%s does not change the lineage %s", name, base)
		}
	}
	if !strings.HasPrefix(c.lineageText(fork, amd), "untrusted ") || !strings.Contains(c.lineageText(testJob, amd), "id "+testJob.RepositoryID) {
		t.Errorf("lineage texts: %q, %q", c.lineageText(fork, amd), c.lineageText(testJob, amd))
	}
}

func TestSlotFree(t *testing.T) {
	now := fixedTime
	pvc := func(h *CacheHolder) *corev1.PersistentVolumeClaim {
		p := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{}}}
		if h != nil {
			p.Annotations[AnnotationCacheHolder] = h.String()
		}
		return p
	}
	for _, tc := range []struct {
		name   string
		holder *CacheHolder
		pod    PodState
		free   bool
	}{
		{"never held", nil, PodState{}, true},
		{"holder pod running", &CacheHolder{Pod: "b", UID: "u1", Since: now}, PodState{Exists: true, UID: "u1"}, false},
		{"holder pod gone", &CacheHolder{Pod: "b", UID: "u1", Since: now}, PodState{}, true},
		{"name reused by another pod", &CacheHolder{Pod: "b", UID: "u1", Since: now}, PodState{Exists: true, UID: "u2"}, true},
		{"claimed, pod not yet created", &CacheHolder{Pod: "b", Since: now.Add(-time.Second)}, PodState{}, false},
		{"claimed, pod created, uid not recorded", &CacheHolder{Pod: "b", Since: now.Add(-time.Hour)}, PodState{Exists: true, UID: "u1"}, false},
		{"claim abandoned", &CacheHolder{Pod: "b", Since: now.Add(-cacheClaimGrace - time.Second)}, PodState{}, true},
	} {
		if free, why := slotFree(pvc(tc.holder), tc.pod, now); free != tc.free {
			t.Errorf("%s: free = %v (%s), want %v", tc.name, free, why, tc.free)
		}
	}
	deleting := pvc(nil)
	deleting.DeletionTimestamp = &metav1.Time{Time: now}
	if free, _ := slotFree(deleting, PodState{}, now); free {
		t.Errorf("a slot being deleted is free")
	}
}

func TestRenderCacheVolumeAndPod(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64", Cache: "volume", CacheSize: "20Gi", CacheStorageClass: "fast"})
	amd := platform.MustParse("linux/amd64")
	lineage := plan.Options.Cache.Lineage(plan.Options.Job, amd)
	pvc := RenderCacheVolume(plan, amd, lineage, 2, fixedTime)
	if !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}) {
		t.Errorf("access modes %v, want only ReadWriteOncePod", pvc.Spec.AccessModes)
	}
	if len(pvc.OwnerReferences) != 0 {
		t.Errorf("a cache volume is owned by %v; it must outlive the job", pvc.OwnerReferences)
	}
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "20Gi" || *pvc.Spec.StorageClassName != "fast" {
		t.Errorf("size %s class %v", got.String(), pvc.Spec.StorageClassName)
	}
	if pvc.Name != CacheVolumeName(lineage, 2) || pvc.Labels[LabelCacheSlot] != "2" || pvc.Labels[LabelCacheLineage] != lineage || pvc.Labels[LabelManagedBy] != ManagedBy {
		t.Errorf("name/labels: %s %v", pvc.Name, pvc.Labels)
	}
	if h, ok := holderOf(pvc); !ok || h.Pod != plan.PodName(amd) {
		t.Errorf("holder %+v, want the builder pod %s", h, plan.PodName(amd))
	}
	// The admission policy lets a job write only its own runner pod's UID here.
	if got := pvc.Annotations[AnnotationCacheHolderOwner]; plan.Owner == nil || got != string(plan.Owner.UID) {
		t.Errorf("holder owner %q, want the runner pod's UID (%+v)", got, plan.Owner)
	}

	plan.CacheVolumes = map[platform.Platform]string{amd: pvc.Name}
	pod := renderPod(t, plan, "linux/amd64")
	var state *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == volumeState {
			state = &pod.Spec.Volumes[i]
		}
	}
	if state == nil || state.PersistentVolumeClaim == nil || state.PersistentVolumeClaim.ClaimName != pvc.Name {
		t.Fatalf("state volume %+v, want claim %s", state, pvc.Name)
	}
	args := pod.Spec.Containers[0].Args
	if !slices.Contains(args, "--oci-worker-gc=true") || !slices.Contains(args, "--oci-worker-gc-keepstorage=2147,2147,17179") {
		t.Errorf("buildkitd GC is not sized to the 20Gi volume: %v", args)
	}
	if pod.Annotations[AnnotationCacheVolume] != pvc.Name {
		t.Errorf("pod does not name its cache volume: %v", pod.Annotations)
	}
	plan.CacheVolumes = nil
	if pod := renderPod(t, plan, "linux/amd64"); pod.Spec.Volumes[0].EmptyDir == nil || slices.Contains(pod.Spec.Containers[0].Args, "--oci-worker-gc=true") {
		t.Errorf("a cold builder's state is not an emptyDir with default GC: %+v", pod.Spec.Volumes[0])
	}
}

// With fake API objects (the race itself is proven on the real cluster): a free slot is taken
// warm, busy slots make a new one up to the maximum, then the builder is cold and says why.
func TestClaimCacheVolumeWarmNewCold(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	prov := &Provisioner{Client: client, Now: func() time.Time { return fixedTime }}
	amd := platform.MustParse("linux/amd64")
	plan := testPlan(t, Inputs{Platforms: "linux/amd64", Cache: "volume", CacheMaxSlots: "2"})

	claimAs := func(job string) CacheChoice {
		t.Helper()
		p := plan
		p.Key = JobKey(job)
		c, err := prov.claimCacheVolume(ctx, p, amd)
		if err != nil {
			t.Fatal(err)
		}
		if c.Volume != "" {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.PodName(amd), Namespace: "ci", UID: types.UID("uid-" + job), Annotations: map[string]string{AnnotationCacheVolume: c.Volume}}}
			if _, err := client.CoreV1().Pods("ci").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := prov.recordHolder(ctx, "ci", c.Volume, pod); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	first := claimAs("job1")
	second := claimAs("job2")
	third := claimAs("job3")
	if !first.New || !second.New || first.Volume == second.Volume {
		t.Errorf("first two jobs: %+v, %+v; want two new slots", first, second)
	}
	if third.Volume != "" || !strings.Contains(third.Why, "cold builder") || !strings.Contains(third.Why, InputCacheMaxSlots) {
		t.Errorf("third job with both slots busy: %+v, want cold with the reason", third)
	}
	// job1's builder pod is gone, whatever ended the job: its slot is free, and warm.
	if err := client.CoreV1().Pods("ci").Delete(ctx, PodName("job1", amd), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fourth := claimAs("job4")
	if fourth.Volume != first.Volume || fourth.New || !strings.HasPrefix(fourth.Why, "warm") {
		t.Errorf("after job1's pod went: %+v, want job1's volume %s warm", fourth, first.Volume)
	}
}

func TestGCKeepStorageLeavesRoom(t *testing.T) {
	c := CacheSettings{}.withDefaults()
	if got := gcKeepStorage(c.Size); got != "1073,1073,8589" {
		t.Errorf("gcKeepStorage(10Gi) = %s", got)
	}
}

// A cold builder is tried when the cache may be to blame, not when it would fail the same way.
func TestCacheMayBeTheCause(t *testing.T) {
	for _, tc := range []struct {
		err  error
		cold bool
	}{
		{&BuilderError{Reason: "Unschedulable"}, true},
		{&BuilderError{Reason: "ContainerExited"}, true},
		{context.DeadlineExceeded, true},
		{&ForbiddenError{Verb: "create", Resource: "pods"}, true},
		{&BuilderError{Reason: "ErrImagePull"}, false},
		{&QuotaError{}, false},
	} {
		if got := cacheMayBeTheCause(tc.err); got != tc.cold {
			t.Errorf("cacheMayBeTheCause(%T %v) = %v, want %v", tc.err, tc.err, got, tc.cold)
		}
	}
}

// The janitor removes volumes unused too long, then the least recently used free ones until the
// namespace is within budget; a volume in use is never removed.
func TestJudgeCacheVolumes(t *testing.T) {
	now := fixedTime
	vol := func(name string, unused time.Duration) corev1.PersistentVolumeClaim {
		return corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{AnnotationCacheLastUsed: now.Add(-unused).Format(time.RFC3339)}},
			Spec:       corev1.PersistentVolumeClaimSpec{Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: DefaultCacheSize.DeepCopy()}}},
		}
	}
	pvcs := []corev1.PersistentVolumeClaim{vol("fresh", time.Minute), vol("stale", 30*24*time.Hour), vol("old-busy", 40*24*time.Hour), vol("older", 3*time.Hour), vol("oldest", 5*time.Hour)}
	inUse := map[string]string{"old-busy": "in use: held by pod b"}
	got := map[string]bool{}
	for _, d := range judgeCacheVolumes(pvcs, inUse, now, CacheBudget{MaxUnused: DefaultCacheMaxUnused, MaxCount: 3}) {
		got[d.Volume] = d.Delete
	}
	want := map[string]bool{"fresh": false, "stale": true, "old-busy": false, "older": false, "oldest": true}
	for name, del := range want {
		if got[name] != del {
			t.Errorf("%s: delete = %v, want %v (all: %v)", name, got[name], del, got)
		}
	}
	bySize := map[string]bool{}
	for _, d := range judgeCacheVolumes(pvcs, inUse, now, CacheBudget{MaxSize: resource.MustParse("20Gi")}) {
		bySize[d.Volume] = d.Delete
	}
	// 50Gi in five volumes, 20Gi allowed, one in use: the three least recently used free ones go.
	if !bySize["stale"] || !bySize["oldest"] || !bySize["older"] || bySize["fresh"] || bySize["old-busy"] {
		t.Errorf("size budget: %v", bySize)
	}
}
