// Package jobstatus answers the janitor's question "has the CI job behind these builders
// finished?" by asking the CI system that ran it: GitHub's workflow-jobs API (go-github) and
// GitLab's jobs API (gitlab.com/gitlab-org/api/client-go). It implements k8sprov.JobChecker.
//
// The answer is "finished" only when the API says so in so many words. Anything else — a job
// still queued or running, a status this package does not know, an API error of any kind (5xx,
// 401, 403, 404, a timeout), a job identity the API cannot be asked about — is "not finished"
// or an error, and the janitor keeps the builders: deleting a running job's builders breaks a
// build, keeping a dead job's builders a little longer costs only the pods until their expiry.
//
// Each checker has a token of its own. A CI job's own token (GITHUB_TOKEN, CI_JOB_TOKEN) stops
// working when the job ends, which is exactly when the janitor needs to ask.
package jobstatus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// Errors the checkers wrap, for errors.Is.
var (
	// ErrUnsupportedPlatform is returned for a job of a CI platform no checker is configured for
	// (cijob.Shell, the plain CLI, or GitLab when no GitLab token was given).
	ErrUnsupportedPlatform = errors.New("no job status checker configured for this CI platform")
	// ErrUnaskable is returned when the job identity lacks what the API needs (a numeric job id,
	// an owner/repo), or names another server than the one configured.
	ErrUnaskable = errors.New("job identity cannot be looked up")
	// ErrUnknownStatus is returned for a job status this package does not know. The builders are
	// kept; a newer CI version may have added a status that means "still running".
	ErrUnknownStatus = errors.New("unknown job status")
)

// DefaultTimeout bounds one API request when the configuration sets none.
const DefaultTimeout = 20 * time.Second

// Dispatcher chooses a checker by the job's CI platform (cijob.Identity.CIPlatform: cijob.GitHub,
// cijob.GitLab). A job of any other platform is an error wrapping ErrUnsupportedPlatform, so the
// janitor keeps its builders until they expire.
type Dispatcher map[string]k8sprov.JobChecker

var _ k8sprov.JobChecker = Dispatcher(nil)

// JobFinished asks the checker registered for job.CIPlatform.
func (d Dispatcher) JobFinished(ctx context.Context, job cijob.Identity) (bool, error) {
	checker := d[job.CIPlatform]
	if checker == nil {
		return false, fmt.Errorf("CI platform %q: %w", job.CIPlatform, ErrUnsupportedPlatform)
	}
	return checker.JobFinished(ctx, job)
}

// Names of the environment variables FromEnv reads.
const (
	// EnvGitHubToken is a GitHub token that may read Actions of the repositories whose builders
	// the janitor watches (fine-grained: "Actions: read"; classic: repo).
	EnvGitHubToken = "GITHUB_TOKEN"
	// EnvGitHubAPIURL is GitHub's REST API base URL; default https://api.github.com/. For GitHub
	// Enterprise Server, https://HOST/api/v3/.
	EnvGitHubAPIURL = "GITHUB_API_URL"
	// EnvGitLabToken is a GitLab personal, group or project access token with read_api.
	EnvGitLabToken = "GITLAB_TOKEN"
	// EnvGitLabURL is the GitLab instance, e.g. https://gitlab.example.com; default
	// https://gitlab.com. The API path /api/v4/ is added unless present.
	EnvGitLabURL = "GITLAB_URL"
	// EnvTimeout bounds each API request (Go duration, e.g. "20s"); default DefaultTimeout.
	EnvTimeout = "JOB_STATUS_TIMEOUT"
)

// FromEnv builds the janitor's checker from the environment: a GitHub checker when
// GITHUB_TOKEN is set (GITHUB_API_URL optional), a GitLab checker when GITLAB_TOKEN is set
// (GITLAB_URL optional), dispatched by CI platform. With neither token it returns a nil checker
// and no error: the janitor then judges by expiry and owner pods alone. A malformed URL or
// timeout is an error.
func FromEnv(getenv func(string) string) (k8sprov.JobChecker, error) {
	timeout := DefaultTimeout
	if s := strings.TrimSpace(getenv(EnvTimeout)); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s=%q: not a positive duration such as 20s", EnvTimeout, s)
		}
		timeout = d
	}
	d := Dispatcher{}
	var errs []error
	if token := strings.TrimSpace(getenv(EnvGitHubToken)); token != "" {
		gh, err := NewGitHub(GitHubConfig{Token: token, APIURL: strings.TrimSpace(getenv(EnvGitHubAPIURL)), Timeout: timeout})
		if err != nil {
			errs = append(errs, err)
		} else {
			d[cijob.GitHub] = gh
		}
	}
	if token := strings.TrimSpace(getenv(EnvGitLabToken)); token != "" {
		gl, err := NewGitLab(GitLabConfig{Token: token, URL: strings.TrimSpace(getenv(EnvGitLabURL)), Timeout: timeout})
		if err != nil {
			errs = append(errs, err)
		} else {
			d[cijob.GitLab] = gl
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(d) == 0 {
		return nil, nil
	}
	return d, nil
}

// httpClient returns c, or a client with timeout when c is nil.
func httpClient(c *http.Client, timeout time.Duration) *http.Client {
	if c != nil {
		return c
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &http.Client{Timeout: timeout}
}

// checkServer refuses a job whose URL names another host than the server the checker asks:
// a job id means nothing on another instance, and a finished job there with the same id must
// not remove a running job's builders here. An empty or unparsable URL passes (older builders
// may carry none).
func checkServer(jobURL, host string) error {
	if jobURL == "" || host == "" {
		return nil
	}
	u, err := url.Parse(jobURL)
	if err != nil || u.Host == "" {
		return nil
	}
	if !strings.EqualFold(u.Host, host) {
		return fmt.Errorf("job URL %s is on %s, but this checker asks %s: %w", jobURL, u.Host, host, ErrUnaskable)
	}
	return nil
}

// withTimeout bounds ctx by timeout when positive.
func withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return context.WithTimeout(ctx, timeout)
}
