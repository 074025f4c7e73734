package ci

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// Annotations GitLab Runner's Kubernetes executor (since 15.x) writes on every job pod. They
// come from the job payload the runner received from GitLab, not from the job's variables,
// which the job's own `variables:` may override.
const (
	GitLabPodAnnotationJobID     = "job.runner.gitlab.com/id"
	GitLabPodAnnotationJobURL    = "job.runner.gitlab.com/url"
	GitLabPodAnnotationCommit    = "job.runner.gitlab.com/sha"
	GitLabPodAnnotationJobName   = "job.runner.gitlab.com/name"
	GitLabPodAnnotationProjectID = "project.runner.gitlab.com/id"
)

// Names of the cijob.Identity fields JobFromGitLabPod may set, for its keep argument.
const (
	JobFieldJobID        = "job-id"
	JobFieldURL          = "job-url"
	JobFieldCommit       = "commit"
	JobFieldJobName      = "job-name"
	JobFieldRepositoryID = "repository-id"
)

var (
	gitlabPodID     = regexp.MustCompile(`^[1-9][0-9]{0,19}$`)
	gitlabPodCommit = regexp.MustCompile(`^[0-9a-fA-F]{7,64}$`)
)

// maxPodAnnotationValue bounds the values taken from annotations (they become our own
// annotation values, and nothing legitimate is longer).
const maxPodAnnotationValue = 1024

// RunnerPodJob is implemented by a System whose CI system describes the job on the pod the
// job runs in. The main phase calls it with the owner pod's annotations once it has looked the
// pod up; later calls of Job return the result.
type RunnerPodJob interface {
	// JobFromRunnerPod takes what the pod's annotations say about the job. It returns the
	// fields it took, and a note for each annotation it ignored or that disagreed with the
	// job's variables.
	JobFromRunnerPod(annotations map[string]string) (taken []string, notes []string)
}

// JobFromGitLabPod returns job with the fields GitLab Runner's Kubernetes executor wrote on the
// job's pod (the GitLabPodAnnotation* annotations): job id, URL, commit, name and project id.
// They override job's values, which come from CI/CD variables a job may redefine, except for
// the fields keep reports true for (set explicitly, on the command line). A value that is
// empty, GitLab Runner's placeholder ("0" for an unknown id) or malformed is ignored with a
// note. taken lists the fields set from the pod; notes say what was ignored or disagreed.
func JobFromGitLabPod(job cijob.Identity, annotations map[string]string, keep func(field string) bool) (out cijob.Identity, taken, notes []string) {
	if keep == nil {
		keep = func(string) bool { return false }
	}
	fields := []struct {
		field, annotation string
		value             *string
		valid             func(string) error
	}{
		{JobFieldJobID, GitLabPodAnnotationJobID, &job.JobID, matches(gitlabPodID, "not a positive number")},
		{JobFieldRepositoryID, GitLabPodAnnotationProjectID, &job.RepositoryID, matches(gitlabPodID, "not a positive number")},
		{JobFieldCommit, GitLabPodAnnotationCommit, &job.Commit, matches(gitlabPodCommit, "not a commit hash")},
		{JobFieldURL, GitLabPodAnnotationJobURL, &job.URL, absoluteHTTPURL},
		{JobFieldJobName, GitLabPodAnnotationJobName, &job.JobName, printable},
	}
	for _, f := range fields {
		value, ok := annotations[f.annotation]
		value = strings.TrimSpace(value)
		if !ok || value == "" || value == "0" {
			continue
		}
		if len(value) > maxPodAnnotationValue {
			notes = append(notes, fmt.Sprintf("ignored the pod's annotation %s: %d characters long (at most %d)", f.annotation, len(value), maxPodAnnotationValue))
			continue
		}
		if err := f.valid(value); err != nil {
			notes = append(notes, fmt.Sprintf("ignored the pod's annotation %s=%q: %v", f.annotation, value, err))
			continue
		}
		if value == *f.value {
			taken = append(taken, f.field)
			continue
		}
		if keep(f.field) {
			notes = append(notes, fmt.Sprintf("kept --%s=%q although the pod's annotation %s says %q", f.field, *f.value, f.annotation, value))
			continue
		}
		if *f.value != "" {
			notes = append(notes, fmt.Sprintf("the pod's annotation %s=%q replaces %q from the job's variables", f.annotation, value, *f.value))
		}
		*f.value = value
		taken = append(taken, f.field)
	}
	return job, taken, notes
}

func matches(pattern *regexp.Regexp, problem string) func(string) error {
	return func(v string) error {
		if !pattern.MatchString(v) {
			return fmt.Errorf("%s", problem)
		}
		return nil
	}
}

func absoluteHTTPURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("not an absolute http(s) URL")
	}
	return nil
}

func printable(v string) error {
	if i := strings.IndexFunc(v, unicode.IsControl); i >= 0 {
		return fmt.Errorf("control character at byte %d", i)
	}
	return nil
}
