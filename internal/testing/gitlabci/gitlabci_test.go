package gitlabci_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/gitlabci"
)

const testComponent = `# a comment
spec:
  inputs:
    platforms:
      description: "Platforms."
      default: "linux/amd64"
    image:
      description: "Image."
      default: ""
    debug:
      description: "Debug."
      type: boolean
      default: false
    project:
      description: "Required: no default."
---
.job:
  variables:
    PLATFORMS: "$[[ inputs.platforms ]]"
    IMAGE: "$[[inputs.image]]"
    DEBUG: "$[[ inputs.debug ]]"
    PROJECT: "$[[ inputs.project ]]"
    STATE_DIR: "/tmp/job-$CI_JOB_ID"
  before_script:
    - echo up "$PLATFORMS"
  after_script:
    - echo down
`

func parse(t *testing.T, text string) gitlabci.Component {
	t.Helper()
	c, err := gitlabci.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParse(t *testing.T) {
	c := parse(t, testComponent)
	if got, want := c.InputNames(), []string{"debug", "image", "platforms", "project"}; !slices.Equal(got, want) {
		t.Errorf("InputNames() = %v, want %v", got, want)
	}
	want := map[string]string{"platforms": "linux/amd64", "image": "", "debug": "false"}
	if got := c.Defaults(); !maps.Equal(got, want) {
		t.Errorf("Defaults() = %v, want %v", got, want)
	}
	if got, want := c.References(), []string{"debug", "image", "platforms", "project"}; !slices.Equal(got, want) {
		t.Errorf("References() = %v, want %v", got, want)
	}
	for name, text := range map[string]string{
		"no separator": "spec:\n  inputs: {}\n",
		"unknown key":  "spec:\n  inputs:\n    a:\n      default: x\n      colour: red\n---\n.job: {}\n",
	} {
		if _, err := gitlabci.Parse([]byte(text)); err == nil {
			t.Errorf("%s: Parse succeeded", name)
		}
	}
}

func TestLoadShippedComponent(t *testing.T) {
	c, err := gitlabci.Load("../../../templates/buildkit.yml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Job(".ephemeral-buildkit", map[string]string{"platforms": "linux/amd64,linux/arm64"}); err != nil {
		t.Fatal(err)
	}
}

func TestInterpolate(t *testing.T) {
	c := parse(t, testComponent)
	job, err := c.Job(".job", map[string]string{"project": "group/app", "image": "moby/buildkit:v1"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"PLATFORMS": "linux/amd64",      // default
		"IMAGE":     "moby/buildkit:v1", // given; $[[inputs.image]] without spaces
		"DEBUG":     "false",            // boolean default
		"PROJECT":   "group/app",
		"STATE_DIR": "/tmp/job-$CI_JOB_ID", // variables are not interpolation's business
	}
	if !maps.Equal(job.Variables, want) {
		t.Errorf("variables = %v, want %v", job.Variables, want)
	}
	if !slices.Equal(job.BeforeScript, []string{`echo up "$PLATFORMS"`}) || !slices.Equal(job.AfterScript, []string{"echo down"}) {
		t.Errorf("scripts: %q, %q", job.BeforeScript, job.AfterScript)
	}
}

func TestInterpolateErrors(t *testing.T) {
	withBody := func(body string) gitlabci.Component {
		c := parse(t, testComponent)
		c.Body = body
		return c
	}
	for _, tc := range []struct {
		name   string
		c      gitlabci.Component
		values map[string]string
		input  string // the InputError's input, if any
		want   error
	}{
		{"unknown reference", withBody("a: $[[ inputs.platfroms ]]\n"), nil, "platfroms", gitlabci.ErrUnknownInput},
		{"unknown value", parse(t, testComponent), map[string]string{"project": "p", "colour": "red"}, "colour", gitlabci.ErrUnknownInput},
		{"required input left out", parse(t, testComponent), nil, "project", gitlabci.ErrMissingInput},
		{"boolean", parse(t, testComponent), map[string]string{"project": "p", "debug": "yes"}, "debug", gitlabci.ErrInputType},
		{"function", withBody("a: $[[ inputs.image | expand_vars ]]\n"), nil, "", gitlabci.ErrInterpolation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.c.Interpolate(tc.values)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Interpolate: %v, want %v", err, tc.want)
			}
			var inputErr *gitlabci.InputError
			if tc.input != "" && (!errors.As(err, &inputErr) || inputErr.Name != tc.input) {
				t.Errorf("Interpolate: %v, want an InputError naming %q", err, tc.input)
			}
		})
	}
	if _, err := parse(t, testComponent).Job(".other", map[string]string{"project": "p"}); err == nil || !strings.Contains(err.Error(), ".job") {
		t.Errorf("Job of a job not defined: %v", err)
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"CI_JOB_ID": "42", "EMPTY": ""}
	lookup := func(name string) string { return env[name] }
	for value, want := range map[string]string{
		"/tmp/job-$CI_JOB_ID":      "/tmp/job-42",
		"/tmp/job-${CI_JOB_ID}.d":  "/tmp/job-42.d",
		"$CI_JOB_IDX":              "", // the longest name
		"a${UNSET}b$EMPTY":         "ab",
		"cost: $$5, $$CI_JOB_ID":   "cost: $5, $CI_JOB_ID",
		"$1 $? $@ $# $* $! $- $0x": "       x", // seven spaces: each special parameter is empty
		"trailing $":               "trailing $",
		"no references":            "no references",
	} {
		if got := gitlabci.Expand(value, lookup); got != want {
			t.Errorf("Expand(%q) = %q, want %q", value, got, want)
		}
	}
}

