package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/localcluster"
)

// TestIntegrationCLIInsideJobPod runs the CLI verbs the way a job on GitLab Runner's Kubernetes
// executor does (templates/buildkit.yml): a shell script in the job's own pod runs `up` (in-cluster
// configuration, owner discovered from POD_NAME, namespace from POD_NAMESPACE), sources the
// exports, talks to the builder with buildctl and the job's client certificate, prints the exports
// again with `env`, and removes the builders with `down`. A second job leaves without `down`
// (after_script never ran): deleting its pod must take the builders with it.
//
// The binary (static), the docker CLI and the buildx plugin reach the pod through a hostPath
// volume: the test runs as root on the cluster's only node. The cluster has no kube-proxy, so the
// pod is pointed at the API server's pod-bridge address with KUBERNETES_SERVICE_HOST/PORT.
func TestIntegrationCLIInsideJobPod(t *testing.T) {
	c := localcluster.ForTest(t)
	buildShared(t)
	work := prepareJobPodWork(t)

	t.Run("up-env-down", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		w := newPodJobWorld(ctx, t, c)
		released := filepath.Join(work, "released-"+w.ns)
		job := w.createJobPod(ctx, t, work, "full.sh", released)

		// While the job runs: the builder pod and its Secret are owned by the job pod.
		pods := w.waitBuilderPods(ctx, t, 1, func(*corev1.Pod) bool { return true })
		checkOwnedBy(t, "pod", pods[0].ObjectMeta, job)
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
			if got := pods[0].Annotations[key]; got != want {
				t.Errorf("builder annotation %s = %q, want %q", key, got, want)
			}
		}
		_, secrets := w.builderObjects(ctx, t)
		for _, name := range secrets {
			s, err := w.admin.CoreV1().Secrets(w.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkOwnedBy(t, "secret", s.ObjectMeta, job)
		}
		if len(secrets) == 0 {
			t.Error("no builder Secret while the job runs")
		}
		// Let the script go on to buildctl, env and down.
		if err := os.WriteFile(released, nil, 0o644); err != nil {
			t.Fatal(err)
		}

		phase := w.waitJobPodDone(ctx, t, job.Name)
		log := w.podLog(ctx, t, job.Name)
		if phase != corev1.PodSucceeded {
			t.Fatalf("job pod ended %s; log:\n%s", phase, log)
		}
		for _, want := range []string{
			"MARK up-ok",
			"MARK owner-checked",
			"MARK workers-ok",
			"MARK env-same",
			"MARK down-ok",
			"MARK env-after-down-refused",
			"MARK done",
		} {
			if !strings.Contains(log, want) {
				t.Errorf("job log lacks %q", want)
			}
		}
		// buildctl listed the builder's worker, over mutual TLS with the job's certificate.
		workers := between(log, "MARK workers-begin", "MARK workers-end")
		if !strings.Contains(workers, "linux/amd64") {
			t.Errorf("buildctl debug workers listed no linux/amd64 worker:\n%s", workers)
		}
		// The owner was discovered from POD_NAME, in the namespace from POD_NAMESPACE, with the
		// pod's own service account.
		for _, want := range []string{
			"in-cluster",
			"Namespace: " + w.ns + " (from POD_NAMESPACE)",
			fmt.Sprintf("Runner pod: %s (uid %s)", job.Name, job.UID),
			"Job identity from the runner pod's annotations: job-id, repository-id, commit, job-url, job-name",
			`the pod's annotation job.runner.gitlab.com/sha="89abcdef0123456789abcdef0123456789abcdef" replaces "0123456789abcdef0123456789abcdef01234567"`,
		} {
			if !strings.Contains(log, want) {
				t.Errorf("job log lacks %q", want)
			}
		}
		w.waitBuildersGone(ctx, t)
		if t.Failed() {
			t.Logf("job log:\n%s", log)
		}
	})

	t.Run("no-down-pod-deleted", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		w := newPodJobWorld(ctx, t, c)
		job := w.createJobPod(ctx, t, work, "nodown.sh", "")

		pods := w.waitBuilderPods(ctx, t, 1, func(*corev1.Pod) bool { return true })
		checkOwnedBy(t, "pod", pods[0].ObjectMeta, job)
		phase := w.waitJobPodDone(ctx, t, job.Name)
		log := w.podLog(ctx, t, job.Name)
		if phase != corev1.PodSucceeded || !strings.Contains(log, "MARK up-ok") || !strings.Contains(log, "MARK exit-without-down") {
			t.Fatalf("job pod ended %s; log:\n%s", phase, log)
		}
		if pods, secrets := w.builderObjects(ctx, t); len(pods) == 0 || len(secrets) == 0 {
			t.Fatalf("builders gone before the job pod was deleted: pods %v, secrets %v", pods, secrets)
		}

		// The job pod goes (GitLab deletes it at the end of the job): the garbage collector
		// removes the builders it owns.
		if err := w.admin.CoreV1().Pods(w.ns).Delete(ctx, job.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		gcCtx, gcCancel := context.WithTimeout(ctx, 90*time.Second)
		defer gcCancel()
		w.waitBuildersGone(gcCtx, t)
	})
}

