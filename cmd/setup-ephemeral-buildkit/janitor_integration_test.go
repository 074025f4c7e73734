package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// ciAPI stands in for GitLab's or GitHub's REST API on loopback: it answers the documented job
// endpoints (GitLab `GET /api/v4/projects/:id/jobs/:job_id`, GitHub
// `GET /repos/:owner/:repo/actions/jobs/:job_id`) from a table and records every request, so the
// janitor's real client libraries talk to it as they would to the real service.
type ciAPI struct {
	*httptest.Server
	mu        sync.Mutex
	responses map[string]ciResponse
	requests  []ciRequest
}

type ciResponse struct {
	code int
	body string
}

type ciRequest struct {
	path, privateToken, authorization string
}

func newCIAPI(t *testing.T, responses map[string]ciResponse) *ciAPI {
	t.Helper()
	api := &ciAPI{responses: responses}
	api.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.mu.Lock()
		api.requests = append(api.requests, ciRequest{r.URL.EscapedPath(), r.Header.Get("PRIVATE-TOKEN"), r.Header.Get("Authorization")})
		resp, ok := api.responses[r.Method+" "+r.URL.EscapedPath()]
		api.mu.Unlock()
		if !ok {
			resp = ciResponse{http.StatusNotFound, `{"message":"Not Found"}`}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(resp.code)
		_, _ = w.Write([]byte(resp.body))
	}))
	// Loopback only: nothing here leaves the machine.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api.Listener = l
	api.Start()
	t.Cleanup(api.Close)
	return api
}

func (a *ciAPI) recorded() []ciRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.requests)
}

func gitlabJobBody(id int, status string) string {
	return fmt.Sprintf(`{"id": %d, "name": "image", "stage": "build", "status": %q, "ref": "main",
  "pipeline": {"id": 6, "project_id": 42, "ref": "main", "status": "running"},
  "web_url": "https://gitlab.example.com/group/app/-/jobs/%d"}`, id, status, id)
}

func githubJobBody(id int, status, conclusion string) string {
	c := "null"
	if conclusion != "" {
		c = fmt.Sprintf("%q", conclusion)
	}
	return fmt.Sprintf(`{"id": %d, "run_id": 42, "run_attempt": 1, "name": "image", "status": %q, "conclusion": %s,
  "html_url": "https://github.com/org/app/actions/runs/42/job/%d"}`, id, status, c, id)
}