func TestEnvironment(t *testing.T) {
	job := gitlabci.Job{Variables: map[string]string{
		"STATE_DIR": "/tmp/job-$CI_JOB_ID",
		"BASE":      "/srv/$CI_PROJECT_PATH",
		"OUT":       "$BASE/out",    // another job variable: its value as written
		"CI_JOB_ID": "overridden",   // a job variable wins over a predefined one ...
		"ORIGINAL":  "$CI_JOB_NAME", // ... which others see
		"LITERAL":   "it's $$HOME",
	}}
	env := map[string]string{"CI_JOB_ID": "42", "CI_PROJECT_PATH": "group/app", "CI_JOB_NAME": "build"}
	got := job.Environment(env)
	want := map[string]string{
		"CI_JOB_ID":       "overridden",
		"CI_PROJECT_PATH": "group/app",
		"CI_JOB_NAME":     "build",
		"STATE_DIR":       "/tmp/job-overridden",
		"BASE":            "/srv/group/app",
		"OUT":             "/srv/$CI_PROJECT_PATH/out",
		"ORIGINAL":        "build",
		"LITERAL":         "it's $HOME",
	}
	if !maps.Equal(got, want) {
		t.Errorf("Environment() =\n%v\nwant\n%v", got, want)
	}
	if env["CI_JOB_ID"] != "42" {
		t.Error("Environment changed its argument")
	}
}

// shells are the shells the rendered scripts must run under, found on this machine: bash (GitLab
// Runner's first choice), dash (Debian's sh) and BusyBox sh (the only shell of the BuildKit
// image the job pods of the end-to-end tests run).
func shells(t *testing.T) map[string][]string {
	t.Helper()
	found := map[string][]string{}
	if p, err := exec.LookPath("bash"); err == nil {
		found["bash"] = []string{p, "-c"}
	}
	if p, err := exec.LookPath("dash"); err == nil {
		found["dash"] = []string{p, "-c"}
	}
	if p, err := exec.LookPath("busybox"); err == nil {
		found["busybox"] = []string{p, "sh", "-c"}
	}
	if len(found) == 0 {
		t.Fatal("none of bash, dash and busybox is on PATH: the rendered scripts cannot be run")
	}
	return found
}

