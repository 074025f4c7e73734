package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/auditlog"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/benchtable"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// benchIterations is how many times each interleaved comparison runs (BENCH_ITERATIONS).
func benchIterations() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_ITERATIONS")); err == nil && n > 0 {
		return n
	}
	return 3
}

// benchConcurrent is how many jobs start at once in the concurrency rows (BENCH_CONCURRENT).
func benchConcurrent() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_CONCURRENT")); err == nil && n > 0 {
		return n
	}
	return 10
}

// vsDriverDone makes BenchmarkIntegrationVsDriver measure once per process: the testing package
// calls a benchmark again with a larger b.N, and one comparison takes minutes; the function
// runs its own interleaved iterations instead (benchIterations).
var vsDriverDone bool

// BenchmarkIntegrationVsDriver compares, on the local cluster, with the same BuildKit image and
// in one interleaved run, this tool's per-job builders (the real CLI: up, docker buildx, down,
// under the shipped Role) with buildx's kubernetes driver (docker buildx create --driver
// kubernetes, under a Role that lets it create Deployments and exec into pods), and prints a
// table: time to a usable two-arch builder beside a bare pod's time to Running, API requests
// per job at the server (audit log), a 256 MiB build context, cleanup, a rebuild after a
// one-line change (cold, registry cache, the driver's warm long-lived builder), the client-side
// type=local cache, and N concurrent jobs against a lone one.
func BenchmarkIntegrationVsDriver(b *testing.B) {
	if testing.Short() {
		b.Skip("integration benchmark")
	}
	if vsDriverDone {
		return
	}
	vsDriverDone = true
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	e := newBenchEnv(ctx, b)
	iterations := benchIterations()
	tab := benchtable.Table{Ours: "setup-ephemeral-buildkit", Theirs: "kubernetes driver"}

	// 1. One job after another, ours and the driver's interleaved: set-up to a usable two-arch
	// builder, one two-platform build, a 256 MiB context, teardown until the pods are gone.
	var ours, theirs jobFigures
	var bare []float64
	for i := 0; i < iterations; i++ {
		bare = append(bare, e.barePodRunning(ctx, b, i).Seconds())
		ours.add(e.oursJob(ctx, b, fmt.Sprintf("seq-%d", i)))
		theirs.add(e.driverJob(ctx, b, fmt.Sprintf("seq%d", i)))
	}
	tab.Add(benchtable.Row{Measure: "step start -> usable two-arch builder", Unit: "s", Ours: ours.setup, Theirs: theirs.setup,
		Note: fmt.Sprintf("ours / bare pod = %.2fx %s", benchtable.Median(ours.setup)/benchtable.Median(bare), verdict(benchtable.Median(ours.setup)/benchtable.Median(bare), 1.3, false))})
	tab.Add(benchtable.Row{Measure: "bare pod create -> Running (same node)", Unit: "s", Ours: bare, Note: "the physical limit"})
	tab.Add(benchtable.Row{Measure: "one build, two platforms (RUN sleep 5)", Unit: "s", Ours: ours.build, Theirs: theirs.build, Note: "cold builders"})
	tab.Add(benchtable.Row{Measure: "256 MiB build context (linux/amd64)", Unit: "s", Ours: ours.context, Theirs: theirs.context,
		Note: fmt.Sprintf("%.0f / %.0f MiB/s (direct mTLS / exec tunnel)", 256/benchtable.Median(ours.context), 256/benchtable.Median(theirs.context))})
	tab.Add(benchtable.Row{Measure: "cleanup until the pods are gone", Unit: "s", Ours: ours.cleanup, Theirs: theirs.cleanup})
	tab.Add(benchtable.Row{Measure: "API requests per job (setup, builds, teardown)", Unit: "req", Ours: ours.requests, Theirs: theirs.requests,
		Note: "at the API server (audit log)"})

	for _, r := range cpuRows {
		tab.Add(benchtable.Row{Measure: "set-up CPU: " + r.group, Unit: "cpu-s", Ours: ours.setupCPU[r.group], Theirs: theirs.setupCPU[r.group], Note: r.note})
	}
	tab.Add(benchtable.Row{Measure: "set-up CPU: control plane and node, total", Unit: "cpu-s", Ours: ours.sumCPU(controlPlane), Theirs: theirs.sumCPU(controlPlane),
		Note: "the rows above from kube-apiserver on, per job"})

	// 2. A rebuild after a one-line change behind a 5 s RUN step.
	rb := e.rebuilds(ctx, b, iterations)
	tab.Add(benchtable.Row{Measure: "cold build (RUN sleep 5, linux/amd64)", Unit: "s", Ours: rb.oursCold, Theirs: rb.driverCold,
		Note: "ours: fresh builder, and it exports the registry cache"})
	coldOverVolume := benchtable.Median(rb.oursCold) / benchtable.Median(rb.oursVolume)
	tab.Add(benchtable.Row{Measure: "rebuild: (a) our cache volume vs (c) driver warm", Unit: "s", Ours: rb.oursVolume, Theirs: rb.driverWarm,
		Note: fmt.Sprintf("ours cold / volume = %.2fx %s; volume / driver warm %s", coldOverVolume, verdict(coldOverVolume, 3, true),
			verdict(benchtable.Median(rb.oursVolume)/benchtable.Median(rb.driverWarm), 1.2, false))})
	coldOverRegistry := benchtable.Median(rb.oursCold) / benchtable.Median(rb.oursRegistry)
	tab.Add(benchtable.Row{Measure: "rebuild: (b) our registry cache vs (c) driver warm", Unit: "s", Ours: rb.oursRegistry, Theirs: rb.driverWarm,
		Note: fmt.Sprintf("ours cold / registry cache = %.2fx %s", coldOverRegistry, verdict(coldOverRegistry, 2, true))})
	tab.Add(benchtable.Row{Measure: "type=local cache: export (cache-to type=local,mode=max)", Unit: "s", Ours: rb.localExport,
		Note: fmt.Sprintf("%.1f MiB carried by the CI system's cache", benchtable.Median(rb.localSizeMiB))})
	tab.Add(benchtable.Row{Measure: "type=local cache: rebuild on a fresh builder", Unit: "s", Ours: rb.localImport, Note: "import from the client"})

	// 3. N jobs at once against a lone one.
	n := benchConcurrent()
	conc := e.concurrent(ctx, b, n)
	tab.Add(benchtable.Row{Measure: "lone job to usable builder (before and after the batch)", Unit: "s", Ours: conc.oursLone, Theirs: conc.driverLone,
		Note: "the baseline of the concurrency rows"})
	for _, p := range []float64{50, 95} {
		o, t := benchtable.Percentile(conc.ours, p), benchtable.Percentile(conc.driver, p)
		note := fmt.Sprintf("vs a lone job: ours %.2fx, driver %.2fx", o/benchtable.Median(conc.oursLone), t/benchtable.Median(conc.driverLone))
		if p == 95 {
			note += "; ours " + verdict(o/benchtable.Median(conc.oursLone), 3, false)
		}
		tab.Add(benchtable.Row{Measure: fmt.Sprintf("%d concurrent jobs: p%.0f to usable builder", n, p), Unit: "s", Ours: []float64{o}, Theirs: []float64{t}, Note: note})
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nsetup-ephemeral-buildkit vs buildx kubernetes driver (same cluster, image %s, %d interleaved iterations)\n", e.image, iterations)
	if err := tab.Fprint(&out); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(&out, "\nAPI requests of one job, by verb and resource:\n  ours:   %s\n  driver: %s\n", ours.lastCounts, theirs.lastCounts)
	fmt.Print(out.String())
}

// benchEnv is the bench's world: one namespace, a runner pod, the runners' ServiceAccount under
// the shipped Role and the driver's under its own, each with a kubeconfig, and the build contexts.
type benchEnv struct {
	c          *localcluster.Cluster
	admin      kubernetes.Interface
	ns, tools  string
	image      string
	processEnv []string
	// runnerKubeconfig and driverKubeconfig authenticate as the ServiceAccounts "runner" and
	// "driver"; the audit log tells their requests apart by those names.
	runnerKubeconfig, driverKubeconfig string
	// small is a two-stage-shaped build: a base image, a 5 s RUN step, then a file the rebuild
	// changes; big holds a 256 MiB file the build copies.
	small, big string
}

func newBenchEnv(ctx context.Context, b *testing.B) *benchEnv {
	b.Helper()
	c := localcluster.ForTest(b)
	e := &benchEnv{c: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig()), image: k8sprov.DefaultImage}
	e.ns = c.CreateNamespace(ctx, b, "bench")
	e.tools = os.Getenv("CACHE_DIR")
	if e.tools == "" {
		home, _ := os.UserHomeDir()
		e.tools = filepath.Join(home, ".cache", "setup-ephemeral-buildkit")
	}
	dir := b.TempDir()
	c.ApplyShippedRBAC(ctx, b, e.ns, "runner", "../../deploy/rbac.yaml")
	c.CreateRunnerPod(ctx, b, e.ns, "runner-pod", "runner")
	e.runnerKubeconfig = filepath.Join(dir, "runner.kubeconfig")
	c.WriteServiceAccountKubeconfig(ctx, b, e.ns, "runner", e.runnerKubeconfig)
	e.grantDriver(ctx, b)
	e.driverKubeconfig = filepath.Join(dir, "driver.kubeconfig")
	c.WriteServiceAccountKubeconfig(ctx, b, e.ns, "driver", e.driverKubeconfig)

	dockerConfig := filepath.Join(dir, "docker")
	if err := os.MkdirAll(dockerConfig, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(e.tools, "docker", "cli-plugins"), filepath.Join(dockerConfig, "cli-plugins")); err != nil {
		b.Fatal(err)
	}
	e.processEnv = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig, "KUBECONFIG="+e.driverKubeconfig,
		"PATH="+filepath.Join(e.tools, "bin")+":"+os.Getenv("PATH"), "BUILDKIT_PROGRESS=plain")

	e.small = filepath.Join(dir, "small")
	e.writeFiles(b, e.small, map[string]string{
		"Dockerfile": "FROM debian:bookworm-slim\nARG NONCE\nRUN echo \"$NONCE\" > /nonce && sleep 5\nCOPY app.txt /app.txt\n",
		"app.txt":    "version 1\n",
	})
	e.big = filepath.Join(dir, "big")
	e.writeFiles(b, e.big, map[string]string{"Dockerfile": "FROM scratch\nCOPY big.bin /big.bin\n"})
	f, err := os.Create(filepath.Join(e.big, "big.bin"))
	if err != nil {
		b.Fatal(err)
	}
	// Random bytes: nothing on the way can compress them.
	if _, err := io.CopyN(f, rand.Reader, 256<<20); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return e
}

