package k8sprov

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// Names of the identity fields in errors, prefixed like inputs.
const (
	IdentityCIPlatform = "job.ci-platform"
	IdentityRepository = "job.repository"
	IdentityRepoID     = "job.repository-id"
	IdentityRunID      = "job.run-id"
	IdentityRunAttempt = "job.run-attempt"
	IdentityJobID      = "job.job-id"
	IdentityJobName    = "job.job-name"
	IdentityCommit     = "job.commit"
	IdentityURL        = "job.url"
)

// maxIdentityFieldLength bounds every identity field: they are annotation values, and nothing
// legitimate is longer.
const maxIdentityFieldLength = 1024

var (
	ciPlatformPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
	commitPattern     = regexp.MustCompile(`^[0-9a-fA-F]{7,64}$`)
	numericIDPattern  = regexp.MustCompile(`^[1-9][0-9]{0,19}$`)
)

// ValidateJob checks every field of the job's identity for what the builders' annotations can
// carry and returns all problems joined, each an *InputError.
func ValidateJob(id cijob.Identity) error {
	var errs []error
	fields := []struct {
		name, value string
		required    bool
	}{
		{IdentityCIPlatform, id.CIPlatform, true},
		{IdentityRepository, id.Repository, false},
		{IdentityRepoID, id.RepositoryID, false},
		{IdentityRunID, id.RunID, false},
		{IdentityRunAttempt, id.RunAttempt, false},
		{IdentityJobID, id.JobID, true},
		{IdentityJobName, id.JobName, false},
		{IdentityCommit, id.Commit, false},
		{IdentityURL, id.URL, false},
	}
	for _, f := range fields {
		if f.required && f.value == "" {
			errs = append(errs, &InputError{Input: f.name, Value: f.value, Err: errors.New("required"), Accepted: "a non-empty value"})
			continue
		}
		if len(f.value) > maxIdentityFieldLength {
			errs = append(errs, &InputError{Input: f.name, Value: f.value[:64] + "...",
				Err: fmt.Errorf("%d characters long", len(f.value)), Accepted: fmt.Sprintf("at most %d characters", maxIdentityFieldLength)})
			continue
		}
		if i := strings.IndexFunc(f.value, unicode.IsControl); i >= 0 {
			errs = append(errs, &InputError{Input: f.name, Value: f.value,
				Err: fmt.Errorf("control character %q at byte %d", f.value[i], i), Accepted: "printable text"})
		}
	}
	if id.CIPlatform != "" && !ciPlatformPattern.MatchString(id.CIPlatform) {
		errs = append(errs, &InputError{Input: IdentityCIPlatform, Value: id.CIPlatform, Err: errors.New("not a short lower-case name"),
			Accepted: "1-32 lower-case letters, digits and dashes, e.g. github, gitlab"})
	}
	if id.Commit != "" && !commitPattern.MatchString(id.Commit) {
		errs = append(errs, &InputError{Input: IdentityCommit, Value: id.Commit, Err: errors.New("not a commit hash"),
			Accepted: "7 to 64 hexadecimal digits"})
	}
	if id.RepositoryID != "" && !numericIDPattern.MatchString(id.RepositoryID) && len(id.RepositoryID) <= maxIdentityFieldLength {
		errs = append(errs, &InputError{Input: IdentityRepoID, Value: id.RepositoryID, Err: errors.New("not a numeric id"),
			Accepted: "a positive decimal number, such as GitLab's CI_PROJECT_ID or GitHub's GITHUB_REPOSITORY_ID"})
	}
	if id.URL != "" {
		u, err := url.Parse(id.URL)
		if err == nil && (u.Scheme != "http" && u.Scheme != "https" || u.Host == "") {
			err = errors.New("not an absolute http(s) URL")
		}
		if err != nil {
			errs = append(errs, &InputError{Input: IdentityURL, Value: id.URL, Err: err, Accepted: "an absolute http or https URL"})
		}
	}
	return errors.Join(errs...)
}

// JobKey identifies one attempt of one CI job among all the builders in a namespace. It is short,
// a valid DNS label and label value, and the same every time it is computed for the same job
// attempt: a retried step finds the pods and Secret an earlier, interrupted step created.
type JobKey string

// jobKeyLength is the number of base32 characters kept from the hash: 60 bits, so that two jobs
// colliding in one namespace is negligible, while pod names stay short and readable.
const jobKeyLength = 12

var jobKeyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// KeyOf derives the job key from the fields that identify one attempt of one job: CI platform,
// repository, run, attempt and job id. RepositoryID, JobName, Commit and URL are descriptive and
// left out, so correcting them does not orphan builders.
func KeyOf(id cijob.Identity) JobKey {
	h := sha256.New()
	for _, field := range []string{id.CIPlatform, id.Repository, id.RunID, id.RunAttempt, id.JobID} {
		// A length prefix keeps ("ab","c") and ("a","bc") apart.
		fmt.Fprintf(h, "%d:%s;", len(field), field)
	}
	return JobKey(jobKeyEncoding.EncodeToString(h.Sum(nil))[:jobKeyLength])
}

// String returns the key.
func (k JobKey) String() string { return string(k) }
