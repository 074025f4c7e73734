package k8sprov

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/tonistiigi/fsutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// cachePlan plans a one-arch job of repository org/app with a cache volume; fork makes it a pull
// request from a fork.
func (e *jobEnv) cachePlan(t *testing.T, jobID string, fork bool, in Inputs, attach time.Duration) Plan {
	t.Helper()
	in.Platforms = "linux/amd64"
	in.NodeSelector = archSelectors(e.cluster)
	in.TerminationGracePeriod = "5s"
	if in.Cache == "" {
		in.Cache = "volume"
	}
	job := cijob.Identity{CIPlatform: "github", Repository: "org/app", RepositoryID: "1296269", RunID: "42", RunAttempt: "1", JobID: jobID, JobName: "image", Untrusted: fork}
	opts, err := ParseOptions(job, in)
	if err != nil {
		t.Fatal(err)
	}
	opts.DrainQuietPeriod = time.Second
	opts.Cache.AttachTimeout = attach
	plan, err := NewPlan(opts, Resolution{Namespace: e.ns, Owner: &RunnerPod{Name: e.runner.Name, Namespace: e.ns, UID: e.runner.UID}, CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// teardown removes a job's builders and waits until its pods are gone, which frees its slot.
func (e *jobEnv) teardown(t *testing.T, ctx context.Context, prov *Provisioner, r *Result) {
	t.Helper()
	if _, err := prov.Teardown(ctx, e.ns, r.Plan.Key, r.Plan.Owner, TeardownOptions{Secrets: []ObjectRef{r.Secret}, Wait: true}); err != nil {
		t.Fatalf("teardown of %s: %v", r.Plan.Key, err)
	}
}

// Many jobs of one lineage at once, few slots: no two builders ever share a volume, by the
// holder annotations and by the pods' own volumes; the jobs past the slots get cold builders and
// say why; a slot is free again once its builder pod is gone, and the next job gets it warm.
func TestIntegrationCacheVolumeRaceNeverSharesAVolume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	const jobs, slots = 6, 2
	prov := env.provisioner(t)
	results := make([]*Result, jobs)
	errs := make([]error, jobs)
	var wg sync.WaitGroup
	for i := range jobs {
		plan := env.cachePlan(t, fmt.Sprintf("race-%d", i), false, Inputs{CacheMaxSlots: fmt.Sprint(slots), CacheSize: "1Gi"}, 3*time.Minute)
		wg.Go(func() { results[i], errs[i] = prov.Provision(ctx, plan) })
	}
	wg.Wait()
	volumeOf := map[string]string{}
	cold := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("job %d: %v", i, errs[i])
		}
		c := r.Cache[0]
		t.Logf("job %d: %s", i, c.Why)
		if c.Volume == "" {
			cold++
			if !strings.Contains(c.Why, "cold builder") || !strings.Contains(c.Why, InputCacheMaxSlots) {
				t.Errorf("job %d is cold without saying why: %q", i, c.Why)
			}
			continue
		}
		if other, ok := volumeOf[c.Volume]; ok {
			t.Errorf("jobs %s and %d both hold cache volume %s", other, i, c.Volume)
		}
		volumeOf[c.Volume] = fmt.Sprint(i)
	}
	if len(volumeOf) != slots || cold != jobs-slots {
		t.Errorf("%d jobs on volumes and %d cold, want %d and %d", len(volumeOf), cold, slots, jobs-slots)
	}
	// What the cluster says: each claim is mounted by exactly the one pod its holder names.
	pods, err := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: ManagedSelector()})
	if err != nil {
		t.Fatal(err)
	}
	mountedBy := map[string][]string{}
	uidOf := map[string]string{}
	for _, pod := range pods.Items {
		uidOf[pod.Name] = string(pod.UID)
		for _, v := range pod.Spec.Volumes {
			if v.PersistentVolumeClaim != nil {
				mountedBy[v.PersistentVolumeClaim.ClaimName] = append(mountedBy[v.PersistentVolumeClaim.ClaimName], pod.Name)
			}
		}
	}
	claims, err := env.admin.CoreV1().PersistentVolumeClaims(env.ns).List(ctx, metav1.ListOptions{LabelSelector: CacheSelector()})
	if err != nil {
		t.Fatal(err)
	}
	if len(claims.Items) != slots {
		t.Errorf("%d cache volumes, want %d (cache-max-slots)", len(claims.Items), slots)
	}
	for _, pvc := range claims.Items {
		h, _ := holderOf(&pvc)
		if got := mountedBy[pvc.Name]; len(got) != 1 || got[0] != h.Pod || uidOf[h.Pod] != string(h.UID) {
			t.Errorf("cache volume %s: mounted by %v, holder %+v (live uid %s)", pvc.Name, got, h, uidOf[h.Pod])
		}
		if pvc.Status.Phase != corev1.ClaimBound || !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}) {
			t.Errorf("cache volume %s: %s, %v", pvc.Name, pvc.Status.Phase, pvc.Spec.AccessModes)
		}
	}
	// The builder goes (here by teardown; equally by the runner pod's garbage collection): its
	// slot is free for the next job, warm, with no step releasing it.
	var freed *Result
	for _, r := range results {
		if r.Cache[0].Volume != "" {
			freed = r
			break
		}
	}
	env.teardown(t, ctx, prov, freed)
	next, err := prov.Provision(ctx, env.cachePlan(t, "race-next", false, Inputs{CacheMaxSlots: fmt.Sprint(slots), CacheSize: "1Gi"}, 3*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if got := next.Cache[0]; got.Volume != freed.Cache[0].Volume || !strings.HasPrefix(got.Why, "warm") {
		t.Errorf("next job after %s's builder went: %+v, want its volume %s, warm", freed.Plan.Key, got, freed.Cache[0].Volume)
	}
}

// buildStep runs a RUN step that takes a few seconds on the builder and returns how long the
// solve took and whether BuildKit answered the step from its cache. Its root file system is a
// build context holding the host's static busybox, so the test needs no base image.
func buildStep(t *testing.T, ctx context.Context, r *Result, contextDir string) (time.Duration, bool) {
	t.Helper()
	tlsConfig, err := r.Credentials.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := newBuildkitClient(ctx, r.Builders[0].Endpoint, tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// As a Dockerfile's COPY: the step's input is keyed by the files' content, not the session.
	rootfs := llb.Scratch().File(llb.Copy(llb.Local("context", llb.SharedKeyHint("cache-test")), "busybox", "/busybox"))
	def, err := rootfs.Run(llb.Args([]string{"/busybox", "sh", "-c", "/busybox sleep 5 && /busybox echo cached-step > /out"}), llb.WithCustomName("slow step")).Root().Marshal(ctx, llb.LinuxAmd64)
	if err != nil {
		t.Fatal(err)
	}
	if du, err := c.DiskUsage(ctx); err == nil {
		var size int64
		for _, d := range du {
			size += d.Size
		}
		t.Logf("%s holds %d cache records, %d bytes, before the build", r.Builders[0].Pod, len(du), size)
	}
	contextFS, err := fsutil.NewFS(contextDir)
	if err != nil {
		t.Fatal(err)
	}
	status := make(chan *bkclient.SolveStatus)
	cached := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s := range status {
			for _, v := range s.Vertexes {
				if v.Name == "slow step" && v.Cached {
					cached = true
				}
			}
		}
	}()
	start := time.Now()
	if _, err := c.Solve(ctx, def, bkclient.SolveOpt{LocalMounts: map[string]fsutil.FS{"context": contextFS}}, status); err != nil {
		t.Fatalf("build on %s: %v", r.Builders[0].Pod, err)
	}
	took := time.Since(start)
	<-done
	return took, cached
}

// busyboxContext is a build context with the host's static busybox (Debian's busybox-static,
// which the BuildKit image is made with).
func busyboxContext(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A RUN step's cache survives the job: the next job of the lineage gets the volume and the step
// from cache. A pull request from a fork never mounts that volume: its step runs again.
func TestIntegrationCacheVolumeWarmRebuildAndForkIsolation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	prov := env.provisioner(t)
	contextDir := busyboxContext(t)
	in := Inputs{CacheSize: "2Gi"}

	run := func(jobID string, fork bool, in Inputs) (CacheChoice, time.Duration, bool) {
		t.Helper()
		r, err := prov.Provision(ctx, env.cachePlan(t, jobID, fork, in, time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		took, cached := buildStep(t, ctx, r, contextDir)
		env.teardown(t, ctx, prov, r)
		var c CacheChoice
		if len(r.Cache) > 0 {
			c = r.Cache[0]
		}
		t.Logf("%s: %s; build %.2fs, step cached %v", jobID, c.Why, took.Seconds(), cached)
		return c, took, cached
	}
	off := in
	off.Cache = "off"
	_, coldBuilder, cachedOff := run("cold-reference", false, off)
	first, firstBuild, cachedFirst := run("first", false, in)
	second, warmBuild, cachedSecond := run("second", false, in)
	fork, forkBuild, cachedFork := run("fork", true, in)

	if cachedOff || cachedFirst || !first.New {
		t.Errorf("first job: %+v, cached %v; want a new volume and the step run", first, cachedFirst)
	}
	if second.Volume != first.Volume || !cachedSecond {
		t.Errorf("second job: %+v, cached %v; want %s and the step from cache", second, cachedSecond, first.Volume)
	}
	if fork.Volume == "" || fork.Volume == first.Volume || cachedFork {
		t.Errorf("fork job: %+v, cached %v; want a volume of its own and the step run again", fork, cachedFork)
	}
	if warmBuild*3 > coldBuilder {
		t.Errorf("warm rebuild %.2fs is not 3x faster than a cold builder's %.2fs", warmBuild.Seconds(), coldBuilder.Seconds())
	}
	t.Logf("FIGURE cold builder %.2fs, first on a new volume %.2fs, warm %.2fs (%.1fx), fork %.2fs",
		coldBuilder.Seconds(), firstBuild.Seconds(), warmBuild.Seconds(), coldBuilder.Seconds()/warmBuild.Seconds(), forkBuild.Seconds())
}

// A volume that cannot be had within the bound, and a volume on which buildkitd fails, each give
// a cold builder and a warning naming the reason; the damaged volume leaves the pool.
func TestIntegrationCacheVolumeFallsBackToCold(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	prov := env.provisioner(t)
	var warnings []string
	var mu sync.Mutex
	prov.Warning = func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		t.Logf("warning: %s", msg)
		warnings = append(warnings, msg)
	}
	lastWarning := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(warnings) == 0 {
			return ""
		}
		return warnings[len(warnings)-1]
	}

	// No such StorageClass: the claim never binds, the pod is never scheduled.
	start := time.Now()
	r, err := prov.Provision(ctx, env.cachePlan(t, "unbindable", false, Inputs{CacheStorageClass: "no-such-class"}, 10*time.Second))
	if err != nil {
		t.Fatalf("a volume that cannot be bound failed the job: %v", err)
	}
	if r.Cache[0].Volume != "" || r.Builders[0].Pod == "" || !strings.Contains(lastWarning(), "cold") {
		t.Errorf("unbindable volume: %+v, warning %q; want a cold builder and a warning", r.Cache[0], lastWarning())
	}
	t.Logf("FIGURE unbindable volume to a ready cold builder: %.1fs", time.Since(start).Seconds())
	if !strings.Contains(lastWarning(), "never bound") {
		t.Errorf("the unbindable volume stays in the pool: %q", lastWarning())
	}
	env.teardown(t, ctx, prov, r)

	// A volume buildkitd cannot start on: its state directory's worker root is a file.
	r, err = prov.Provision(ctx, env.cachePlan(t, "healthy", false, Inputs{CacheKey: "damage"}, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	volume := r.Cache[0].Volume
	env.teardown(t, ctx, prov, r)
	pvc, err := env.admin.CoreV1().PersistentVolumeClaims(env.ns).Get(ctx, volume, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv, err := env.admin.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(pv.Spec.HostPath.Path, "runc-overlayfs")
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root, []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err = prov.Provision(ctx, env.cachePlan(t, "on-damaged", false, Inputs{CacheKey: "damage"}, time.Minute))
	if err != nil {
		t.Fatalf("a damaged volume failed the job: %v", err)
	}
	if r.Cache[0].Volume != "" || !strings.Contains(lastWarning(), "damaged") {
		t.Errorf("damaged volume: %+v, warning %q; want a cold builder and the damage named", r.Cache[0], lastWarning())
	}
	if got, err := env.admin.CoreV1().PersistentVolumeClaims(env.ns).Get(ctx, volume, metav1.GetOptions{}); !apierrors.IsNotFound(err) && (err != nil || got.DeletionTimestamp == nil) {
		t.Errorf("damaged volume %s is still in the pool: %v", volume, err)
	}
}

// The janitor removes a volume unused too long and the least recently used past the count
// budget, and never the one a live builder holds.
func TestIntegrationCacheVolumeJanitorEvicts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	prov := env.provisioner(t)
	plan := env.cachePlan(t, "janitor-live", false, Inputs{}, time.Minute)
	live, err := prov.Provision(ctx, plan)
	if err != nil {
		t.Fatal(err)
	}
	held := live.Cache[0].Volume
	// Two more slots of the lineage, free: one a month unused, one an hour.
	lineage := plan.Options.Cache.Lineage(plan.Options.Job, live.Builders[0].Platform)
	for slot, unused := range map[int]time.Duration{1: 30 * 24 * time.Hour, 2: time.Hour} {
		pvc := RenderCacheVolume(plan, live.Builders[0].Platform, lineage, slot, time.Now().Add(-unused))
		delete(pvc.Annotations, AnnotationCacheHolder)
		if _, err := env.admin.CoreV1().PersistentVolumeClaims(env.ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Held volumes are older still: the held one must survive both rules.
	decisions, err := (&Provisioner{Client: env.admin}).CollectCacheVolumes(ctx, env.ns, CacheBudget{MaxUnused: 24 * time.Hour, MaxCount: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range decisions {
		t.Logf("%s: delete %v: %s", d.Volume, d.Delete, d.Reason)
	}
	left, err := env.admin.CoreV1().PersistentVolumeClaims(env.ns).List(ctx, metav1.ListOptions{LabelSelector: CacheSelector()})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, pvc := range left.Items {
		if pvc.DeletionTimestamp == nil {
			names = append(names, pvc.Name)
		}
	}
	if !slices.Equal(names, []string{held}) {
		t.Errorf("volumes left %v, want only the held %s", names, held)
	}
}