func (e *benchEnv) writeFiles(b *testing.B, dir string, files map[string]string) {
	b.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// grantDriver gives ServiceAccount "driver" what buildx's kubernetes driver uses: Deployments,
// ConfigMaps, pods and pods/exec (its build connection), in the bench's namespace.
func (e *benchEnv) grantDriver(ctx context.Context, b *testing.B) {
	b.Helper()
	if _, err := e.admin.CoreV1().ServiceAccounts(e.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "driver"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "buildx-driver"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets"}, Verbs: []string{"*"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps", "pods", "pods/exec"}, Verbs: []string{"*"}},
	}}
	if _, err := e.admin.RbacV1().Roles(e.ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "buildx-driver"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "buildx-driver"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "driver", Namespace: e.ns}}}
	if _, err := e.admin.RbacV1().RoleBindings(e.ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
}

// run runs a command with the bench's environment plus env, and returns its combined output.
func (e *benchEnv) run(ctx context.Context, b *testing.B, env map[string]string, args ...string) string {
	b.Helper()
	return e.runIn(ctx, b, "", env, args...)
}

// runIn is run in directory dir ("" for the current one).
func (e *benchEnv) runIn(ctx context.Context, b *testing.B, dir string, env map[string]string, args ...string) string {
	b.Helper()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append([]string(nil), e.processEnv...)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	started := time.Now()
	f()
	return time.Since(started)
}

