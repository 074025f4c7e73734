package ci_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
)

// The GitHub adapter reads inputs and identity from the environment it is given and writes
// workflow commands to the writer it is given.
func ExampleNewGitHub() {
	env := map[string]string{
		"INPUT_PLATFORMS":    "linux/amd64,linux/arm64",
		"INPUT_JOB-ID":       "31337",
		"GITHUB_REPOSITORY":  "org/app",
		"GITHUB_RUN_ID":      "42",
		"GITHUB_RUN_ATTEMPT": "1",
		"GITHUB_SERVER_URL":  "https://github.com",
	}
	gh := ci.NewGitHub(
		ci.WithGetenv(func(k string) string { return env[k] }),
		ci.WithWriter(os.Stdout),
	)
	fmt.Println(gh.Input("platforms"))
	job := gh.Job()
	fmt.Println(job.JobID, job.URL)

	end := gh.Group("Provision builders")
	gh.Warningf("builder linux/arm64 slow:\nimage pull took %ds", 40)
	end()
	// Output:
	// linux/amd64,linux/arm64
	// 31337 https://github.com/org/app/actions/runs/42/attempts/1
	// ::group::Provision builders
	// ::warning::builder linux/arm64 slow:%0Aimage pull took 40s
	// ::endgroup::
}

// The Shell adapter prints exports for eval and keeps state in a directory.
func ExampleNewShell() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	up, err := ci.NewShell(ci.ShellConfig{StateDir: dir, Exports: os.Stdout})
	if err != nil {
		panic(err)
	}
	_ = up.ExportEnv("BUILDX_BUILDER", "ephemeral-abc")
	_ = up.SetOutput("platforms", "linux/amd64")
	_ = up.SaveState("builder", "ephemeral-abc")

	down, err := ci.NewShell(ci.ShellConfig{StateDir: dir, Post: true})
	if err != nil {
		panic(err)
	}
	fmt.Println(down.IsPost(), down.State("builder"))
	_, err = os.Stat(filepath.Join(dir, ci.ShellStateFile))
	fmt.Println(err == nil, strings.HasPrefix(ci.ShellQuote("it's"), "'it'"))
	// Output:
	// export BUILDX_BUILDER='ephemeral-abc'
	// export EPHEMERAL_BUILDKIT_PLATFORMS='linux/amd64'
	// true ephemeral-abc
	// true true
}
