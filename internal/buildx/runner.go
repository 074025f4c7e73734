package buildx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"
)

// Command is one program invocation.
type Command struct {
	// Args are the program and its arguments: {"docker", "buildx", "ls"}.
	Args []string
	// Env holds "KEY=value" entries added to (and overriding) the runner's base environment.
	Env []string
}

// Result is what a command that ran to its end produced.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// Runner runs commands. Run returns an error only when the command could not run to its end (the
// program is missing, the context was cancelled); a non-zero exit status is a Result.
type Runner interface {
	Run(ctx context.Context, cmd Command) (Result, error)
}

// ExecRunner runs commands as child processes, with no standard input (so nothing waits for an
// answer to a prompt).
type ExecRunner struct {
	// Env is the base environment of every command, as from os.Environ. Nil means the current
	// process's environment.
	Env []string
	// WaitDelay bounds how long Run waits, after the context is done and the process killed, for
	// its output to close (a grandchild may hold it). Zero means 5 seconds.
	WaitDelay time.Duration
}

// Run runs cmd and waits for it.
func (r ExecRunner) Run(ctx context.Context, cmd Command) (Result, error) {
	if len(cmd.Args) == 0 {
		return Result{}, errors.New("running a command: no program given")
	}
	c := exec.CommandContext(ctx, cmd.Args[0], cmd.Args[1:]...)
	base := r.Env
	if base == nil {
		base = c.Environ()
	}
	c.Env = append(append([]string(nil), base...), cmd.Env...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	c.WaitDelay = r.WaitDelay
	if c.WaitDelay == 0 {
		c.WaitDelay = 5 * time.Second
	}
	err := c.Run()
	result := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if ctx.Err() != nil {
		return result, fmt.Errorf("running %s: %w", cmd.Args[0], context.Cause(ctx))
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		result.ExitCode = exitErr.ExitCode()
		return result, nil
	}
	if err != nil {
		return result, fmt.Errorf("running %s: %w", cmd.Args[0], err)
	}
	return result, nil
}
