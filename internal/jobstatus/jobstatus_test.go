package jobstatus_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/jobstatus"
)

// apiServer is a local stand-in for GitLab's or GitHub's REST API on 127.0.0.1: it answers one
// documented endpoint with a canned status code and body, records what it was asked, and can be
// made slow to provoke timeouts.
type apiServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	routes   map[string]response // escaped path -> response
	delay    time.Duration
}

type response struct {
	code int
	body string
}

func newAPIServer(t *testing.T) *apiServer {
	t.Helper()
	s := &apiServer{routes: map[string]response{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r.Clone(context.Background()))
	resp, ok := s.routes[r.URL.EscapedPath()]
	delay := s.delay
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if r.Method != http.MethodGet {
		http.Error(w, `{"message":"405 Method Not Allowed"}`, http.StatusMethodNotAllowed)
		return
	}
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = fmt.Fprint(w, `{"message":"404 Not found"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.code)
	_, _ = fmt.Fprint(w, resp.body)
}

func (s *apiServer) set(path string, code int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes[path] = response{code, body}
}

func (s *apiServer) setDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

func (s *apiServer) recorded() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.requests...)
}

func (s *apiServer) host(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// gitlabJob is a job as GET /api/v4/projects/:id/jobs/:job_id documents it.
func gitlabJob(id int64, status string) string {
	return fmt.Sprintf(`{
  "commit": {"author_email": "admin@example.com", "author_name": "Administrator",
    "created_at": "2015-12-24T16:51:14.000+01:00", "id": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
    "message": "Test the CI integration.", "short_id": "0ff3ae19", "title": "Test the CI integration."},
  "coverage": null,
  "allow_failure": false,
  "created_at": "2015-12-24T15:51:21.880Z",
  "started_at": "2015-12-24T17:54:30.733Z",
  "finished_at": null,
  "erased_at": null,
  "duration": 0.465,
  "queued_duration": 0.010,
  "artifacts_expire_at": "2016-01-23T17:54:31.733Z",
  "tag_list": ["docker runner", "macos-10.15"],
  "id": %d,
  "name": "build",
  "pipeline": {"id": 6, "project_id": 1, "ref": "main", "sha": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd", "status": "running"},
  "ref": "main",
  "artifacts": [],
  "runner": {"id": 32, "description": "buildkit-runner", "ip_address": "", "active": true, "paused": false,
    "is_shared": true, "runner_type": "instance_type", "name": null, "online": true, "status": "online"},
  "stage": "build",
  "status": %q,
  "failure_reason": "",
  "tag": false,
  "web_url": "https://example.com/group/app/-/jobs/%d",
  "project": {"ci_job_token_scope_enabled": false},
  "user": {"id": 1, "name": "Administrator", "username": "root", "state": "active"}
}`, id, status, id)
}

// githubJob is a workflow job as GET /repos/{owner}/{repo}/actions/jobs/{job_id} documents it.
func githubJob(id int64, status, conclusion string) string {
	c := "null"
	if conclusion != "" {
		c = fmt.Sprintf("%q", conclusion)
	}
	return fmt.Sprintf(`{
  "id": %d,
  "run_id": 42,
  "run_url": "https://api.github.com/repos/org/app/actions/runs/42",
  "node_id": "CR_kwDOABCD",
  "head_sha": "f83a356604ae3c5d03e1b46ef4d1ca77d64a90b0",
  "url": "https://api.github.com/repos/org/app/actions/jobs/%d",
  "html_url": "https://github.com/org/app/actions/runs/42/job/%d",
  "status": %q,
  "conclusion": %s,
  "created_at": "2026-06-15T21:45:48Z",
  "started_at": "2026-06-15T21:45:51Z",
  "completed_at": null,
  "name": "image (linux/arm64)",
  "steps": [{"name": "Set up job", "status": "completed", "conclusion": "success", "number": 1,
    "started_at": "2026-06-15T21:45:51Z", "completed_at": "2026-06-15T21:45:52Z"}],
  "check_run_url": "https://api.github.com/repos/org/app/check-runs/%d",
  "labels": ["arc-runners"],
  "runner_id": 1,
  "runner_name": "arc-runners-abcde-runner-xyz12",
  "runner_group_id": 1,
  "runner_group_name": "Default",
  "run_attempt": 1,
  "workflow_name": "CI",
  "head_branch": "main"
}`, id, id, id, status, c, id)
}

// githubRun is a workflow run attempt as GET .../actions/runs/{run_id}/attempts/{n} documents it.
func githubRun(id int64, attempt int, status string) string {
	return fmt.Sprintf(`{"id": %d, "name": "CI", "run_attempt": %d, "status": %q, "conclusion": null,
  "head_sha": "f83a356604ae3c5d03e1b46ef4d1ca77d64a90b0", "html_url": "https://github.com/org/app/actions/runs/%d",
  "event": "push", "workflow_id": 7}`, id, attempt, status, id)
}

func gitlabChecker(t *testing.T, s *apiServer, timeout time.Duration) *jobstatus.GitLab {
	t.Helper()
	gl, err := jobstatus.NewGitLab(jobstatus.GitLabConfig{Token: "glpat-janitor", URL: s.URL, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return gl
}

func githubChecker(t *testing.T, s *apiServer, timeout time.Duration) *jobstatus.GitHub {
	t.Helper()
	gh, err := jobstatus.NewGitHub(jobstatus.GitHubConfig{Token: "ghp_janitor", APIURL: s.URL, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return gh
}

func TestGitLabJobFinished(t *testing.T) {
	const path = "/api/v4/projects/group%2Fsub%2Fapp/jobs/123"
	tests := []struct {
		status   string
		finished bool
	}{
		{"success", true}, {"failed", true}, {"canceled", true}, {"skipped", true},
		{"created", false}, {"pending", false}, {"running", false}, {"waiting_for_resource", false},
		{"manual", false}, {"scheduled", false}, {"preparing", false}, {"canceling", false},
	}
	for _, tt := range tests {
		t.Run(tt.status, func(t *testing.T) {
			s := newAPIServer(t)
			s.set(path, http.StatusOK, gitlabJob(123, tt.status))
			job := cijob.Identity{CIPlatform: "gitlab", Repository: "group/sub/app", JobID: "123",
				URL: "http://" + s.host(t) + "/group/sub/app/-/jobs/123"}
			finished, err := gitlabChecker(t, s, time.Second).JobFinished(context.Background(), job)
			if err != nil {
				t.Fatalf("JobFinished: %v", err)
			}
			if finished != tt.finished {
				t.Errorf("status %q: finished = %v, want %v", tt.status, finished, tt.finished)
			}
			reqs := s.recorded()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			if got := reqs[0].Header.Get("PRIVATE-TOKEN"); got != "glpat-janitor" {
				t.Errorf("PRIVATE-TOKEN = %q", got)
			}
		})
	}
}

// A project renamed after its job started is found by the numeric id the builders carry: the
// old path would answer 404 and keep a dead job's builders until they expire.
func TestGitLabAsksByProjectIDWhenKnown(t *testing.T) {
	s := newAPIServer(t)
	s.set("/api/v4/projects/278964/jobs/123", http.StatusOK, gitlabJob(123, "success"))
	s.set("/api/v4/projects/group%2Fold-name/jobs/123", http.StatusNotFound, `{"message":"404 Project Not Found"}`)
	job := cijob.Identity{CIPlatform: "gitlab", Repository: "group/old-name", RepositoryID: "278964", JobID: "123"}
	finished, err := gitlabChecker(t, s, time.Second).JobFinished(context.Background(), job)
	if err != nil || !finished {
		t.Fatalf("JobFinished = %v, %v; want true from /projects/278964", finished, err)
	}
	if reqs := s.recorded(); len(reqs) != 1 || reqs[0].URL.EscapedPath() != "/api/v4/projects/278964/jobs/123" {
		t.Errorf("requests %v, want one to /api/v4/projects/278964/jobs/123", reqs)
	}
}

func TestGitLabErrorsAreNeverFinished(t *testing.T) {
	const path = "/api/v4/projects/group%2Fapp/jobs/7"
	job := cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", JobID: "7"}
	tests := []struct {
		name    string
		code    int
		body    string
		delay   time.Duration
		job     *cijob.Identity
		wantErr error
	}{
		{name: "500", code: http.StatusInternalServerError, body: `{"message":"500 Internal Server Error"}`},
		{name: "502 html", code: http.StatusBadGateway, body: `<html>bad gateway</html>`},
		{name: "401", code: http.StatusUnauthorized, body: `{"message":"401 Unauthorized"}`},
		{name: "403", code: http.StatusForbidden, body: `{"message":"403 Forbidden"}`},
		{name: "404 deleted project", code: http.StatusNotFound, body: `{"message":"404 Project Not Found"}`},
		{name: "timeout", code: http.StatusOK, body: gitlabJob(7, "success"), delay: 2 * time.Second},
		{name: "unknown status", code: http.StatusOK, body: gitlabJob(7, "teleported"), wantErr: jobstatus.ErrUnknownStatus},
		{name: "malformed JSON", code: http.StatusOK, body: `{"status": "success"`},
		{name: "job id not numeric", code: http.StatusOK, body: gitlabJob(7, "success"),
			job: &cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", JobID: "build@runner"}, wantErr: jobstatus.ErrUnaskable},
		{name: "no project", code: http.StatusOK, body: gitlabJob(7, "success"),
			job: &cijob.Identity{CIPlatform: "gitlab", JobID: "7"}, wantErr: jobstatus.ErrUnaskable},
		{name: "other instance", code: http.StatusOK, body: gitlabJob(7, "success"),
			job:     &cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", JobID: "7", URL: "https://gitlab.other.example/group/app/-/jobs/7"},
			wantErr: jobstatus.ErrUnaskable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newAPIServer(t)
			s.set(path, tt.code, tt.body)
			s.setDelay(tt.delay)
			j := job
			if tt.job != nil {
				j = *tt.job
			}
			start := time.Now()
			finished, err := gitlabChecker(t, s, 300*time.Millisecond).JobFinished(context.Background(), j)
			if err == nil || finished {
				t.Fatalf("JobFinished = %v, %v; want false and an error", finished, err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v is not %v", err, tt.wantErr)
			}
			if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
				t.Errorf("took %v: retries or no timeout", elapsed)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestGitLabCancelledContext(t *testing.T) {
	s := newAPIServer(t)
	s.set("/api/v4/projects/group%2Fapp/jobs/7", http.StatusOK, gitlabJob(7, "success"))
	s.setDelay(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	finished, err := gitlabChecker(t, s, 10*time.Second).JobFinished(ctx, cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", JobID: "7"})
	if err == nil || finished {
		t.Fatalf("JobFinished = %v, %v; want false and an error", finished, err)
	}
}

func TestGitHubJobFinished(t *testing.T) {
	const path = "/repos/org/app/actions/jobs/31337"
	tests := []struct {
		status, conclusion string
		finished           bool
	}{
		{"completed", "success", true}, {"completed", "failure", true}, {"completed", "cancelled", true},
		{"queued", "", false}, {"in_progress", "", false}, {"waiting", "", false},
		{"requested", "", false}, {"pending", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.status+"/"+tt.conclusion, func(t *testing.T) {
			s := newAPIServer(t)
			s.set(path, http.StatusOK, githubJob(31337, tt.status, tt.conclusion))
			job := cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: "31337",
				URL: "http://" + s.host(t) + "/org/app/actions/runs/42/attempts/1"}
			finished, err := githubChecker(t, s, time.Second).JobFinished(context.Background(), job)
			if err != nil {
				t.Fatalf("JobFinished: %v", err)
			}
			if finished != tt.finished {
				t.Errorf("finished = %v, want %v", finished, tt.finished)
			}
			reqs := s.recorded()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			if got := reqs[0].Header.Get("Authorization"); got != "Bearer ghp_janitor" {
				t.Errorf("Authorization = %q", got)
			}
		})
	}
}

// A job without a numeric id (runner too old for job.check_run_id) falls back to its run
// attempt: completed means every job in it is.
func TestGitHubRunAttemptFallback(t *testing.T) {
	for _, tt := range []struct {
		status   string
		finished bool
	}{{"completed", true}, {"in_progress", false}, {"queued", false}} {
		t.Run(tt.status, func(t *testing.T) {
			s := newAPIServer(t)
			s.set("/repos/org/app/actions/runs/42/attempts/2", http.StatusOK, githubRun(42, 2, tt.status))
			job := cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "2", JobID: "image@arc-runner-x"}
			finished, err := githubChecker(t, s, time.Second).JobFinished(context.Background(), job)
			if err != nil || finished != tt.finished {
				t.Fatalf("JobFinished = %v, %v; want %v, nil", finished, err, tt.finished)
			}
		})
	}
	t.Run("no attempt", func(t *testing.T) {
		s := newAPIServer(t)
		s.set("/repos/org/app/actions/runs/42", http.StatusOK, githubRun(42, 3, "completed"))
		job := cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", JobID: "image"}
		finished, err := githubChecker(t, s, time.Second).JobFinished(context.Background(), job)
		if err != nil || !finished {
			t.Fatalf("JobFinished = %v, %v; want true, nil", finished, err)
		}
	})
}

func TestGitHubErrorsAreNeverFinished(t *testing.T) {
	const path = "/repos/org/app/actions/jobs/5"
	job := cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", JobID: "5"}
	tests := []struct {
		name    string
		code    int
		body    string
		delay   time.Duration
		job     *cijob.Identity
		wantErr error
	}{
		{name: "500", code: http.StatusInternalServerError, body: `{"message":"Server Error"}`},
		{name: "503", code: http.StatusServiceUnavailable, body: `unavailable`},
		{name: "401", code: http.StatusUnauthorized, body: `{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}`},
		{name: "403 rate limit", code: http.StatusForbidden, body: `{"message":"API rate limit exceeded"}`},
		{name: "404", code: http.StatusNotFound, body: `{"message":"Not Found","status":"404"}`},
		{name: "timeout", code: http.StatusOK, body: githubJob(5, "completed", "success"), delay: 2 * time.Second},
		{name: "unknown status", code: http.StatusOK, body: githubJob(5, "evaporated", ""), wantErr: jobstatus.ErrUnknownStatus},
		{name: "no status", code: http.StatusOK, body: `{"id": 5}`, wantErr: jobstatus.ErrUnknownStatus},
		{name: "repository not owner/repo", code: http.StatusOK, body: githubJob(5, "completed", "success"),
			job: &cijob.Identity{CIPlatform: "github", Repository: "app", JobID: "5"}, wantErr: jobstatus.ErrUnaskable},
		{name: "nothing numeric", code: http.StatusOK, body: githubJob(5, "completed", "success"),
			job: &cijob.Identity{CIPlatform: "github", Repository: "org/app", JobID: "image@x"}, wantErr: jobstatus.ErrUnaskable},
		{name: "other server", code: http.StatusOK, body: githubJob(5, "completed", "success"),
			job:     &cijob.Identity{CIPlatform: "github", Repository: "org/app", JobID: "5", URL: "https://ghe.example.com/org/app/actions/runs/42"},
			wantErr: jobstatus.ErrUnaskable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newAPIServer(t)
			s.set(path, tt.code, tt.body)
			s.setDelay(tt.delay)
			j := job
			if tt.job != nil {
				j = *tt.job
			}
			start := time.Now()
			finished, err := githubChecker(t, s, 300*time.Millisecond).JobFinished(context.Background(), j)
			if err == nil || finished {
				t.Fatalf("JobFinished = %v, %v; want false and an error", finished, err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v is not %v", err, tt.wantErr)
			}
			if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
				t.Errorf("took %v", elapsed)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestGitHubWebHost(t *testing.T) {
	for _, tt := range []struct {
		api, jobURL string
		ok          bool
	}{
		{"https://api.github.com/", "https://github.com/org/app/actions/runs/1", true},
		{"https://api.github.com/", "https://ghe.example.com/org/app/actions/runs/1", false},
		{"https://api.octo.ghe.com/", "https://octo.ghe.com/org/app/actions/runs/1", true},
		{"https://ghe.example.com/api/v3/", "https://ghe.example.com/org/app/actions/runs/1", true},
		{"https://ghe.example.com/api/v3/", "https://github.com/org/app/actions/runs/1", false},
	} {
		// A server that is never reached: the host check comes first, and the job id is not numeric
		// and has no run, so an accepted host ends in ErrUnaskable for another reason.
		gh, err := jobstatus.NewGitHub(jobstatus.GitHubConfig{Token: "t", APIURL: tt.api})
		if err != nil {
			t.Fatal(err)
		}
		_, err = gh.JobFinished(context.Background(), cijob.Identity{CIPlatform: "github", Repository: "org/app", JobID: "x", URL: tt.jobURL})
		hostRefused := err != nil && strings.Contains(err.Error(), "this checker asks")
		if hostRefused == tt.ok {
			t.Errorf("API %s, job %s: error %v, want host accepted = %v", tt.api, tt.jobURL, err, tt.ok)
		}
	}
}

func TestDispatcher(t *testing.T) {
	gl := newAPIServer(t)
	gl.set("/api/v4/projects/group%2Fapp/jobs/9", http.StatusOK, gitlabJob(9, "success"))
	gh := newAPIServer(t)
	gh.set("/repos/org/app/actions/jobs/10", http.StatusOK, githubJob(10, "in_progress", ""))
	d := jobstatus.Dispatcher{
		cijob.GitLab: gitlabChecker(t, gl, time.Second),
		cijob.GitHub: githubChecker(t, gh, time.Second),
	}
	ctx := context.Background()
	if finished, err := d.JobFinished(ctx, cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", JobID: "9"}); err != nil || !finished {
		t.Errorf("gitlab: %v, %v; want true", finished, err)
	}
	if finished, err := d.JobFinished(ctx, cijob.Identity{CIPlatform: "github", Repository: "org/app", JobID: "10"}); err != nil || finished {
		t.Errorf("github: %v, %v; want false", finished, err)
	}
	for _, platform := range []string{"shell", "", "jenkins"} {
		finished, err := d.JobFinished(ctx, cijob.Identity{CIPlatform: platform, Repository: "org/app", JobID: "10"})
		if finished || !errors.Is(err, jobstatus.ErrUnsupportedPlatform) {
			t.Errorf("platform %q: %v, %v; want ErrUnsupportedPlatform", platform, finished, err)
		}
	}
}

func TestFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	checker, err := jobstatus.FromEnv(env(nil))
	if err != nil || checker != nil {
		t.Errorf("no tokens: %v, %v; want nil, nil", checker, err)
	}
	checker, err = jobstatus.FromEnv(env(map[string]string{"GITLAB_TOKEN": "x", "GITLAB_URL": "https://gitlab.example.com"}))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := checker.(jobstatus.Dispatcher)
	if !ok || d["gitlab"] == nil || d["github"] != nil {
		t.Errorf("GitLab only: %#v", checker)
	}
	checker, err = jobstatus.FromEnv(env(map[string]string{"GITLAB_TOKEN": "x", "GITHUB_TOKEN": "y", "GITHUB_API_URL": "https://ghe.example.com/api/v3"}))
	if d, ok := checker.(jobstatus.Dispatcher); err != nil || !ok || len(d) != 2 {
		t.Errorf("both: %#v, %v", checker, err)
	}
	for name, bad := range map[string]map[string]string{
		"gitlab url":  {"GITLAB_TOKEN": "x", "GITLAB_URL": "gitlab.example.com"},
		"github url":  {"GITHUB_TOKEN": "x", "GITHUB_API_URL": "ftp://x"},
		"timeout":     {"GITHUB_TOKEN": "x", "JOB_STATUS_TIMEOUT": "soon"},
		"neg timeout": {"GITHUB_TOKEN": "x", "JOB_STATUS_TIMEOUT": "-1s"},
	} {
		if _, err := jobstatus.FromEnv(env(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
