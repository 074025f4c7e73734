package jobstatus

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go/v2"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// DefaultGitLabURL is GitLab.com.
const DefaultGitLabURL = "https://gitlab.com"

// GitLab job statuses, as the jobs API documents them. A retried GitLab job is a new job with a
// new id, so a status never goes back from finished to running.
var (
	// gitlabFinished are the statuses after which the job runs no more script.
	gitlabFinished = map[string]bool{
		"success": true, "failed": true, "canceled": true, "skipped": true,
	}
	// gitlabUnfinished are the statuses of a job that may still run, or still runs, a script.
	// "canceling" still runs after_script, which may use the builders. "manual" is a job not yet
	// played, which should not own builders at all; it is kept rather than guessed about.
	gitlabUnfinished = map[string]bool{
		"created": true, "pending": true, "running": true, "waiting_for_resource": true,
		"manual": true, "scheduled": true, "preparing": true, "canceling": true,
	}
)

// GitLabConfig configures NewGitLab.
type GitLabConfig struct {
	// Token is sent as PRIVATE-TOKEN: a personal, group or project access token with read_api.
	// Required.
	Token string
	// URL is the GitLab instance, e.g. https://gitlab.example.com; empty means
	// DefaultGitLabURL. The API path /api/v4/ is appended unless present. A job whose URL names
	// another host is not asked about.
	URL string
	// HTTPClient makes the requests; nil means a client with Timeout.
	HTTPClient *http.Client
	// Timeout bounds each request; zero means DefaultTimeout.
	Timeout time.Duration
}

// GitLab answers whether a GitLab CI job finished, through
// `GET /api/v4/projects/:id/jobs/:job_id` with the project's numeric id as :id when the
// builders carry one (RepositoryID), else its path (URL-encoded). The
// client library's own retries are off: the janitor runs again in a few minutes anyway, and a
// failed request only means the builders are kept until then.
type GitLab struct {
	client  *gitlab.Client
	host    string
	timeout time.Duration
}

var _ k8sprov.JobChecker = (*GitLab)(nil)

// NewGitLab returns the GitLab checker.
func NewGitLab(cfg GitLabConfig) (*GitLab, error) {
	if cfg.Token == "" {
		return nil, fmt.Errorf("GitLab job status checker: no token")
	}
	base := cfg.URL
	if base == "" {
		base = DefaultGitLabURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("GitLab URL %q: not an absolute http(s) URL", cfg.URL)
	}
	client, err := gitlab.NewClient(cfg.Token,
		gitlab.WithBaseURL(base),
		gitlab.WithHTTPClient(httpClient(cfg.HTTPClient, cfg.Timeout)),
		gitlab.WithoutRetries(),
		gitlab.WithUserAgent("setup-ephemeral-buildkit-janitor"),
		gitlab.WithURLWarningLogger(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		return nil, fmt.Errorf("creating the GitLab client for %s: %w", base, err)
	}
	return &GitLab{client: client, host: u.Host, timeout: cfg.Timeout}, nil
}

// JobFinished reports whether the job's status is success, failed, canceled or skipped. The
// other documented statuses (created, pending, running, waiting_for_resource, manual,
// scheduled, preparing, canceling) are false; an unknown status, an API error (a 404 too: the
// project may have been deleted, or renamed when only its path is known, and expiry handles
// that) or an identity without project id or path and numeric job id is an error.
func (g *GitLab) JobFinished(ctx context.Context, job cijob.Identity) (bool, error) {
	// The numeric project id names the project even after it was renamed or moved; the path
	// is the fallback for builders that carry none.
	var project any = job.Repository
	if id, err := strconv.ParseInt(job.RepositoryID, 10, 64); err == nil && id > 0 {
		project = id
	} else if job.Repository == "" {
		return false, fmt.Errorf("GitLab job %q has no project id or path: %w", job.JobID, ErrUnaskable)
	}
	jobID, err := strconv.ParseInt(job.JobID, 10, 64)
	if err != nil || jobID <= 0 {
		return false, fmt.Errorf("GitLab job id %q is not a positive number: %w", job.JobID, ErrUnaskable)
	}
	if err := checkServer(job.URL, g.host); err != nil {
		return false, err
	}
	ctx, cancel := withTimeout(ctx, g.timeout)
	defer cancel()
	j, _, err := g.client.Jobs.GetJob(project, jobID, gitlab.WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("asking GitLab for job %d of project %v: %w", jobID, project, err)
	}
	status := strings.TrimSpace(j.Status)
	switch {
	case gitlabFinished[status]:
		return true, nil
	case gitlabUnfinished[status]:
		return false, nil
	}
	return false, fmt.Errorf("GitLab job %d of project %v has status %q: %w", jobID, project, status, ErrUnknownStatus)
}