// TestIntegrationJanitorAsksGitLabAndGitHub runs the real `gc` verb, under the janitor's shipped
// Role (deploy/janitor-cronjob.yaml), against builders the real `up` verb created for five jobs
// (no owner pod, far from their deadline, so only the CI systems' answers can make them go), with
// GitLab's and GitHub's job APIs stood in for on loopback: the builders of finished jobs are
// deleted, those of running jobs kept, and an API error (GitLab's 500) keeps the builders and
// makes the run fail visibly. --dry-run deletes nothing; a second run is harmless.
func TestIntegrationJanitorAsksGitLabAndGitHub(t *testing.T) {
	c := localcluster.ForTest(t)
	buildShared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	ns := c.CreateNamespace(ctx, t, "e2e-janitor")
	c.ApplyShippedRBAC(ctx, t, ns, "runner", filepath.Join(repoRoot, "deploy", "rbac.yaml"))
	c.ApplyShippedRBAC(ctx, t, ns, "janitor", filepath.Join(repoRoot, "deploy", "janitor-cronjob.yaml"))
	dir := t.TempDir()
	runnerKubeconfig, janitorKubeconfig := filepath.Join(dir, "runner.kubeconfig"), filepath.Join(dir, "janitor.kubeconfig")
	c.WriteServiceAccountKubeconfig(ctx, t, ns, "runner", runnerKubeconfig)
	c.WriteServiceAccountKubeconfig(ctx, t, ns, "janitor", janitorKubeconfig)

	gitlab := newCIAPI(t, map[string]ciResponse{
		"GET /api/v4/projects/42/jobs/101": {http.StatusOK, gitlabJobBody(101, "success")},
		"GET /api/v4/projects/42/jobs/102": {http.StatusOK, gitlabJobBody(102, "running")},
		"GET /api/v4/projects/42/jobs/103": {http.StatusInternalServerError, `{"message":"500 Internal Server Error"}`},
	})
	github := newCIAPI(t, map[string]ciResponse{
		"GET /repos/org/app/actions/jobs/201": {http.StatusOK, githubJobBody(201, "completed", "cancelled")},
		"GET /repos/org/app/actions/jobs/202": {http.StatusOK, githubJobBody(202, "in_progress", "")},
	})

	// HOME and DOCKER_CONFIG of their own: only the buildx plugin, nothing of this machine's user.
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Fatalf("the docker CLI is not on PATH: %v", err)
	}
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(filepath.Join(home, ".docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(toolsDir(), "docker", "cli-plugins"), filepath.Join(home, ".docker", "cli-plugins")); err != nil {
		t.Fatal(err)
	}
	baseEnv := []string{
		"PATH=" + strings.Join([]string{filepath.Join(toolsDir(), "bin"), filepath.Dir(docker), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, ":"),
		"HOME=" + home,
		"DOCKER_CONFIG=" + filepath.Join(home, ".docker"),
	}
	run := func(ctx context.Context, env []string, args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, sharedBinary, args...)
		cmd.Env = append(slices.Clone(baseEnv), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("%v: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}

	type job struct{ name, platform, repo, repoID, jobID, url string }
	jobs := []job{
		{"gitlab-success", "gitlab", "group/app", "42", "101", gitlab.URL + "/group/app/-/jobs/101"},
		{"gitlab-running", "gitlab", "group/app", "42", "102", gitlab.URL + "/group/app/-/jobs/102"},
		{"gitlab-500", "gitlab", "group/app", "42", "103", gitlab.URL + "/group/app/-/jobs/103"},
		{"github-cancelled", "github", "org/app", "", "201", ""},
		{"github-running", "github", "org/app", "", "202", ""},
	}
	keyOf := map[string]string{} // job name -> job key, read from the builders
	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	started := time.Now()
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := []string{"up", "--state-dir", filepath.Join(dir, "state-"+j.name), "--kubeconfig", runnerKubeconfig,
				"--namespace", ns, "--owner-pod", "none", "--platforms", "linux/amd64", "--image", c.Info.Images["buildkit"],
				"--timeout", "120s", "--termination-grace-period", "5s",
				"--ci-platform", j.platform, "--repository", j.repo, "--run-id", "6", "--job-id", j.jobID, "--job-name", j.name}
			if j.repoID != "" {
				args = append(args, "--repository-id", j.repoID)
			}
			if j.url != "" {
				args = append(args, "--job-url", j.url)
			}
			if code, _, stderr := run(ctx, nil, args...); code != 0 {
				errs[i] = fmt.Errorf("up for %s: exit %d\n%s", j.name, code, stderr)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("five jobs' builders up in %v", time.Since(started).Round(100*time.Millisecond))

	builders := func() (pods map[string]corev1.Pod, secrets map[string]corev1.Secret) {
		t.Helper()
		opts := metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()}
		podList, err := admin.CoreV1().Pods(ns).List(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		secretList, err := admin.CoreV1().Secrets(ns).List(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		pods, secrets = map[string]corev1.Pod{}, map[string]corev1.Secret{}
		for _, p := range podList.Items {
			pods[p.Labels[k8sprov.LabelJobKey]] = p
		}
		for _, s := range secretList.Items {
			secrets[s.Labels[k8sprov.LabelJobKey]] = s
		}
		return pods, secrets
	}
	pods, secrets := builders()
	for _, p := range pods {
		keyOf[p.Annotations[k8sprov.AnnotationJobName]] = p.Labels[k8sprov.LabelJobKey]
	}
	if len(pods) != len(jobs) || len(secrets) != len(jobs) || len(keyOf) != len(jobs) {
		t.Fatalf("after up: %d pods, %d Secrets for jobs %v; want %d of each", len(pods), len(secrets), keyOf, len(jobs))
	}
	if got := pods[keyOf["gitlab-success"]].Annotations[k8sprov.AnnotationRepositoryID]; got != "42" {
		t.Errorf("the GitLab builder's %s annotation = %q, want the project id 42", k8sprov.AnnotationRepositoryID, got)
	}

	janitorEnv := []string{
		"KUBECONFIG=" + janitorKubeconfig,
		"GITLAB_TOKEN=glpat-janitor", "GITLAB_URL=" + gitlab.URL,
		"GITHUB_TOKEN=github_pat_janitor", "GITHUB_API_URL=" + github.URL + "/",
		"JOB_STATUS_TIMEOUT=10s",
	}
	report := func(stdout string) map[string]string {
		actions := map[string]string{}
		for _, line := range strings.Split(stdout, "\n") {
			for name, key := range keyOf {
				if strings.HasPrefix(line, key+" ") {
					rest := strings.TrimSpace(strings.TrimPrefix(line, key))
					switch {
					case strings.HasPrefix(rest, "deleting"):
						actions[name] = "deleting"
					case strings.HasPrefix(rest, "would delete"):
						actions[name] = "would delete"
					case strings.HasPrefix(rest, "delete"):
						actions[name] = "delete"
					case strings.HasPrefix(rest, "keep"):
						actions[name] = "keep"
					}
				}
			}
		}
		return actions
	}
	wantDeleted := map[string]bool{"gitlab-success": true, "github-cancelled": true}
	// checkActions asserts the report's action for every job: deleteAction for the finished
	// jobs, keep for the others.
	checkActions := func(what, stdout, deleteAction string) {
		t.Helper()
		for _, j := range jobs {
			want := "keep"
			if wantDeleted[j.name] {
				want = deleteAction
			}
			if got := report(stdout)[j.name]; got != want {
				t.Errorf("%s: %s: %q, want %q", what, j.name, got, want)
			}
		}
	}

	// A dry run reports and deletes nothing.
	code, stdout, stderr := run(ctx, janitorEnv, "gc", "--namespace", ns, "--dry-run")
	t.Logf("gc --dry-run: exit %d\n%s%s", code, stdout, stderr)
	checkActions("gc --dry-run", stdout, "would delete")
	pods, secrets = builders()
	if len(pods) != len(jobs) || len(secrets) != len(jobs) {
		t.Errorf("gc --dry-run deleted something: %d pods and %d Secrets left", len(pods), len(secrets))
	}
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			t.Errorf("gc --dry-run deleted pod %s", p.Name)
		}
	}

	// The real run, with the janitor's own rights.
	gcStarted := time.Now()
	code, stdout, stderr = run(ctx, janitorEnv, "gc", "--namespace", ns)
	t.Logf("gc in %v: exit %d\n%s%s", time.Since(gcStarted).Round(time.Millisecond), code, stdout, stderr)
	if code == 0 || !strings.Contains(stderr, "500") {
		t.Errorf("gc with GitLab answering 500 for one job: exit %d, stderr %q; want a failed run naming the error", code, stderr)
	}
	checkActions("gc", stdout, "delete")
	pods, secrets = builders()
	for _, j := range jobs {
		key := keyOf[j.name]
		pod, podLeft := pods[key]
		_, secretLeft := secrets[key]
		deleted := !secretLeft && (!podLeft || pod.DeletionTimestamp != nil)
		if deleted != wantDeleted[j.name] {
			t.Errorf("after gc: %s (key %s): deleted=%v (pod left %v, terminating %v, Secret left %v), want deleted=%v",
				j.name, key, deleted, podLeft, podLeft && pod.DeletionTimestamp != nil, secretLeft, wantDeleted[j.name])
		}
	}

	// Each API was asked with the janitor's own token, GitLab by the numeric project id.
	for _, r := range gitlab.recorded() {
		if r.privateToken != "glpat-janitor" || !strings.HasPrefix(r.path, "/api/v4/projects/42/jobs/") {
			t.Errorf("GitLab request %+v, want /api/v4/projects/42/jobs/... with PRIVATE-TOKEN glpat-janitor", r)
		}
	}
	for _, r := range github.recorded() {
		if !strings.HasSuffix(r.authorization, "github_pat_janitor") || !strings.HasPrefix(r.path, "/repos/org/app/actions/jobs/") {
			t.Errorf("GitHub request %+v, want /repos/org/app/actions/jobs/... with the janitor's token", r)
		}
	}
	if len(gitlab.recorded()) == 0 || len(github.recorded()) == 0 {
		t.Errorf("requests: GitLab %d, GitHub %d; want both asked", len(gitlab.recorded()), len(github.recorded()))
	}

	// Run again, GitLab now answering for job 103: its builders go too, the running jobs' stay.
	gitlab.mu.Lock()
	gitlab.responses["GET /api/v4/projects/42/jobs/103"] = ciResponse{http.StatusOK, gitlabJobBody(103, "failed")}
	gitlab.mu.Unlock()
	code, stdout, stderr = run(ctx, janitorEnv, "gc", "--namespace", ns)
	t.Logf("second gc: exit %d\n%s%s", code, stdout, stderr)
	if code != 0 {
		t.Errorf("second gc: exit %d, stderr %q", code, stderr)
	}
	pods, secrets = builders()
	for _, name := range []string{"gitlab-running", "github-running"} {
		if pod, ok := pods[keyOf[name]]; !ok || pod.DeletionTimestamp != nil || secrets[keyOf[name]].Name == "" {
			t.Errorf("after the second gc the running job %s lost its builders", name)
		}
	}
	if _, ok := secrets[keyOf["gitlab-500"]]; ok {
		t.Errorf("after the second gc job 103, now failed, still has its Secret")
	}
	// The builders the first run deleted are still draining; the second run leaves them be and
	// does not ask about their jobs again.
	for _, name := range []string{"gitlab-success", "github-cancelled"} {
		if _, left := pods[keyOf[name]]; left && report(stdout)[name] != "deleting" {
			t.Errorf("second gc: %s, still draining, reported %q, want \"deleting\"", name, report(stdout)[name])
		}
	}
	asked := func(api *ciAPI, path string) int {
		n := 0
		for _, r := range api.recorded() {
			if r.path == path {
				n++
			}
		}
		return n
	}
	if n := asked(gitlab, "/api/v4/projects/42/jobs/101"); n != 2 {
		t.Errorf("GitLab was asked about finished job 101 %d times, want 2 (dry run, first run)", n)
	}
	if n := asked(github, "/repos/org/app/actions/jobs/201"); n != 2 {
		t.Errorf("GitHub was asked about finished job 201 %d times, want 2 (dry run, first run)", n)
	}

	// The running jobs end normally with down.
	for _, name := range []string{"gitlab-running", "github-running"} {
		if code, _, stderr := run(ctx, []string{"KUBECONFIG=" + runnerKubeconfig}, "down", "--state-dir", filepath.Join(dir, "state-"+name)); code != 0 {
			t.Errorf("down for %s: exit %d\n%s", name, code, stderr)
		}
	}
	t.Logf("GitLab was asked %+v; GitHub %+v", gitlab.recorded(), github.recorded())
}
