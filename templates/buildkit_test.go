// Package templates_test checks the GitLab CI/CD component in this directory: its inputs, the
// flags it passes to the CLI, and its scripts, run as GitLab runs a job's scripts (package
// gitlabci reads and renders the component).
package templates_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/app"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/gitlabci"
)

func loadComponent(t *testing.T) gitlabci.Component {
	t.Helper()
	c, err := gitlabci.Load("buildkit.yml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// hiddenJob interpolates the component with values, as GitLab does when a pipeline includes
// it, and returns its hidden job.
func hiddenJob(t *testing.T, c gitlabci.Component, values map[string]string) gitlabci.Job {
	t.Helper()
	j, err := c.Job(".ephemeral-buildkit", values)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestComponentInputs(t *testing.T) {
	c := loadComponent(t)
	used := map[string]bool{}
	for _, name := range c.References() {
		used[name] = true
		if _, ok := c.Inputs[name]; !ok {
			t.Errorf("$[[ inputs.%s ]] is not declared in spec:inputs", name)
		}
	}
	for name, in := range c.Inputs {
		if !used[name] {
			t.Errorf("input %s is never used", name)
		}
		if in.Description == "" {
			t.Errorf("input %s has no description", name)
		}
		if in.Default == nil {
			t.Errorf("input %s has no default: including the component would require it", name)
		}
		switch in.Type {
		case "", "string", "boolean", "number", "array":
		default:
			t.Errorf("input %s: type %q", name, in.Type)
		}
	}
}

// Every flag the component passes exists in the CLI.
func TestComponentFlagsExist(t *testing.T) {
	job := hiddenJob(t, loadComponent(t), nil)
	flag := regexp.MustCompile(`--([a-z][a-z0-9-]*)`)
	for verb, lines := range map[string][]string{"up": job.BeforeScript, "down": job.AfterScript} {
		var help bytes.Buffer
		deps := app.DefaultDeps("test")
		deps.Stdout, deps.Stderr = &help, &help
		_ = app.Run(context.Background(), []string{verb, "-h"}, deps)
		for _, line := range lines {
			if !strings.Contains(line, "setup-ephemeral-buildkit "+verb) {
				continue
			}
			for _, m := range flag.FindAllStringSubmatch(line, -1) {
				if !strings.Contains(help.String(), "-"+m[1]+" ") && !strings.Contains(help.String(), "-"+m[1]+"\n") {
					t.Errorf("%s: flag --%s is not in `setup-ephemeral-buildkit %s -h`:\n%s", verb, m[1], verb, help.String())
				}
			}
		}
	}
}

// fakeCLI records its arguments and, for up, prints export lines as the real one does.
const fakeCLI = `#!/usr/bin/env bash
printf '%s\n' "$*" >> "$FAKE_CALLS"
case "$1" in
up)
  echo "Starting builders for $CI_JOB_ID" >&2
  [ -n "$FAKE_UP_FAIL" ] && { echo "error: no nodes" >&2; exit 1; }
  echo "export BUILDX_BUILDER='buildkit-job$CI_JOB_ID'"
  echo "export BUILDKIT_HOST='tcp://10.213.0.9:1234'"
  echo "export EPHEMERAL_BUILDKIT_NOTE='it'\''s here'"
  ;;
down)
  echo "Removed builder" >&2
  ;;
esac
`

// runJob runs the hidden job's before_script, the job's script and after_script as GitLab's
// Kubernetes executor does (package gitlabci renders them): variables exported, before_script and
// script in one shell, after_script in a shell of its own, rendered once the main one has ended
// and told its status.
func runJob(t *testing.T, job gitlabci.Job, script []string, env []string) (mainErr error, calls []string, out string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "setup-ephemeral-buildkit"), []byte(fakeCLI), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "docker"), []byte("#!/bin/sh\necho \"docker $*\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	callsFile := filepath.Join(dir, "calls")
	jobID := fmt.Sprintf("%d", 900000+os.Getpid()%100000)
	predefined := map[string]string{"CI_JOB_ID": jobID, "CI_JOB_STATUS": "running"}
	stateDir := "/tmp/setup-ephemeral-buildkit-job-" + jobID
	t.Cleanup(func() { os.RemoveAll(stateDir) })
	var output bytes.Buffer
	shell := func(src string) error {
		cmd := exec.Command("bash", "-c", src)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "FAKE_CALLS="+callsFile)
		cmd.Env = append(cmd.Env, env...)
		cmd.Stdout, cmd.Stderr = &output, &output
		return cmd.Run()
	}
	mainErr = shell(job.MainShell(predefined, script))
	predefined["CI_JOB_STATUS"] = "success"
	if mainErr != nil {
		predefined["CI_JOB_STATUS"] = "failed"
	}
	if err := shell(job.AfterShell(predefined)); err != nil {
		t.Errorf("after_script failed: %v\n%s", err, output.String())
	}
	data, _ := os.ReadFile(callsFile)
	return mainErr, strings.Split(strings.TrimSpace(string(data)), "\n"), output.String()
}

func TestComponentScripts(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	job := hiddenJob(t, loadComponent(t), map[string]string{"platforms": "linux/amd64,linux/arm64", "requests": "cpu=1,memory=2Gi"})
	err, calls, out := runJob(t, job, []string{`echo "script sees $BUILDX_BUILDER at $BUILDKIT_HOST; $EPHEMERAL_BUILDKIT_NOTE"`}, nil)
	if err != nil {
		t.Fatalf("job failed: %v\n%s", err, out)
	}
	if !strings.Contains(out, "script sees buildkit-job") || !strings.Contains(out, "at tcp://10.213.0.9:1234; it's here") {
		t.Errorf("the script did not get the builder's environment:\n%s", out)
	}
	if len(calls) != 2 || !strings.HasPrefix(calls[0], "up ") || !strings.HasPrefix(calls[1], "down ") {
		t.Fatalf("calls:\n%s", strings.Join(calls, "\n"))
	}
	for _, want := range []string{"--platforms linux/amd64,linux/arm64", "--requests cpu=1,memory=2Gi", "--state-dir /tmp/setup-ephemeral-buildkit-job-", "--debug=false"} {
		if !strings.Contains(calls[0], want) {
			t.Errorf("up %q lacks %q", calls[0], want)
		}
	}
	stateDir := calls[0][strings.Index(calls[0], "--state-dir ")+len("--state-dir "):]
	stateDir = strings.Fields(stateDir)[0]
	if !strings.Contains(calls[1], "--state-dir "+stateDir) || !strings.Contains(calls[1], "--job-status success") {
		t.Errorf("down %q: want the same state dir %s and the job status", calls[1], stateDir)
	}
}

// When up fails, the job's script does not run and after_script still removes what was made.
func TestComponentUpFails(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	job := hiddenJob(t, loadComponent(t), nil)
	err, calls, out := runJob(t, job, []string{"echo SCRIPT RAN"}, []string{"FAKE_UP_FAIL=1"})
	if err == nil || strings.Contains(out, "SCRIPT RAN") {
		t.Fatalf("job with failing up: %v\n%s", err, out)
	}
	if len(calls) != 2 || !strings.HasPrefix(calls[1], "down ") || !strings.Contains(calls[1], "--job-status failed") {
		t.Errorf("calls:\n%s", strings.Join(calls, "\n"))
	}
}