// prepareJobPodWork lays out the directory the job pods mount at /work: the binary, the docker
// CLI and buildx plugin (all static) and the job scripts.
func prepareJobPodWork(t *testing.T) string {
	t.Helper()
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
	docker := os.Getenv("E2E_DOCKER_CLI")
	if docker == "" {
		docker = "/usr/local/bin/docker"
	}
	plugin := filepath.Join(toolsDir(), "docker", "cli-plugins", "docker-buildx")
	for _, f := range []string{docker, plugin} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s missing (the docker CLI, `make tools`): %v", f, err)
		}
	}
	place(sharedBinary, filepath.Join(work, "bin", "setup-ephemeral-buildkit"))
	place(docker, filepath.Join(work, "bin", "docker"))
	place(plugin, filepath.Join(work, "docker", "cli-plugins", "docker-buildx"))
	for name, body := range map[string]string{"full.sh": fullJobScript, "nodown.sh": noDownJobScript} {
		if err := os.WriteFile(filepath.Join(work, name), []byte(jobScriptPrelude+body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return work
}

// jobScriptPrelude is the job's environment and before_script (as templates/buildkit.yml runs it).
// BUILDKIT_IMAGE and RELEASE_FILE come from the pod's environment.
const jobScriptPrelude = `set -eu
export PATH=/work/bin:$PATH
export HOME=/tmp/home
export DOCKER_CONFIG=/work/docker
export BUILDKIT_STATE_DIR="/tmp/setup-ephemeral-buildkit-job-$CI_JOB_ID"
mkdir -p "$HOME" "$BUILDKIT_STATE_DIR"
setup-ephemeral-buildkit up \
  --state-dir "$BUILDKIT_STATE_DIR" \
  --platforms linux/amd64 \
  --image "$BUILDKIT_IMAGE" \
  --timeout 90s \
  --termination-grace-period 30s \
  > "$BUILDKIT_STATE_DIR/exports.sh"
. "$BUILDKIT_STATE_DIR/exports.sh"
echo "MARK up-ok builder=$BUILDX_BUILDER host=$BUILDKIT_HOST"
`

// fullJobScript waits until the test has checked the builders' owner, then uses the builder with
// buildctl, prints the exports again and runs after_script's down.
const fullJobScript = `i=0
while [ ! -e "$RELEASE_FILE" ]; do
  i=$((i+1))
  if [ "$i" -gt 600 ]; then echo "MARK never-released"; exit 1; fi
  sleep 0.2
done
echo "MARK owner-checked"
echo "MARK workers-begin"
buildctl --addr "$BUILDKIT_HOST" \
  --tlsservername "$BUILDKIT_TLS_SERVERNAME" \
  --tlscacert "$BUILDKIT_TLS_CACERT" \
  --tlscert "$BUILDKIT_TLS_CERT" \
  --tlskey "$BUILDKIT_TLS_KEY" \
  debug workers
echo "MARK workers-end"
echo "MARK workers-ok"
setup-ephemeral-buildkit env --state-dir "$BUILDKIT_STATE_DIR" > /tmp/env.sh
# env prints the environment exports of up again (up's output also carries the
# EPHEMERAL_BUILDKIT_* outputs, which env leaves out): each of its lines is one of up's.
same=yes
while IFS= read -r line; do
  grep -qxF "$line" "$BUILDKIT_STATE_DIR/exports.sh" || { same=no; echo "not exported by up: $line"; }
done < /tmp/env.sh
grep -qx "export BUILDKIT_HOST='$BUILDKIT_HOST'" /tmp/env.sh || same=no
grep -qx "export BUILDX_BUILDER='$BUILDX_BUILDER'" /tmp/env.sh || same=no
if [ "$same" = yes ]; then
  echo "MARK env-same"
else
  echo "MARK env-differs"; cat /tmp/env.sh
fi
setup-ephemeral-buildkit down --state-dir "$BUILDKIT_STATE_DIR" --job-status success
echo "MARK down-ok"
if setup-ephemeral-buildkit env --state-dir "$BUILDKIT_STATE_DIR" >/dev/null; then
  echo "MARK env-after-down-unexpected"
else
  echo "MARK env-after-down-refused"
fi
echo "MARK done"
`

// noDownJobScript ends the job without after_script.
const noDownJobScript = `echo "MARK exit-without-down"
`

// newPodJobWorld is a namespace with deploy/rbac.yaml's Role bound to a "gitlab-job"
// ServiceAccount, deleted when the test ends.
func newPodJobWorld(ctx context.Context, t *testing.T, c *localcluster.Cluster) *jobWorld {
	t.Helper()
	w := &jobWorld{cluster: c, admin: kubernetes.NewForConfigOrDie(c.AdminConfig())}
	w.ns = c.CreateNamespace(ctx, t, "e2e-glpod")
	c.ApplyShippedRBAC(ctx, t, w.ns, "gitlab-job", filepath.Join(repoRoot, "deploy", "rbac.yaml"))
	return w
}

// createJobPod starts a pod like the ones GitLab Runner's Kubernetes executor creates, running
// /work/<script> with the pod's own service account.
func (w *jobWorld) createJobPod(ctx context.Context, t *testing.T, work, script, releaseFile string) *corev1.Pod {
	t.Helper()
	server, err := url.Parse(w.cluster.Info.Server)
	if err != nil || server.Port() == "" {
		t.Fatalf("API server URL %q: %v", w.cluster.Info.Server, err)
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
		// GitLab's predefined variables the CLI reads.
		{Name: "GITLAB_CI", Value: "true"},
		{Name: "CI_JOB_ID", Value: "4242"},
		{Name: "CI_PIPELINE_ID", Value: "77"},
		{Name: "CI_PROJECT_PATH", Value: "group/project"},
		{Name: "CI_JOB_NAME", Value: "build-image"},
		// A job's variables may redefine predefined ones; the pod's annotations (below) win.
		{Name: "CI_COMMIT_SHA", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Name: "BUILDKIT_IMAGE", Value: w.cluster.Info.Images["buildkit"]},
		{Name: "RELEASE_FILE", Value: filepath.Join("/work", filepath.Base(releaseFile))},
	}
	pod, err := w.admin.CoreV1().Pods(w.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "runner-abc123-project-1-concurrent-0-xyz",
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
				Image:           w.cluster.Info.Images["buildkit"],
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/bin/sh", "/work/" + script},
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
			t.Logf("job pod log:\n%s", w.podLog(context.Background(), t, pod.Name))
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
