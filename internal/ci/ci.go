// Package ci adapts the program to the CI system it runs under. The rest of the program talks to
// one small interface, Platform: it reads inputs and the job's identity, passes state from the main
// phase to the cleanup phase, exports outputs and environment variables to later steps, masks
// secrets, and writes logs, collapsible log groups and a job summary.
//
// Two adapters implement it: GitHub, which speaks the GitHub Actions runner's workflow commands
// and environment files exactly as documented, and Shell, for the plain CLI, which prints
// `export NAME='value'` lines and keeps state in a JSON file. Adapters know nothing about pods or
// builders; they only move text in and out.
//
// Every read of the environment and every write of output goes through something injected
// (functional options, config fields), so tests replace them; every I/O error is returned, never
// a panic.
package ci

import (
	"errors"
	"fmt"
	"strings"
)

// Platform is the CI system as the program sees it. Implementations are GitHub and Shell.
type Platform interface {
	Logger

	// Name names the CI system: "github", "shell".
	Name() string
	// Input returns the raw value of an input, trimmed, or "" when it is unset. Names are the
	// inputs' documented names, such as "platforms" or "job-id".
	Input(name string) string
	// Job returns the identity of the running job.
	Job() JobIdentity
	// IsPost reports whether this run is the cleanup phase (the action's post step, the CLI's
	// down). On GitHub it is derived from state saved by the main phase under StateIsPost.
	IsPost() bool

	// SaveState keeps a value for the cleanup phase of the same job.
	SaveState(name, value string) error
	// State returns a value saved by SaveState in the main phase, or "".
	State(name string) string
	// SetOutput sets an output of this step.
	SetOutput(name, value string) error
	// ExportEnv sets an environment variable for later steps. It does not change the
	// environment of this process.
	ExportEnv(name, value string) error
	// Mask asks the CI system to hide value (and each of its lines) in all later log output.
	Mask(value string) error

	// Group starts a collapsible group of log lines titled title; the returned function ends it.
	// Groups do not nest.
	Group(title string) (end func())
	// Debug reports whether the user asked for debug output (GitHub: RUNNER_DEBUG=1).
	Debug() bool
	// Summary appends markdown to the job summary.
	Summary(markdown string) error
	// TempDir is a directory for this job's temporary files, removed by the CI system after the
	// job where it can (GitHub: RUNNER_TEMP).
	TempDir() string
}

// Logger writes log lines. Write errors on the log stream are dropped, as the log package does:
// the log is where they would be reported.
type Logger interface {
	Debugf(format string, args ...any)
	Infof(format string, args ...any)
	Warningf(format string, args ...any)
	Errorf(format string, args ...any)
}

// JobIdentity says which CI job is running. Its fields mirror the provisioner's job identity,
// plus where the job runs.
type JobIdentity struct {
	// CIPlatform is the Platform's Name: "github", "shell".
	CIPlatform string
	// Repository is the repository or project, e.g. "org/app".
	Repository string
	// RepositoryID is the CI system's numeric id of the repository or project
	// (GITHUB_REPOSITORY_ID, CI_PROJECT_ID); empty when unknown.
	RepositoryID string
	// RunID is the workflow run or pipeline id.
	RunID string
	// RunAttempt is the attempt of the run; empty where the CI system has none.
	RunAttempt string
	// JobID identifies the job uniquely within the run attempt.
	JobID string
	// JobName is the job's name as the workflow spells it.
	JobName string
	// Commit is the commit being built.
	Commit string
	// URL points to the run's (or job's) page.
	URL string
	// RunnerName is the name of the runner executing the job (on actions-runner-controller, the
	// runner pod's name).
	RunnerName string
	// RunnerPod is the runner pod's name where the CI system says it explicitly
	// (ACTIONS_RUNNER_POD_NAME in the runner's kubernetes container mode).
	RunnerPod string
}

// StateIsPost is the state the main phase saves so that the GitHub adapter's IsPost reports the
// post step: GitHub runs the same program for both and tells them apart by nothing else.
const StateIsPost = "isPost"

// Errors the adapters wrap, for errors.Is.
var (
	// ErrInvalidName is returned for an output, state or variable name the CI system would
	// misread.
	ErrInvalidName = errors.New("invalid name")
	// ErrDelimiterCollision is returned when a value contains the random heredoc delimiter
	// chosen to write it, which would let the value end early and inject other values.
	ErrDelimiterCollision = errors.New("value contains the heredoc delimiter")
	// ErrNotConfigured is returned when the CI system did not provide what a command needs,
	// such as the GITHUB_OUTPUT file.
	ErrNotConfigured = errors.New("not configured")
)

// validateKey checks an output, state or environment variable name for the environment-file
// syntax: "NAME=value" or "NAME<<DELIMITER".
func validateKey(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty: %w", kind, ErrInvalidName)
	case strings.ContainsAny(name, "=\r\n"):
		return fmt.Errorf("%s name %q contains '=' or a line break: %w", kind, name, ErrInvalidName)
	case strings.Contains(name, "<<"):
		return fmt.Errorf("%s name %q contains '<<': %w", kind, name, ErrInvalidName)
	}
	return nil
}
