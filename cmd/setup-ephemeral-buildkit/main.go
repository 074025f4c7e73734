// Command setup-ephemeral-buildkit gives a CI job its own BuildKit builder per CPU architecture in
// Kubernetes. Started by the GitHub Actions runner (through the action's dist/index.js shim) it is
// the action's main or post step; otherwise it is a CLI with the verbs up, down, env and gc. The
// program itself is package app; this is only its entry point.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/org/setup-ephemeral-buildkit/internal/app"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

func main() {
	if err := realMain(); err != nil {
		if !app.Reported(err) {
			fmt.Fprintf(os.Stderr, "setup-ephemeral-buildkit: %v\n", err)
		}
		os.Exit(app.ExitCode(err))
	}
}

// realMain runs the program until it ends or is signalled. SIGINT and SIGTERM (the runner
// cancelling a job, forwarded by the shim) and SIGHUP (act, or a terminal, going away) cancel the
// context, and the program removes what it created before it returns.
func realMain() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	return app.Run(ctx, os.Args[1:], app.DefaultDeps(version.Get().Version))
}
