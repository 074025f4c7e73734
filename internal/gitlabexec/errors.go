package gitlabexec

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// Variables GitLab Runner sets for every stage of a custom executor.
const (
	// EnvBuildFailureExitCode is the exit code that marks the job failed by its own script.
	EnvBuildFailureExitCode = "BUILD_FAILURE_EXIT_CODE"
	// EnvSystemFailureExitCode is the exit code that marks a failure of the executor; the runner
	// retries prepare (three attempts) on it.
	EnvSystemFailureExitCode = "SYSTEM_FAILURE_EXIT_CODE"
	// EnvBuildExitCodeFile names a file to write the script's own exit code to, for
	// allow_failure: exit_codes.
	EnvBuildExitCodeFile = "BUILD_EXIT_CODE_FILE"
	// EnvJobResponseFile names the job as GitLab sent it to the runner (JSON), which a job's
	// variables cannot change.
	EnvJobResponseFile = "JOB_RESPONSE_FILE"
)

// BuildFailureError reports a script that failed: the job failed, not the executor. Its exit
// code is $BUILD_FAILURE_EXIT_CODE.
type BuildFailureError struct {
	// SubStage is the run sub-stage, e.g. "step_script".
	SubStage string
	// ExitCode is the script's exit code; 128+N when signal N ended it.
	ExitCode int
	// Signal names the signal that ended the script, or "".
	Signal string
}

func (e *BuildFailureError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("%s: script ended by %s (exit code %d)", e.SubStage, e.Signal, e.ExitCode)
	}
	return fmt.Sprintf("%s: script exited with code %d", e.SubStage, e.ExitCode)
}

// ConfigurationError reports a job that cannot run as configured: an input the job or the
// runner's administrator set was refused (an unknown platform, a malformed node selector), or
// the hook's own settings are wrong. Trying again cannot help, so, like a failing script, its
// exit code is $BUILD_FAILURE_EXIT_CODE and the runner does not retry prepare.
type ConfigurationError struct {
	// Stage is the stage that failed.
	Stage string
	Err   error
}

func (e *ConfigurationError) Error() string { return e.Stage + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *ConfigurationError) Unwrap() error { return e.Err }

// configurationOrSystemFailure wraps err, if any, as a ConfigurationError of stage when it
// holds a refused input (*k8sprov.InputError) or a malformed cluster template
// (*clustertemplate.Error), which a retry meets again, else as a SystemFailureError: the
// Kubernetes API, scheduling and timeouts are the infrastructure's, worth the runner's retry.
func configurationOrSystemFailure(stage string, err error) error {
	var input *k8sprov.InputError
	var template *clustertemplate.Error
	if err != nil && (errors.As(err, &input) || errors.As(err, &template)) {
		return &ConfigurationError{Stage: stage, Err: err}
	}
	return systemFailure(stage, err)
}

// SystemFailureError reports a failure of the hook itself: no builders, no env file, a script
// that could not be started. Its exit code is $SYSTEM_FAILURE_EXIT_CODE.
type SystemFailureError struct {
	// Stage is the stage that failed ("prepare", "run step_script", ...).
	Stage string
	Err   error
}

func (e *SystemFailureError) Error() string { return e.Stage + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *SystemFailureError) Unwrap() error { return e.Err }

// systemFailure wraps err, if any, as a SystemFailureError of stage.
func systemFailure(stage string, err error) error {
	if err == nil {
		return nil
	}
	var sys *SystemFailureError
	var conf *ConfigurationError
	if errors.As(err, &sys) || errors.As(err, &conf) {
		return err
	}
	return &SystemFailureError{Stage: stage, Err: err}
}

// ExitCode maps a stage's result to the hook's exit code: 0 for nil, $BUILD_FAILURE_EXIT_CODE
// for a BuildFailureError or a ConfigurationError, $SYSTEM_FAILURE_EXIT_CODE for any other error. When the runner did
// not set the variable (someone runs the hook by hand) it is 1.
func ExitCode(err error, getenv func(string) string) int {
	if err == nil {
		return 0
	}
	variable := EnvSystemFailureExitCode
	var build *BuildFailureError
	var conf *ConfigurationError
	if errors.As(err, &build) || errors.As(err, &conf) {
		variable = EnvBuildFailureExitCode
	}
	if code, convErr := strconv.Atoi(strings.TrimSpace(getenv(variable))); convErr == nil && code > 0 && code < 256 {
		return code
	}
	return 1
}
