// Command gitlab-executor-hook is GitLab Runner's custom executor for setup-ephemeral-buildkit:
// `gitlab-executor-hook config|prepare|run|cleanup`, configured as config_exec, prepare_exec,
// run_exec and cleanup_exec (see examples/gitlab/config.toml). prepare starts the job's builders
// (package app), run gives every script their environment, cleanup removes them. The protocol is
// package gitlabexec; this is only its entry point.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/org/setup-ephemeral-buildkit/internal/app"
	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/gitlabexec"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

func main() {
	// GitLab Runner never passes these; a person checking which release is installed does.
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println(version.Get().String("gitlab-executor-hook"))
		return
	}
	err := realMain()
	var build *gitlabexec.BuildFailureError
	if err != nil && !errors.As(err, &build) {
		fmt.Fprintf(os.Stderr, "gitlab-executor-hook: %v\n", err)
	}
	os.Exit(gitlabexec.ExitCode(err, os.Getenv))
}

// realMain runs one stage. SIGTERM and SIGINT go to the running script (run) or cancel the stage.
func realMain() error {
	signals, stop := gitlabexec.NotifySignals()
	defer stop()
	settings, err := gitlabexec.SettingsFromEnv(os.Environ(), os.Hostname)
	if err != nil {
		return &gitlabexec.ConfigurationError{Stage: "reading the hook's settings", Err: err}
	}
	settings.DriverVersion = version.Get().Version
	deps := app.DefaultDeps(settings.DriverVersion)
	hooks := gitlabexec.HookFuncs{
		UpFunc:   func(ctx context.Context, p ci.System) error { return app.Main(ctx, p, deps) },
		DownFunc: func(ctx context.Context, p ci.System) error { return app.Post(ctx, p, deps) },
	}
	e := &gitlabexec.Executor{Settings: settings, Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr, Signals: signals}
	return e.Dispatch(context.Background(), os.Args[1:], hooks)
}
