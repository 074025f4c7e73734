package jobstatus

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-github/v89/github"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// DefaultGitHubAPIURL is github.com's REST API.
const DefaultGitHubAPIURL = "https://api.github.com/"

// GitHub workflow job (and run) statuses, as the REST API documents them. Only
// githubCompleted means finished.
const githubCompleted = "completed"

var githubUnfinished = map[string]bool{
	"queued": true, "in_progress": true, "waiting": true, "requested": true, "pending": true,
}

// GitHubConfig configures NewGitHub.
type GitHubConfig struct {
	// Token authenticates every request (Authorization: Bearer). Required.
	Token string
	// APIURL is the REST API's base URL; empty means DefaultGitHubAPIURL. For GitHub Enterprise
	// Server, https://HOST/api/v3/.
	APIURL string
	// ServerURL is the web address jobs' URLs start with; empty means derived from APIURL
	// (api.github.com serves github.com, api.NAME.ghe.com serves NAME.ghe.com, any other host
	// serves itself). A job whose URL names another host is not asked about.
	ServerURL string
	// HTTPClient makes the requests; nil means a client with Timeout.
	HTTPClient *http.Client
	// Timeout bounds each request; zero means DefaultTimeout.
	Timeout time.Duration
}

// GitHub answers whether a GitHub Actions job finished, by its check-run id (the id the
// action's job-id input carries, `${{ job.check_run_id }}`), through
// `GET /repos/{owner}/{repo}/actions/jobs/{job_id}`. For a job without a numeric id (a runner
// too old for job.check_run_id) it asks for the run attempt instead,
// `GET /repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt}`: when the whole attempt
// is completed, so is every job in it.
type GitHub struct {
	client  *github.Client
	host    string
	timeout time.Duration
}

var _ k8sprov.JobChecker = (*GitHub)(nil)

// NewGitHub returns the GitHub checker.
func NewGitHub(cfg GitHubConfig) (*GitHub, error) {
	if cfg.Token == "" {
		return nil, fmt.Errorf("GitHub job status checker: no token")
	}
	apiURL := cfg.APIURL
	if apiURL == "" {
		apiURL = DefaultGitHubAPIURL
	}
	if !strings.HasSuffix(apiURL, "/") {
		apiURL += "/"
	}
	api, err := url.Parse(apiURL)
	if err != nil || (api.Scheme != "https" && api.Scheme != "http") || api.Host == "" {
		return nil, fmt.Errorf("GitHub API URL %q: not an absolute http(s) URL", cfg.APIURL)
	}
	host := githubWebHost(api.Host)
	if cfg.ServerURL != "" {
		server, err := url.Parse(cfg.ServerURL)
		if err != nil || server.Host == "" {
			return nil, fmt.Errorf("GitHub server URL %q: not an absolute URL", cfg.ServerURL)
		}
		host = server.Host
	}
	client, err := github.NewClient(
		github.WithHTTPClient(httpClient(cfg.HTTPClient, cfg.Timeout)),
		github.WithAuthToken(cfg.Token),
		github.WithURLs(&apiURL, &apiURL),
		github.WithUserAgent("setup-ephemeral-buildkit-janitor"),
	)
	if err != nil {
		return nil, fmt.Errorf("creating the GitHub client for %s: %w", apiURL, err)
	}
	return &GitHub{client: client, host: host, timeout: cfg.Timeout}, nil
}

// githubWebHost maps the API host to the host job URLs name.
func githubWebHost(apiHost string) string {
	if rest, ok := strings.CutPrefix(strings.ToLower(apiHost), "api."); ok {
		return rest
	}
	return apiHost
}

// JobFinished reports whether the job's status is "completed". Every other documented status
// (queued, in_progress, waiting, requested, pending) is false; an unknown status, an API error
// or an identity that cannot be looked up is an error.
func (g *GitHub) JobFinished(ctx context.Context, job cijob.Identity) (bool, error) {
	owner, repo, ok := strings.Cut(job.Repository, "/")
	if !ok || owner == "" || repo == "" || strings.Contains(repo, "/") {
		return false, fmt.Errorf("GitHub repository %q is not OWNER/REPO: %w", job.Repository, ErrUnaskable)
	}
	if err := checkServer(job.URL, g.host); err != nil {
		return false, err
	}
	ctx, cancel := withTimeout(ctx, g.timeout)
	defer cancel()
	if jobID, err := strconv.ParseInt(job.JobID, 10, 64); err == nil && jobID > 0 {
		wj, _, err := g.client.Actions.GetWorkflowJobByID(ctx, owner, repo, jobID)
		if err != nil {
			return false, fmt.Errorf("asking GitHub for job %d of %s: %w", jobID, job.Repository, err)
		}
		return githubFinished("job", wj.GetStatus())
	}
	runID, err := strconv.ParseInt(job.RunID, 10, 64)
	if err != nil || runID <= 0 {
		return false, fmt.Errorf("GitHub job %q has no numeric job id and run id %q is not numeric either: %w", job.JobID, job.RunID, ErrUnaskable)
	}
	var run *github.WorkflowRun
	if attempt, err := strconv.Atoi(job.RunAttempt); err == nil && attempt > 0 {
		run, _, err = g.client.Actions.GetWorkflowRunAttempt(ctx, owner, repo, runID, attempt, nil)
		if err != nil {
			return false, fmt.Errorf("asking GitHub for attempt %d of run %d of %s: %w", attempt, runID, job.Repository, err)
		}
	} else {
		// Without an attempt the run's latest attempt answers: completed means every attempt is.
		run, _, err = g.client.Actions.GetWorkflowRunByID(ctx, owner, repo, runID)
		if err != nil {
			return false, fmt.Errorf("asking GitHub for run %d of %s: %w", runID, job.Repository, err)
		}
	}
	return githubFinished("run", run.GetStatus())
}

func githubFinished(what, status string) (bool, error) {
	switch {
	case status == githubCompleted:
		return true, nil
	case githubUnfinished[status]:
		return false, nil
	}
	return false, fmt.Errorf("GitHub %s status %q: %w", what, status, ErrUnknownStatus)
}