// barePodRunning creates a pod of the pause image on the node and returns the time until the
// API server reports it Running: what any pod-based builder pays at least.
func (e *benchEnv) barePodRunning(ctx context.Context, b *testing.B, i int) time.Duration {
	b.Helper()
	name := fmt.Sprintf("bare-%d", i)
	w, err := e.admin.CoreV1().Pods(e.ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	started := time.Now()
	if _, err := e.admin.CoreV1().Pods(e.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: "", TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "pause", Image: e.c.Info.Images["pause"], ImagePullPolicy: corev1.PullNever}}},
	}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for ev := range w.ResultChan() {
		if pod, ok := ev.Object.(*corev1.Pod); ok && ev.Type == watch.Modified && pod.Status.Phase == corev1.PodRunning {
			took := time.Since(started)
			_ = e.admin.CoreV1().Pods(e.ns).Delete(ctx, name, metav1.DeleteOptions{})
			return took
		}
	}
	b.Fatalf("pod %s never ran: %v", name, ctx.Err())
	return 0
}

// jobResult is one job's figures.
type jobResult struct {
	setup, build, context, cleanup time.Duration
	requests                       auditlog.Counts
	// setupCPU is the CPU time the set-up cost, by process group.
	setupCPU cpuSample
}

// jobFigures collects jobs' figures in seconds.
type jobFigures struct {
	setup, build, context, cleanup, requests []float64
	lastCounts                               auditlog.Counts
	setupCPU                                 map[string][]float64
}