func runShell(t *testing.T, shell []string, script string) (string, error) {
	t.Helper()
	cmd := exec.Command(shell[0], append(shell[1:], script)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/nonexistent"}
	cmd.Stdin = strings.NewReader("the runner's stdin\n")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestScripts(t *testing.T) {
	job := gitlabci.Job{
		Variables: map[string]string{
			"STATE_DIR": "/tmp/job-$CI_JOB_ID",
			"TRICKY":    `it's "$$HOME" and ${CI_JOB_ID}` + "\nsecond line",
		},
		BeforeScript: []string{"export FROM_MAIN=main", `echo "before: $STATE_DIR"`},
		AfterScript:  []string{`echo "after: ${FROM_MAIN:-unset} $CI_JOB_STATUS $STATE_DIR"`},
	}
	for name, shell := range shells(t) {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{"CI_JOB_ID": "42", "CI_JOB_STATUS": "running"}
			out, err := runShell(t, shell, job.MainShell(env, []string{
				`echo "script: $FROM_MAIN"`,
				`printf 'tricky: %s|\n' "$TRICKY"`,
				`read -r line || echo "stdin: empty"`,
			}))
			if err != nil {
				t.Fatalf("main script: %v\n%s", err, out)
			}
			want := "before: /tmp/job-42\nscript: main\ntricky: it's \"$HOME\" and 42\nsecond line|\nstdin: empty\n"
			if out != want {
				t.Errorf("main script printed\n%s\nwant\n%s", out, want)
			}

			env["CI_JOB_STATUS"] = "success"
			out, err = runShell(t, shell, job.AfterShell(env))
			if err != nil || out != "after: unset success /tmp/job-42\n" {
				t.Errorf("after_script: %v\n%s", err, out)
			}

			// errexit: the first failing command ends the script. (Its status is not always the
			// script's: bash ends `: | eval '...'` with 1, as jobs on GitLab do.)
			out, err = runShell(t, shell, job.MainShell(env, []string{"echo one", "(exit 3)", "echo two"}))
			var exit *exec.ExitError
			if !errors.As(err, &exit) || !strings.Contains(out, "one") || strings.Contains(out, "two") {
				t.Errorf("failing command: %v\n%s", err, out)
			}

			// pipefail where the shell has it.
			out, err = runShell(t, shell, job.MainShell(env, []string{"false | cat", "echo reached"}))
			if name == "dash" {
				if err != nil || !strings.Contains(out, "reached") {
					t.Errorf("dash has no pipefail; the script must go on: %v\n%s", err, out)
				}
			} else if err == nil || strings.Contains(out, "reached") {
				t.Errorf("a failing pipeline did not end the script: %v\n%s", err, out)
			}
		})
	}
}

func ExampleJob_MainShell() {
	c, err := gitlabci.Parse([]byte(`spec:
  inputs:
    platforms:
      default: ""
---
.build:
  variables:
    PLATFORMS: "$[[ inputs.platforms ]]"
    STATE: "/tmp/job-$CI_JOB_ID"
  before_script:
    - setup --platforms "$PLATFORMS" > "$STATE/exports.sh"
`))
	if err != nil {
		panic(err)
	}
	job, err := c.Job(".build", map[string]string{"platforms": "linux/amd64,linux/arm64"})
	if err != nil {
		panic(err)
	}
	fmt.Print(job.MainShell(map[string]string{"CI_JOB_ID": "7"}, []string{"docker buildx build ."}))
	// Output:
	// if set -o | grep pipefail >/dev/null; then set -o pipefail; fi; set -o errexit
	// set +o noclobber
	// : | eval 'export CI_JOB_ID='\''7'\''
	// export PLATFORMS='\''linux/amd64,linux/arm64'\''
	// export STATE='\''/tmp/job-7'\''
	// setup --platforms "$PLATFORMS" > "$STATE/exports.sh"
	// docker buildx build .
	// '
	// exit 0
}
