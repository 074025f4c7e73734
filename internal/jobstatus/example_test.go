package jobstatus_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/jobstatus"
)

// The janitor's checker comes from the environment: one checker per CI platform with a token.
// A builder of any other platform is kept (an error, never "finished").
func ExampleFromEnv() {
	env := map[string]string{"GITLAB_TOKEN": "glpat-example", "GITLAB_URL": "https://gitlab.example.com"}
	checker, err := jobstatus.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		panic(err)
	}
	finished, err := checker.JobFinished(context.Background(), cijob.Identity{CIPlatform: "github", Repository: "org/app", JobID: "31337"})
	fmt.Println(finished, errors.Is(err, jobstatus.ErrUnsupportedPlatform))

	none, err := jobstatus.FromEnv(func(string) string { return "" })
	fmt.Println(none == nil, err)
	// Output:
	// false true
	// true <nil>
}