func (f *jobFigures) add(r jobResult) {
	f.setup = append(f.setup, r.setup.Seconds())
	f.build = append(f.build, r.build.Seconds())
	f.context = append(f.context, r.context.Seconds())
	f.cleanup = append(f.cleanup, r.cleanup.Seconds())
	f.requests = append(f.requests, float64(r.requests.Total()))
	f.lastCounts = r.requests
	if f.setupCPU == nil {
		f.setupCPU = map[string][]float64{}
	}
	// Every row's group, 0 where no such process ran: the jobs' values stay aligned for sumCPU.
	for _, row := range cpuRows {
		f.setupCPU[row.group] = append(f.setupCPU[row.group], r.setupCPU[row.group])
	}
}

// sumCPU is, per job, the set-up CPU of groups together.
func (f *jobFigures) sumCPU(groups []string) []float64 {
	var sums []float64
	for _, g := range groups {
		for i, v := range f.setupCPU[g] {
			if i == len(sums) {
				sums = append(sums, 0)
			}
			sums[i] += v
		}
	}
	return sums
}

// requestsOf counts ServiceAccount sa's requests received in [from, to) in the audit log.
func (e *benchEnv) requestsOf(b *testing.B, sa string, from, to time.Time) auditlog.Counts {
	b.Helper()
	events, err := auditlog.ReadFile(e.c.Info.AuditLogFile)
	if err != nil {
		b.Fatal(err)
	}
	return auditlog.Count(events, auditlog.ServiceAccount(e.ns, sa), from, to)
}

// oursUp runs the CLI's up for a job under the runners' ServiceAccount and returns its exports.
func (e *benchEnv) oursUp(ctx context.Context, b *testing.B, jobID, platforms, stateDir string, extra ...string) map[string]string {
	b.Helper()
	var stdout, stderr bytes.Buffer
	deps := DefaultDeps("bench")
	deps.Getenv = func(string) string { return "" }
	deps.Stdout, deps.Stderr = &stdout, &stderr
	deps.Runner = buildx.ExecRunner{Env: e.processEnv}
	selectors := "linux/amd64=" + e.c.Info.ArchNodeLabels["amd64"] + ";linux/arm64=kubernetes.io/arch-," + e.c.Info.ArchNodeLabels["arm64"]
	args := append([]string{"up", "--kubeconfig", e.runnerKubeconfig, "--namespace", e.ns, "--owner-pod", "runner-pod",
		"--platforms", platforms, "--node-selector", selectors, "--job-id", jobID, "--state-dir", stateDir,
		"--buildkitd-config", e.c.Info.BuildkitdConfigFile, "--termination-grace-period", "5s"}, extra...)
	if err := Run(ctx, args, deps); err != nil {
		b.Fatalf("up %s: %v\n%s", jobID, err, stderr.String())
	}
	return parseExports(b, stdout.String())
}

