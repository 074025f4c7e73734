package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/gitlabci"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// TestIntegrationCLIInsideJobPod runs the GitLab CI/CD component templates/buildkit.yml for real,
// the way GitLab Runner's Kubernetes executor runs a job that extends it: package gitlabci
// interpolates the shipped file with the job's inputs and renders its before_script, the job's
// script and its after_script into the scripts the runner would run, and the job's own pod runs
// them in the CI job image the component pins (ghcr.io/org/setup-ephemeral-buildkit-job, which
// `make images` writes and the local cluster's registry serves under that name), with its
// setup-ephemeral-buildkit, docker CLI and buildx plugin. The component's `up` finds
// its owner from POD_NAME, its namespace from POD_NAMESPACE and its credentials in-cluster, and
// starts a builder per platform owned by the job pod; the job's script uses the first one with
// buildctl and the job's client certificate, checks that `env` prints up's exports again, and
// builds the arch-probe Dockerfile for linux/amd64 and linux/arm64 with `docker buildx build`:
// each platform's RUN step must run as that platform, on that platform's builder. The
// component's after_script (`down`) must leave nothing behind. A second job leaves without
// after_script: deleting its pod must take the builders with it.
//
// The scripts, the workspace and buildctl (the test's own probe of the builders, not part of the
// job image) reach the pod through a hostPath volume: the test runs as root on the cluster's only
// node. The cluster has no kube-proxy, so the pod is pointed at the API server's pod-bridge
// address with KUBERNETES_SERVICE_HOST/PORT.
func TestIntegrationCLIInsideJobPod(t *testing.T) {
	c := localcluster.ForTest(t)
	work := prepareJobPodWork(t)
	component, err := gitlabci.Load(filepath.Join(repoRoot, "templates", "buildkit.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// The inputs this cluster needs: its arm64 is the amd64 node emulating it (as in the
	// custom-executor hook's test), and its BuildKit image cannot be pulled.
	inputs := func(platforms string) map[string]string {
		return map[string]string{
			"platforms":      platforms,
			"node-selector":  "linux/amd64=" + c.Info.ArchNodeLabels["amd64"] + ";linux/arm64=kubernetes.io/arch-," + c.Info.ArchNodeLabels["arm64"],
			"buildkit-image": c.Info.Images["buildkit"],
			"timeout":        "90s",
		}
	}

	t.Run("component-multiarch-build", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		w := newPodJobWorld(ctx, t, c)
		job, err := component.Job(".ephemeral-buildkit", inputs("linux/amd64,linux/arm64"))
		if err != nil {
			t.Fatal(err)
		}
		if want := "ghcr.io/org/setup-ephemeral-buildkit-job:" + chartAppVersion(t); job.Image != want {
			t.Fatalf("the component's job image is %q, want %s (the chart's appVersion, as hack/release/stamp.sh pins both)", job.Image, want)
		}
		// The job's own after_script, after the component's:
		//   after_script: [!reference [.ephemeral-buildkit, after_script], ...]
		job.AfterScript = append(job.AfterScript, componentJobAfterScript...)
		jobDir := writeJobScripts(t, work, w.ns, job, componentJobScript, true)
		pod := w.createJobPod(ctx, t, job.Image, work, jobDir)

		// While the job runs: both builder pods and their Secret are owned by the job pod.
		pods := w.waitBuilderPods(ctx, t, 2, func(*corev1.Pod) bool { return true })
		arches := map[string]bool{}
		for _, p := range pods {
			checkOwnedBy(t, "pod", p.ObjectMeta, pod)
			arches[p.Labels[k8sprov.LabelArch]] = true
			// The job's identity on the builder comes from GitLab Runner's annotations on the job pod.
			for key, want := range map[string]string{
				k8sprov.AnnotationCIPlatform:   "gitlab",
				k8sprov.AnnotationJobID:        "4242",
				k8sprov.AnnotationRepository:   "group/project",
				k8sprov.AnnotationRepositoryID: "1234",
				k8sprov.AnnotationJobURL:       "https://gitlab.example.invalid/group/project/-/jobs/4242",
				k8sprov.AnnotationCommit:       "89abcdef0123456789abcdef0123456789abcdef",
				k8sprov.AnnotationRunID:        "77",
			} {
				if got := p.Annotations[key]; got != want {
					t.Errorf("builder %s: annotation %s = %q, want %q", p.Name, key, got, want)
				}
			}
		}
		if !arches["amd64"] || !arches["arm64"] {
			t.Errorf("builder pods for architectures %v, want amd64 and arm64", arches)
		}
		_, secrets := w.builderObjects(ctx, t)
		for _, name := range secrets {
			s, err := w.admin.CoreV1().Secrets(w.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkOwnedBy(t, "secret", s.ObjectMeta, pod)
		}
		if len(secrets) == 0 {
			t.Error("no builder Secret while the job runs")
		}
		// Let the script go on to buildctl, env and the build.
		if err := os.WriteFile(filepath.Join(jobDir, "released"), nil, 0o644); err != nil {
			t.Fatal(err)
		}

		phase := w.waitJobPodDone(ctx, t, pod.Name)
		log, marks := w.podLogMarks(ctx, t, pod.Name)
		if phase != corev1.PodSucceeded {
			t.Fatalf("job pod ended %s; log:\n%s", phase, log)
		}
		goneCtx, goneCancel := context.WithTimeout(ctx, 90*time.Second)
		defer goneCancel()
		w.waitBuildersGone(goneCtx, t)
		gone := time.Now()

		for _, want := range []string{
			"MARK up-ok",
			"MARK owner-checked",
			"MARK workers-ok",
			"MARK env-same",
			"MARK build-end",
			"MARK main-ended success",
			"MARK down-ok",
			"MARK env-after-down-refused",
			"MARK done",
		} {
			if !strings.Contains(log, want) {
				t.Errorf("job log lacks %q", want)
			}
		}
		// The component's after_script goes on when down fails; this job's must not have.
		if strings.Contains(log, "setup-ephemeral-buildkit down failed") {
			t.Error("the component's down failed")
		}
		// buildctl listed the first platform's worker, over mutual TLS with the job's certificate.
		workers := between(log, "MARK workers-begin", "MARK workers-end")
		if !strings.Contains(workers, "linux/amd64") {
			t.Errorf("buildctl debug workers listed no linux/amd64 worker:\n%s", workers)
		}
		// Each platform's RUN step ran as its architecture, on its own builder: each builder's
		// build records (`buildctl debug histories`) name its platform and no other. (Both
		// builders could build both: the node emulates arm64 for either.)
		for _, arch := range []string{"amd64", "arm64"} {
			data, err := os.ReadFile(filepath.Join(jobDir, "out", "linux_"+arch, "result"))
			if got := strings.TrimSpace(string(data)); err != nil || got != "linux/"+arch {
				t.Errorf("the linux/%s build's RUN step ran as %q (%v)", arch, got, err)
			}
			type history struct {
				Record struct {
					FrontendAttrs map[string]string `json:"FrontendAttrs"`
				} `json:"record"`
			}
			var built []string
			for _, h := range readJSONLines[history](t, filepath.Join(jobDir, "histories-"+arch)) {
				built = append(built, h.Record.FrontendAttrs["platform"])
			}
			if !slices.Equal(built, []string{"linux/" + arch}) {
				t.Errorf("the %s builder built for %q, want only linux/%s", arch, built, arch)
			}
		}
		// The owner was discovered from POD_NAME, in the namespace from POD_NAMESPACE, with the
		// pod's own service account.
		for _, want := range []string{
			"in-cluster",
			"Namespace: " + w.ns + " (from POD_NAMESPACE)",
			fmt.Sprintf("Runner pod: %s (uid %s)", pod.Name, pod.UID),
			"Job identity from the runner pod's annotations: job-id, repository-id, commit, job-url, job-name",
			`the pod's annotation job.runner.gitlab.com/sha="89abcdef0123456789abcdef0123456789abcdef" replaces "0123456789abcdef0123456789abcdef01234567"`,
		} {
			if !strings.Contains(log, want) {
				t.Errorf("job log lacks %q", want)
			}
		}
		// How long each part took, from the kubelet's timestamps of the job's log lines.
		span := func(from, to string) string {
			if marks[from].IsZero() || marks[to].IsZero() {
				return "?"
			}
			return marks[to].Sub(marks[from]).Round(100 * time.Millisecond).String()
		}
		goneAfterDown := "?"
		if !marks["down-ok"].IsZero() {
			goneAfterDown = gone.Sub(marks["down-ok"]).Round(100 * time.Millisecond).String()
		}
		t.Logf("up (before_script) %s, build %s, down (after_script) %s, builders gone %s after down returned",
			span("job-begin", "up-ok"), span("build-begin", "build-end"), span("main-ended", "down-ok"), goneAfterDown)
		if t.Failed() || os.Getenv("E2E_SHOW_JOB_LOG") != "" {
			t.Logf("job log:\n%s", log)
		}
	})

	t.Run("no-down-pod-deleted", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		w := newPodJobWorld(ctx, t, c)
		job, err := component.Job(".ephemeral-buildkit", inputs("linux/amd64"))
		if err != nil {
			t.Fatal(err)
		}
		jobDir := writeJobScripts(t, work, w.ns, job, []string{`echo "MARK up-ok builder=$BUILDX_BUILDER"`, `echo "MARK exit-without-down"`}, false)
		pod := w.createJobPod(ctx, t, job.Image, work, jobDir)

		pods := w.waitBuilderPods(ctx, t, 1, func(*corev1.Pod) bool { return true })
		checkOwnedBy(t, "pod", pods[0].ObjectMeta, pod)
		phase := w.waitJobPodDone(ctx, t, pod.Name)
		log := w.podLog(ctx, t, pod.Name)
		if phase != corev1.PodSucceeded || !strings.Contains(log, "MARK up-ok") || !strings.Contains(log, "MARK exit-without-down") {
			t.Fatalf("job pod ended %s; log:\n%s", phase, log)
		}
		if pods, secrets := w.builderObjects(ctx, t); len(pods) == 0 || len(secrets) == 0 {
			t.Fatalf("builders gone before the job pod was deleted: pods %v, secrets %v", pods, secrets)
		}

		// The job pod goes (GitLab deletes it at the end of the job): the garbage collector
		// removes the builders it owns.
		if err := w.admin.CoreV1().Pods(w.ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		gcCtx, gcCancel := context.WithTimeout(ctx, 90*time.Second)
		defer gcCancel()
		w.waitBuildersGone(gcCtx, t)
	})
}

// componentJobScript is the script: of the job that extends .ephemeral-buildkit. It waits until
// the test has checked the builders' owner, uses the first platform's builder with buildctl,
// checks that `env` prints up's environment exports again, builds the arch probe for both
// platforms into the job's directory, where the test reads the results, and leaves there each
// builder's build records.
var componentJobScript = []string{
	`echo "MARK up-ok builder=$BUILDX_BUILDER host=$BUILDKIT_HOST"`,
	// What the job image carries, for the test's log.
	`setup-ephemeral-buildkit --version; docker --version; docker buildx version`,
	`i=0
while [ ! -e "$JOB_DIR/released" ]; do
  i=$((i+1))
  if [ "$i" -gt 600 ]; then echo "MARK never-released"; exit 1; fi
  sleep 0.2
done`,
	`echo "MARK owner-checked"`,
	`echo "MARK workers-begin"`,
	`buildctl --addr "$BUILDKIT_HOST" --tlsservername "$BUILDKIT_TLS_SERVERNAME" --tlscacert "$BUILDKIT_TLS_CACERT" --tlscert "$BUILDKIT_TLS_CERT" --tlskey "$BUILDKIT_TLS_KEY" debug workers`,
	`echo "MARK workers-end"`,
	`echo "MARK workers-ok"`,
	// env prints the environment exports of up again (up's output also carries the
	// EPHEMERAL_BUILDKIT_* outputs, which env leaves out): each of its lines is one of up's.
	`setup-ephemeral-buildkit env --state-dir "$BUILDKIT_STATE_DIR" > /tmp/env.sh`,
	`same=yes
while IFS= read -r line; do
  grep -qxF "$line" "$BUILDKIT_STATE_DIR/exports.sh" || { same=no; echo "not exported by up: $line"; }
done < /tmp/env.sh
grep -qx "export BUILDKIT_HOST='$BUILDKIT_HOST'" /tmp/env.sh || same=no
grep -qx "export BUILDX_BUILDER='$BUILDX_BUILDER'" /tmp/env.sh || same=no
if [ "$same" = yes ]; then
  echo "MARK env-same"
else
  echo "MARK env-differs"; cat /tmp/env.sh
fi`,
	`echo "MARK build-begin"`,
	`docker buildx build --platform linux/amd64,linux/arm64 --output "type=local,dest=$JOB_DIR/out" /work/workspace`,
	`echo "MARK build-end"`,
	// Each builder's build records, for the test to see which platform each builder built.
	`for arch in amd64 arm64; do
  addr=$(printf '%s\n' "$EPHEMERAL_BUILDKIT_ENDPOINTS" | sed -n "s|.*\"linux/$arch\":\"\([^\"]*\)\".*|\1|p")
  buildctl --addr "$addr" --tlsservername "$BUILDKIT_TLS_SERVERNAME" --tlscacert "$BUILDKIT_TLS_CACERT" --tlscert "$BUILDKIT_TLS_CERT" --tlskey "$BUILDKIT_TLS_KEY" debug histories --format '{{json .}}' > "$JOB_DIR/histories-$arch"
done`,
}

// componentJobAfterScript is what the job's after_script runs after the component's: down has
// removed the job's state, so env refuses. The component's down line goes on when down fails
// (`|| echo "setup-ephemeral-buildkit down failed; ..."`): the test looks for that message too.
var componentJobAfterScript = []string{
	`echo "MARK down-ok"`,
	`if setup-ephemeral-buildkit env --state-dir "$BUILDKIT_STATE_DIR" >/dev/null; then
  echo "MARK env-after-down-unexpected"
else
  echo "MARK env-after-down-refused"
fi`,
	`echo "MARK done"`,
}

// jobPredefinedVariables are the predefined CI/CD variables GitLab gives the test's jobs. GitLab
// Runner's Kubernetes executor sets them in the job pod's environment and exports them again in
// every script it runs. CI_COMMIT_SHA differs from the pod's annotation, as if the job had
// redefined it: the builders must carry the annotation's.
var jobPredefinedVariables = map[string]string{
	"GITLAB_CI":       "true",
	"CI_JOB_ID":       "4242",
	"CI_PIPELINE_ID":  "77",
	"CI_PROJECT_PATH": "group/project",
	"CI_JOB_NAME":     "build-image",
	"CI_COMMIT_SHA":   "0123456789abcdef0123456789abcdef01234567",
}

// writeJobScripts writes, in a directory of work named name, what GitLab Runner would run for the
// job: its main script (before_script and script), its after_script for either outcome, and
// runner.sh, which runs them as the runner does (after_script in a shell of its own, told the
// job's status) or, without after, ends the job without after_script. It returns the directory.
func writeJobScripts(t *testing.T, work, name string, job gitlabci.Job, script []string, after bool) string {
	t.Helper()
	dir := filepath.Join(work, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	env := func(status string) map[string]string {
		vars := maps.Clone(jobPredefinedVariables)
		vars["CI_JOB_STATUS"] = status
		return vars
	}
	runner := `echo "MARK job-begin"
status=success
/bin/sh "$JOB_DIR/main.sh" || status=failed
echo "MARK main-ended $status"
`
	if after {
		runner += `/bin/sh "$JOB_DIR/after-$status.sh" || echo "MARK after-script-failed"
`
	}
	runner += `[ "$status" = success ]
`
	files := map[string]string{
		"main.sh":          job.MainShell(env("running"), script),
		"after-success.sh": job.AfterShell(env("success")),
		"after-failed.sh":  job.AfterShell(env("failed")),
		"runner.sh":        runner,
	}
	for file, text := range files {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// prepareJobPodWork lays out the directory the job pods mount at /work: buildctl (static), with
// which the job's script probes the builders, and the workspace the jobs build: the e2e
// workspace's Dockerfile and the arch probe for both platforms.
func prepareJobPodWork(t *testing.T) string {
	t.Helper()
	buildShared(t)
	work := t.TempDir()
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	place := func(src, dst string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(src, dst); err == nil {
			return
		}
		in, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	buildctl := filepath.Join(toolsDir(), "bin", "buildctl")
	if _, err := os.Stat(buildctl); err != nil {
		t.Fatalf("%s missing (`make tools`): %v", buildctl, err)
	}
	place(buildctl, filepath.Join(work, "bin", "buildctl"))
	for arch, probe := range sharedProbes {
		place(probe, filepath.Join(work, "workspace", "archprobe-"+arch))
	}
	dockerfile, err := os.ReadFile(filepath.Join("testdata", "workspace", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "workspace", "Dockerfile"), dockerfile, 0o644); err != nil {
		t.Fatal(err)
	}
	return work
}

// newPodJobWorld is a namespace with deploy/rbac.yaml's Role bound to a "gitlab-job"
// ServiceAccount, deleted when the test ends.
func newPodJobWorld(ctx context.Context, t *testing.T, c *localcluster.Cluster) *jobWorld {
	t.Helper()
	w := &jobWorld{cluster: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig())}
	w.ns = c.CreateNamespace(ctx, t, "e2e-glpod")
	c.ApplyShippedRBAC(ctx, t, w.ns, "gitlab-job", filepath.Join(repoRoot, "deploy", "rbac.yaml"))
	return w
}

// createJobPod starts a pod like the ones GitLab Runner's Kubernetes executor creates, in the
// job's image, with the pod's own service account, running the runner.sh writeJobScripts left in
// jobDir (under work).
func (w *jobWorld) createJobPod(ctx context.Context, t *testing.T, image, work, jobDir string) *corev1.Pod {
	t.Helper()
	server, err := url.Parse(w.cluster.Info.Server)
	if err != nil || server.Port() == "" {
		t.Fatalf("API server URL %q: %v", w.cluster.Info.Server, err)
	}
	rel, err := filepath.Rel(work, jobDir)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("job directory %s is not under %s", jobDir, work)
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		// No kube-proxy: the service IP would not answer; the API server listens on the bridge.
		{Name: "KUBERNETES_SERVICE_HOST", Value: server.Hostname()},
		{Name: "KUBERNETES_SERVICE_PORT", Value: server.Port()},
		// The image's PATH, and the test's buildctl after it.
		{Name: "PATH", Value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/work/bin"},
		// Where this job's scripts are and its results go.
		{Name: "JOB_DIR", Value: filepath.Join("/work", rel)},
	}
	for _, name := range slices.Sorted(maps.Keys(jobPredefinedVariables)) {
		env = append(env, corev1.EnvVar{Name: name, Value: jobPredefinedVariables[name]})
	}
	pod, err := w.admin.CoreV1().Pods(w.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			// Unique as GitLab Runner's are (runner-<token>-project-<id>-concurrent-<n>-<random>):
			// the random part is the namespace's.
			Name:        "runner-abc123-project-1-concurrent-0-" + w.ns[strings.LastIndex(w.ns, "-")+1:],
			Labels:      map[string]string{"app": "gitlab-job"},
			Annotations: gitlabJobPodAnnotations,
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			ServiceAccountName:            "gitlab-job",
			AutomountServiceAccountToken:  ptr.To(true),
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name:            "build",
				Image:           image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Command:         []string{"/bin/sh", filepath.Join("/work", rel, "runner.sh")},
				Env:             env,
				VolumeMounts:    []corev1.VolumeMount{{Name: "work", MountPath: "/work"}},
			}},
			Volumes: []corev1.Volume{{
				Name: "work",
				VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
					Path: work, Type: ptr.To(corev1.HostPathDirectory),
				}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the job pod: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			data, err := w.admin.CoreV1().Pods(w.ns).GetLogs(pod.Name, &corev1.PodLogOptions{Timestamps: true}).DoRaw(ctx)
			t.Logf("job pod log (%v):\n%s", err, data)
		}
	})
	return pod
}

// gitlabJobPodAnnotations are the annotations GitLab Runner's Kubernetes executor writes on a job
// pod. The project id and job URL are nowhere in the job's variables here, and the commit differs
// from CI_COMMIT_SHA: the builders must carry the pod's values.
var gitlabJobPodAnnotations = map[string]string{
	"job.runner.gitlab.com/id":         "4242",
	"job.runner.gitlab.com/url":        "https://gitlab.example.invalid/group/project/-/jobs/4242",
	"job.runner.gitlab.com/sha":        "89abcdef0123456789abcdef0123456789abcdef",
	"job.runner.gitlab.com/before_sha": "0000000000000000000000000000000000000000",
	"job.runner.gitlab.com/ref":        "main",
	"job.runner.gitlab.com/name":       "build-image",
	"project.runner.gitlab.com/id":     "1234",
}

// waitJobPodDone waits until the job pod has ended and returns its phase.
func (w *jobWorld) waitJobPodDone(ctx context.Context, t *testing.T, name string) corev1.PodPhase {
	t.Helper()
	for {
		pod, err := w.admin.CoreV1().Pods(w.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
			t.Fatal(err)
		}
		if err == nil && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) {
			return pod.Status.Phase
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job pod %s did not finish: %v; log:\n%s", name, ctx.Err(), w.podLog(context.Background(), t, name))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// podLog returns the job pod's log, or a note why there is none.
func (w *jobWorld) podLog(ctx context.Context, t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	data, err := w.admin.CoreV1().Pods(w.ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}

// podLogMarks returns the job pod's log and when each of its "MARK name ..." lines was written,
// by the kubelet's timestamps.
func (w *jobWorld) podLogMarks(ctx context.Context, t *testing.T, name string) (string, map[string]time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	data, err := w.admin.CoreV1().Pods(w.ns).GetLogs(name, &corev1.PodLogOptions{Timestamps: true}).DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err), nil
	}
	var log strings.Builder
	marks := map[string]time.Time{}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		stamp, text, ok := strings.Cut(line, " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if !ok || err != nil {
			log.WriteString(line)
			continue
		}
		log.WriteString(text)
		if fields := strings.Fields(text); len(fields) >= 2 && fields[0] == "MARK" {
			if _, seen := marks[fields[1]]; !seen {
				marks[fields[1]] = at
			}
		}
	}
	return log.String(), marks
}

// checkOwnedBy asserts that obj's owner is the job pod, by name and UID.
func checkOwnedBy(t *testing.T, kind string, obj metav1.ObjectMeta, job *corev1.Pod) {
	t.Helper()
	for _, ref := range obj.OwnerReferences {
		if ref.Kind == "Pod" && ref.APIVersion == "v1" && ref.Name == job.Name && ref.UID == job.UID {
			return
		}
	}
	t.Errorf("builder %s %s: owner references %+v, want the job pod %s (uid %s)", kind, obj.Name, obj.OwnerReferences, job.Name, job.UID)
}

// between returns the text of s between the lines containing begin and end.
func between(s, begin, end string) string {
	i := strings.Index(s, begin)
	if i < 0 {
		return ""
	}
	s = s[i+len(begin):]
	if j := strings.Index(s, end); j >= 0 {
		s = s[:j]
	}
	return s
}
