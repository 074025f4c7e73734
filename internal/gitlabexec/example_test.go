package gitlabexec_test

import (
	"context"
	"fmt"
	"os"

	"github.com/org/setup-ephemeral-buildkit/internal/gitlabexec"
)

// The config stage prints the runner's configuration; with per-job builds directories every job
// gets one of its own, and job_env tells the later stages where the job's files are.
func ExampleExecutor_Dispatch() {
	env := map[string]string{
		"CUSTOM_ENV_CI_JOB_ID":       "123456",
		"CUSTOM_ENV_CI_PROJECT_PATH": "group/app",
	}
	e := &gitlabexec.Executor{
		Settings: gitlabexec.Settings{BuildsDir: "/builds", PerJobBuildsDir: true, StateDir: "/run/buildkit-jobs", DriverVersion: "v1.0.0"},
		Getenv:   func(k string) string { return env[k] },
		Stdout:   os.Stdout,
	}
	err := e.Dispatch(context.Background(), []string{"config"}, nil)
	fmt.Println(gitlabexec.ExitCode(err, func(string) string { return "" }))
	// Output:
	// {"builds_dir":"/builds/job-123456","cache_dir":"/cache","builds_dir_is_shared":false,"driver":{"name":"setup-ephemeral-buildkit","version":"v1.0.0"},"job_env":{"EPHEMERAL_BUILDKIT_JOB_DIR":"/run/buildkit-jobs/job-123456"},"shell":"bash"}
	// 0
}