// oursDown runs down and waits until the job's pods are gone.
func (e *benchEnv) oursDown(ctx context.Context, b *testing.B, stateDir, builder string) {
	b.Helper()
	var log bytes.Buffer
	deps := DefaultDeps("bench")
	deps.Getenv = func(string) string { return "" }
	deps.Stdout, deps.Stderr = &log, &log
	deps.Runner = buildx.ExecRunner{Env: e.processEnv}
	if err := Run(ctx, []string{"down", "--state-dir", stateDir}, deps); err != nil {
		b.Fatalf("down: %v\n%s", err, log.String())
	}
	key := strings.TrimPrefix(builder, "buildkit-")
	e.waitPodsGone(ctx, b, metav1.ListOptions{LabelSelector: k8sprov.LabelJobKey + "=" + key}, "")
}

// waitPodsGone waits until no pod matches opts (and, if prefix is set, has a name starting with
// it).
func (e *benchEnv) waitPodsGone(ctx context.Context, b *testing.B, opts metav1.ListOptions, prefix string) {
	b.Helper()
	for {
		pods, err := e.admin.CoreV1().Pods(e.ns).List(ctx, opts)
		if err != nil {
			b.Fatal(err)
		}
		left := 0
		for _, p := range pods.Items {
			if strings.HasPrefix(p.Name, prefix) {
				left++
			}
		}
		if left == 0 {
			return
		}
		select {
		case <-ctx.Done():
			b.Fatalf("%d pods left: %v", left, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// oursJob is one CI job with our builders: up, a two-platform build, the 256 MiB context, down.
func (e *benchEnv) oursJob(ctx context.Context, b *testing.B, id string) jobResult {
	b.Helper()
	var r jobResult
	stateDir := filepath.Join(b.TempDir(), "state")
	start := time.Now()
	var exports map[string]string
	cpu := sampleCPU()
	r.setup = timed(func() { exports = e.oursUp(ctx, b, id, "linux/amd64,linux/arm64", stateDir) })
	r.setupCPU = sampleCPU().since(cpu)
	r.build = timed(func() {
		e.run(ctx, b, exports, "docker", "buildx", "build", "--platform", "linux/amd64,linux/arm64", "--build-arg", "NONCE="+id, e.small)
	})
	r.context = timed(func() { e.run(ctx, b, exports, "docker", "buildx", "build", "--platform", "linux/amd64", e.big) })
	r.cleanup = timed(func() { e.oursDown(ctx, b, stateDir, exports[EnvBuildxBuilder]) })
	r.requests = e.requestsOf(b, "runner", start, time.Now())
	return r
}

// driverCreate creates a kubernetes-driver builder with one node per platform, as its
// documentation shows for several architectures, each node on the local node's label for it.
func (e *benchEnv) driverCreate(ctx context.Context, b *testing.B, name string, platforms ...string) {
	b.Helper()
	for i, p := range platforms {
		arch := strings.TrimPrefix(p, "linux/")
		args := []string{"docker", "buildx", "create", "--name", name, "--driver", "kubernetes", "--platform", p, "--node", name + "-" + arch,
			"--driver-opt", "namespace=" + e.ns + ",image=" + e.image + ",replicas=1,timeout=180s,\"nodeselector=" + e.c.Info.ArchNodeLabels[arch] + "\"",
			"--buildkitd-config", e.c.Info.BuildkitdConfigFile}
		if i > 0 {
			args = append(args, "--append")
		}
		e.run(ctx, b, nil, args...)
	}
	e.run(ctx, b, nil, "docker", "buildx", "inspect", "--bootstrap", name)
}

// driverRemove removes the builder and waits until its pods are gone.
func (e *benchEnv) driverRemove(ctx context.Context, b *testing.B, name string) {
	b.Helper()
	e.run(ctx, b, nil, "docker", "buildx", "rm", name)
	e.waitPodsGone(ctx, b, metav1.ListOptions{}, name+"-")
}

// driverJob is the same job with a fresh kubernetes-driver builder.
func (e *benchEnv) driverJob(ctx context.Context, b *testing.B, id string) jobResult {
	b.Helper()
	var r jobResult
	name := "drv-" + id
	start := time.Now()
	cpu := sampleCPU()
	r.setup = timed(func() { e.driverCreate(ctx, b, name, "linux/amd64", "linux/arm64") })
	r.setupCPU = sampleCPU().since(cpu)
	r.build = timed(func() {
		e.run(ctx, b, nil, "docker", "buildx", "build", "--builder", name, "--platform", "linux/amd64,linux/arm64", "--build-arg", "NONCE="+id, e.small)
	})
	r.context = timed(func() {
		e.run(ctx, b, nil, "docker", "buildx", "build", "--builder", name, "--platform", "linux/amd64", e.big)
	})
	r.cleanup = timed(func() { e.driverRemove(ctx, b, name) })
	r.requests = e.requestsOf(b, "driver", start, time.Now())
	return r
}

// rebuildFigures are the rebuild rows, in seconds.
type rebuildFigures struct {
	oursCold, oursVolume, oursRegistry, driverCold, driverWarm []float64
	localExport, localImport, localSizeMiB                     []float64
}

// rebuilds measures, on linux/amd64, a build whose 5 s RUN step is new (a fresh NONCE each
// iteration) and its rebuild after a one-line change to the file copied after it: ours on a
// fresh builder with the registry cache the cold job wrote, ours with a type=local cache carried
// by the client (as actions/cache or GitLab's cache: would), and the driver on one long-lived
// builder that keeps its local cache between jobs.
func (e *benchEnv) rebuilds(ctx context.Context, b *testing.B, iterations int) rebuildFigures {
	b.Helper()
	var f rebuildFigures
	driver := "drv-warm"
	e.driverCreate(ctx, b, driver, "linux/amd64")
	defer e.driverRemove(ctx, b, driver)
	for i := 0; i < iterations; i++ {
		nonce := fmt.Sprintf("rebuild-%d-%d", time.Now().UnixNano(), i)
		repo := e.c.Info.Registry + "/bench/" + e.ns + "/cache-" + strconv.Itoa(i)
		localDir := filepath.Join(b.TempDir(), "local-cache")
		e.writeFiles(b, e.small, map[string]string{"app.txt": "version 1\n"})
		build := func(env map[string]string, extra ...string) time.Duration {
			args := append([]string{"docker", "buildx", "build", "--platform", "linux/amd64", "--build-arg", "NONCE=" + nonce}, extra...)
			return timed(func() { e.run(ctx, b, env, append(args, e.small)...) })
		}

		// Ours, cold: a fresh job on a new cache volume that writes the registry cache, and the
		// type=local cache.
		state := filepath.Join(b.TempDir(), "state")
		volume := []string{"--cache", "volume", "--cache-key", nonce}
		exports := e.oursUp(ctx, b, "cold-"+strconv.Itoa(i), "linux/amd64", state, append(volume, "--cache-ref", repo, "--cache-write", "true")...)
		f.oursCold = append(f.oursCold, build(exports, "--cache-to", exports["BUILDKIT_CACHE_TO_AMD64"]).Seconds())
		f.localExport = append(f.localExport, build(exports, "--cache-to", "type=local,dest="+localDir+",mode=max").Seconds())
		f.localSizeMiB = append(f.localSizeMiB, float64(dirSize(b, localDir))/(1<<20))
		e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])

		// The driver, cold on its long-lived builder (the step is new to it).
		f.driverCold = append(f.driverCold, build(nil, "--builder", driver).Seconds())

		// The one-line change.
		e.writeFiles(b, e.small, map[string]string{"app.txt": "version 2\n"})

		// Ours, a later job on the cache volume the cold job left.
		state = filepath.Join(b.TempDir(), "state")
		exports = e.oursUp(ctx, b, "vol-"+strconv.Itoa(i), "linux/amd64", state, volume...)
		f.oursVolume = append(f.oursVolume, build(exports).Seconds())
		e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])

		// Ours, a later job: fresh builder, the registry cache.
		state = filepath.Join(b.TempDir(), "state")
		exports = e.oursUp(ctx, b, "warm-"+strconv.Itoa(i), "linux/amd64", state, "--cache-ref", repo, "--cache-write", "false")
		f.oursRegistry = append(f.oursRegistry, build(exports, "--cache-from", exports["BUILDKIT_CACHE_FROM_AMD64"]).Seconds())
		e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])

		// Ours, another later job: fresh builder, the type=local cache from the client.
		state = filepath.Join(b.TempDir(), "state")
		exports = e.oursUp(ctx, b, "local-"+strconv.Itoa(i), "linux/amd64", state)
		f.localImport = append(f.localImport, build(exports, "--cache-from", "type=local,src="+localDir).Seconds())
		e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])

		// The driver, warm: the same long-lived builder.
		f.driverWarm = append(f.driverWarm, build(nil, "--builder", driver).Seconds())
	}
	return f
}

