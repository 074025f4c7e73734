// Package ci adapts the program to the CI system it runs under. The rest of the program talks to
// one small interface, System: it reads inputs, the job's identity and the names the runner pod
// may have, passes state from the main phase to the cleanup phase, exports outputs and
// environment variables to later steps, masks secrets, and writes logs, collapsible log groups
// and a job summary.
//
// Three adapters implement it: GitHub, which speaks the GitHub Actions runner's workflow commands
// and environment files exactly as documented; Shell, for the plain CLI, which prints
// `export NAME='value'` lines and keeps state in a JSON file; and GitLab, a Shell that reads
// GitLab's CI/CD variables (in a job, or prefixed with CUSTOM_ENV_ in a custom-executor stage)
// and writes GitLab's collapsible job-log sections. Adapters know nothing about builders; they
// only move text in and out. The one place they meet pods is the runner pod's annotations, which
// GitLab Runner writes about the job (JobFromGitLabPod).
//
// Every read of the environment and every write of output goes through something injected
// (functional options, config fields), so tests replace them; every I/O error is returned, never
// a panic.
package ci

import (
	"errors"
	"fmt"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// System is the CI system as the program sees it. Implementations are GitHub, GitLab and Shell.
type System interface {
	Logger

	// Name names the CI system: cijob.GitHub, cijob.GitLab, cijob.Shell (or what the CLI's
	// --ci-platform says).
	Name() string
	// Input returns the raw value of an input, trimmed, or "" when it is unset. Names are the
	// inputs' documented names, such as "platforms" or "job-id".
	Input(name string) string
	// Job returns the identity of the running job.
	Job() cijob.Identity
	// RunnerCandidates returns, best first, the names the CI system gives the pod the job runs
	// in (GitHub: ACTIONS_RUNNER_POD_NAME, RUNNER_NAME); the provisioner tries them after an
	// explicit owner-pod input and before the generic POD_NAME and host name.
	RunnerCandidates() []cijob.RunnerCandidate
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