// dirSize is the total size of the regular files under dir.
func dirSize(b *testing.B, dir string) int64 {
	b.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// concurrentFigures are the concurrency rows: n jobs at once, and lone jobs measured just
// before and just after them.
type concurrentFigures struct {
	ours, driver, oursLone, driverLone []float64
}

// concurrent starts n jobs of ours at once, then n of the driver's, each to a usable two-arch
// builder, each batch between two lone jobs of the same kind, and returns each job's time to
// it; every builder is removed afterwards.
func (e *benchEnv) concurrent(ctx context.Context, b *testing.B, n int) concurrentFigures {
	b.Helper()
	var f concurrentFigures
	oursLone := func(id string) {
		state := filepath.Join(b.TempDir(), "state")
		var exports map[string]string
		f.oursLone = append(f.oursLone, timed(func() { exports = e.oursUp(ctx, b, id, "linux/amd64,linux/arm64", state) }).Seconds())
		e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])
	}
	driverLone := func(name string) {
		f.driverLone = append(f.driverLone, timed(func() { e.driverCreate(ctx, b, name, "linux/amd64", "linux/arm64") }).Seconds())
		e.driverRemove(ctx, b, name)
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	type up struct{ state, builder string }
	var ups []up
	oursLone("lone-before")
	for j := 0; j < n; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			state := filepath.Join(b.TempDir(), "state")
			var exports map[string]string
			took := timed(func() { exports = e.oursUp(ctx, b, fmt.Sprintf("conc-%d", j), "linux/amd64,linux/arm64", state) })
			mu.Lock()
			f.ours = append(f.ours, took.Seconds())
			ups = append(ups, up{state, exports[EnvBuildxBuilder]})
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, u := range ups {
		e.oursDown(ctx, b, u.state, u.builder)
	}
	oursLone("lone-after")

	driverLone("drv-lonebefore")
	for j := 0; j < n; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			took := timed(func() { e.driverCreate(ctx, b, fmt.Sprintf("drv-conc%d", j), "linux/amd64", "linux/arm64") })
			mu.Lock()
			f.driver = append(f.driver, took.Seconds())
			mu.Unlock()
		}()
	}
	wg.Wait()
	for j := 0; j < n; j++ {
		e.driverRemove(ctx, b, fmt.Sprintf("drv-conc%d", j))
	}
	driverLone("drv-loneafter")
	return f
}
