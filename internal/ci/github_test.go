package ci

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// fixedRandom yields delimiters ghadelimiter_0000..., ghadelimiter_0101..., one per call.
type fixedRandom struct{ n byte }

func (r *fixedRandom) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.n
	}
	r.n++
	return len(p), nil
}

// githubFixture is a GitHub adapter over a fake environment whose file commands point at empty
// files in a temporary directory, as the runner prepares them.
type githubFixture struct {
	gh  *GitHub
	env map[string]string
	out *bytes.Buffer
}

func newGitHubFixture(t *testing.T, env map[string]string) *githubFixture {
	t.Helper()
	dir := t.TempDir()
	if env == nil {
		env = map[string]string{}
	}
	for _, v := range []string{EnvGitHubOutput, EnvGitHubEnv, EnvGitHubState, EnvGitHubStepSummary} {
		path := filepath.Join(dir, strings.ToLower(v))
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, set := env[v]; !set {
			env[v] = path
		}
	}
	out := &bytes.Buffer{}
	gh := NewGitHub(
		WithGetenv(func(k string) string { return env[k] }),
		WithWriter(out),
		WithRandom(&fixedRandom{}),
	)
	return &githubFixture{gh: gh, env: env, out: out}
}

func (f *githubFixture) file(t *testing.T, variable string) string {
	t.Helper()
	data, err := os.ReadFile(f.env[variable])
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// parseEnvFile reads an environment file the way the runner does: NAME=value lines, and
// NAME<<DELIMITER blocks ended by a line equal to DELIMITER.
func parseEnvFile(content string) (map[string]string, error) {
	result := map[string]string{}
	lines := strings.Split(content, "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if line == "" {
			continue
		}
		eq, heredoc := strings.Index(line, "="), strings.Index(line, "<<")
		if eq >= 0 && (heredoc < 0 || eq < heredoc) {
			result[line[:eq]] = line[eq+1:]
			continue
		}
		if heredoc < 0 {
			return nil, fmt.Errorf("line %d: invalid format %q", i+1, line)
		}
		name, delimiter := line[:heredoc], line[heredoc+2:]
		var value []string
		for i++; ; i++ {
			if i >= len(lines) {
				return nil, fmt.Errorf("%s: delimiter %q not found", name, delimiter)
			}
			if lines[i] == delimiter {
				break
			}
			value = append(value, lines[i])
		}
		result[name] = strings.Join(value, "\n")
	}
	return result, nil
}

func TestGitHubFileCommandsFormat(t *testing.T) {
	f := newGitHubFixture(t, nil)
	if err := f.gh.SetOutput("name", "builder-abc"); err != nil {
		t.Fatal(err)
	}
	if err := f.gh.SetOutput("nodes", "[\n  {\"name\": \"a\"}\n]"); err != nil {
		t.Fatal(err)
	}
	want := "name<<ghadelimiter_00000000000000000000000000000000\nbuilder-abc\nghadelimiter_00000000000000000000000000000000\n" +
		"nodes<<ghadelimiter_01010101010101010101010101010101\n[\n  {\"name\": \"a\"}\n]\nghadelimiter_01010101010101010101010101010101\n"
	if got := f.file(t, EnvGitHubOutput); got != want {
		t.Errorf("GITHUB_OUTPUT =\n%s\nwant\n%s", got, want)
	}

	if err := f.gh.ExportEnv("BUILDX_BUILDER", "builder-abc"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.file(t, EnvGitHubEnv), "BUILDX_BUILDER<<ghadelimiter_02020202020202020202020202020202\nbuilder-abc\nghadelimiter_02020202020202020202020202020202\n"; got != want {
		t.Errorf("GITHUB_ENV = %q, want %q", got, want)
	}

	if err := f.gh.SaveState(StateIsPost, "true"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.file(t, EnvGitHubState), "isPost<<ghadelimiter_03030303030303030303030303030303\ntrue\nghadelimiter_03030303030303030303030303030303\n"; got != want {
		t.Errorf("GITHUB_STATE = %q, want %q", got, want)
	}
	if f.out.Len() != 0 {
		t.Errorf("file commands wrote to the log: %q", f.out)
	}
}

func TestGitHubFileCommandsRoundTrip(t *testing.T) {
	values := map[string]string{
		"empty":          "",
		"spaces":         "  leading and trailing  ",
		"equals":         "a=b<<c",
		"eof":            "EOF\nEOF",
		"multi":          "line 1\nline 2\n",
		"crlf":           "dos\r\nline",
		"percent":        "%0A is not a line break here",
		"workflow-cmd":   "::set-output name=x::y",
		"unicode":        "größe ✓",
		"json":           `{"linux/amd64":"tcp://10.0.0.1:1234"}`,
		"with space key": "v",
	}
	for _, setter := range []struct {
		variable string
		set      func(*GitHub, string, string) error
	}{
		{EnvGitHubOutput, (*GitHub).SetOutput},
		{EnvGitHubEnv, (*GitHub).ExportEnv},
		{EnvGitHubState, (*GitHub).SaveState},
	} {
		t.Run(setter.variable, func(t *testing.T) {
			f := newGitHubFixture(t, nil)
			for name, value := range values {
				if err := setter.set(f.gh, name, value); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
			got, err := parseEnvFile(f.file(t, setter.variable))
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range values {
				if got[name] != want {
					t.Errorf("%s read back as %q, want %q", name, got[name], want)
				}
			}
			if len(got) != len(values) {
				t.Errorf("read %d entries, wrote %d", len(got), len(values))
			}
		})
	}
}

func TestGitHubFileCommandErrors(t *testing.T) {
	t.Run("delimiter in value", func(t *testing.T) {
		f := newGitHubFixture(t, nil)
		// The fixture's first delimiter is ghadelimiter_ followed by 32 zeros.
		value := "x\nghadelimiter_00000000000000000000000000000000\ninjected<<EOF"
		err := f.gh.SetOutput("out", value)
		if !errors.Is(err, ErrDelimiterCollision) {
			t.Fatalf("error = %v, want ErrDelimiterCollision", err)
		}
		if got := f.file(t, EnvGitHubOutput); got != "" {
			t.Errorf("file written despite the error: %q", got)
		}
	})
	t.Run("delimiter in name", func(t *testing.T) {
		f := newGitHubFixture(t, nil)
		if err := f.gh.ExportEnv("ghadelimiter_00000000000000000000000000000000", "v"); !errors.Is(err, ErrDelimiterCollision) {
			t.Fatalf("error = %v, want ErrDelimiterCollision", err)
		}
	})
	t.Run("invalid names", func(t *testing.T) {
		f := newGitHubFixture(t, nil)
		for _, name := range []string{"", "a=b", "a<<b", "a\nb", "a\rb"} {
			for _, set := range []func(string, string) error{f.gh.SetOutput, f.gh.ExportEnv, f.gh.SaveState} {
				if err := set(name, "v"); !errors.Is(err, ErrInvalidName) {
					t.Errorf("name %q: error = %v, want ErrInvalidName", name, err)
				}
			}
		}
		for _, v := range []string{EnvGitHubOutput, EnvGitHubEnv, EnvGitHubState} {
			if got := f.file(t, v); got != "" {
				t.Errorf("%s written: %q", v, got)
			}
		}
	})
	t.Run("variable unset", func(t *testing.T) {
		f := newGitHubFixture(t, map[string]string{EnvGitHubOutput: "", EnvGitHubStepSummary: ""})
		err := f.gh.SetOutput("name", "v")
		if !errors.Is(err, ErrNotConfigured) || !strings.Contains(err.Error(), "GITHUB_OUTPUT") {
			t.Errorf("SetOutput error = %v, want ErrNotConfigured naming GITHUB_OUTPUT", err)
		}
		if err := f.gh.Summary("# hi"); !errors.Is(err, ErrNotConfigured) {
			t.Errorf("Summary error = %v, want ErrNotConfigured", err)
		}
	})
	t.Run("file missing is not created", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "gone")
		f := newGitHubFixture(t, map[string]string{EnvGitHubEnv: missing})
		if err := f.gh.ExportEnv("A", "v"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error = %v, want fs.ErrNotExist", err)
		}
		if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("file was created: %v", err)
		}
	})
	t.Run("file is a directory", func(t *testing.T) {
		f := newGitHubFixture(t, map[string]string{EnvGitHubState: t.TempDir()})
		err := f.gh.SaveState("k", "v")
		if err == nil || !strings.Contains(err.Error(), "GITHUB_STATE") {
			t.Errorf("error = %v, want an error naming GITHUB_STATE", err)
		}
	})
	t.Run("write fails", func(t *testing.T) {
		if _, err := os.Stat("/dev/full"); err != nil {
			t.Skip("no /dev/full")
		}
		f := newGitHubFixture(t, map[string]string{EnvGitHubOutput: "/dev/full", EnvGitHubStepSummary: "/dev/full"})
		if err := f.gh.SetOutput("name", "v"); err == nil || !strings.Contains(err.Error(), "writing GITHUB_OUTPUT") {
			t.Errorf("SetOutput error = %v, want a write error", err)
		}
		if err := f.gh.Summary("x"); err == nil {
			t.Error("Summary to /dev/full gave no error")
		}
	})
	t.Run("random source fails", func(t *testing.T) {
		f := newGitHubFixture(t, nil)
		f.gh.random = strings.NewReader("")
		if err := f.gh.SetOutput("name", "v"); err == nil || !strings.Contains(err.Error(), "delimiter") {
			t.Errorf("error = %v, want a delimiter error", err)
		}
	})
}

func TestGitHubInput(t *testing.T) {
	f := newGitHubFixture(t, map[string]string{
		"INPUT_PLATFORMS":          "  linux/amd64,linux/arm64\n",
		"INPUT_JOB-ID":             "12345",
		"INPUT_BUILDKITD-FLAGS":    "--debug",
		"INPUT_MY_SPACED_INPUT":    "spaced",
		"INPUT_BUILDKITD-CONFIG-I": "",
	})
	tests := map[string]string{
		"platforms":       "linux/amd64,linux/arm64",
		"PLATFORMS":       "linux/amd64,linux/arm64",
		"job-id":          "12345",
		"buildkitd-flags": "--debug",
		"my spaced input": "spaced",
		"unset":           "",
		"job_id":          "",
	}
	for name, want := range tests {
		if got := f.gh.Input(name); got != want {
			t.Errorf("Input(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestGitHubStateAndIsPost(t *testing.T) {
	f := newGitHubFixture(t, map[string]string{"STATE_builder": "builder-abc"})
	if got := f.gh.State("builder"); got != "builder-abc" {
		t.Errorf("State = %q", got)
	}
	if f.gh.IsPost() {
		t.Error("IsPost without STATE_isPost")
	}
	f.env["STATE_isPost"] = "true"
	if !f.gh.IsPost() {
		t.Error("IsPost false with STATE_isPost")
	}
}

func TestGitHubJob(t *testing.T) {
	base := map[string]string{
		"GITHUB_REPOSITORY":       "org/app",
		"GITHUB_RUN_ID":           "9876543210",
		"GITHUB_RUN_ATTEMPT":      "2",
		"GITHUB_JOB":              "image",
		"GITHUB_SHA":              "0123456789abcdef0123456789abcdef01234567",
		"GITHUB_SERVER_URL":       "https://github.example/",
		"RUNNER_NAME":             "arc-runner-x7k2p-runner-abcde",
		"ACTIONS_RUNNER_POD_NAME": "arc-runner-x7k2p-runner-abcde",
		"INPUT_JOB-ID":            "55501",
	}
	t.Run("full", func(t *testing.T) {
		f := newGitHubFixture(t, base)
		want := cijob.Identity{
			CIPlatform: "github",
			Repository: "org/app",
			RunID:      "9876543210",
			RunAttempt: "2",
			JobID:      "55501",
			JobName:    "image",
			Commit:     "0123456789abcdef0123456789abcdef01234567",
			URL:        "https://github.example/org/app/actions/runs/9876543210/attempts/2",
		}
		if got := f.gh.Job(); got != want {
			t.Errorf("Job() =\n%+v\nwant\n%+v", got, want)
		}
	})
	t.Run("runner candidates", func(t *testing.T) {
		env := clone(base)
		env["ACTIONS_RUNNER_POD_NAME"] = "workflow-pod"
		f := newGitHubFixture(t, env)
		want := []cijob.RunnerCandidate{{Name: "workflow-pod", Source: "ACTIONS_RUNNER_POD_NAME"}, {Name: "arc-runner-x7k2p-runner-abcde", Source: "RUNNER_NAME"}}
		if got := f.gh.RunnerCandidates(); !slices.Equal(got, want) {
			t.Errorf("RunnerCandidates() = %+v, want %+v", got, want)
		}
		delete(env, "ACTIONS_RUNNER_POD_NAME")
		delete(env, "RUNNER_NAME")
		if got := f.gh.RunnerCandidates(); len(got) != 0 {
			t.Errorf("RunnerCandidates() without the variables = %+v, want none", got)
		}
	})
	t.Run("no job-id falls back to job and runner", func(t *testing.T) {
		env := clone(base)
		delete(env, "INPUT_JOB-ID")
		f := newGitHubFixture(t, env)
		if got, want := f.gh.Job().JobID, "image@arc-runner-x7k2p-runner-abcde"; got != want {
			t.Errorf("JobID = %q, want %q", got, want)
		}
		delete(env, "RUNNER_NAME")
		if got, want := f.gh.Job().JobID, "image"; got != want {
			t.Errorf("JobID without runner name = %q, want %q", got, want)
		}
	})
	t.Run("no attempt", func(t *testing.T) {
		env := clone(base)
		delete(env, "GITHUB_RUN_ATTEMPT")
		f := newGitHubFixture(t, env)
		if got, want := f.gh.Job().URL, "https://github.example/org/app/actions/runs/9876543210"; got != want {
			t.Errorf("URL = %q, want %q", got, want)
		}
	})
	t.Run("no server", func(t *testing.T) {
		env := clone(base)
		delete(env, "GITHUB_SERVER_URL")
		f := newGitHubFixture(t, env)
		if got := f.gh.Job().URL; got != "" {
			t.Errorf("URL = %q, want empty", got)
		}
	})
}

func clone(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func TestGitHubLogging(t *testing.T) {
	f := newGitHubFixture(t, nil)
	end := f.gh.Group("Provision builders: linux/amd64, linux/arm64")
	f.gh.Infof("pod %s: %s", "b-amd64", "Pending")
	f.gh.Infof("already terminated\n")
	f.gh.Debugf("watch event %d\nsecond line", 3)
	f.gh.Warningf("cleanup: %s", "100% done, 1 left\r\n")
	f.gh.Errorf("builder %s: %v", "linux/arm64", "not ready:\nImagePullBackOff")
	end()
	end()
	want := strings.Join([]string{
		"::group::Provision builders: linux/amd64, linux/arm64",
		"pod b-amd64: Pending",
		"already terminated",
		"::debug::watch event 3%0Asecond line",
		"::warning::cleanup: 100%25 done, 1 left%0D%0A",
		"::error::builder linux/arm64: not ready:%0AImagePullBackOff",
		"::endgroup::",
		"",
	}, "\n")
	if got := f.out.String(); got != want {
		t.Errorf("log =\n%s\nwant\n%s", got, want)
	}
}

func TestGitHubMask(t *testing.T) {
	f := newGitHubFixture(t, nil)
	if err := f.gh.Mask("s3cr%t"); err != nil {
		t.Fatal(err)
	}
	if err := f.gh.Mask(""); err != nil {
		t.Fatal(err)
	}
	if err := f.gh.Mask("-----BEGIN KEY-----\r\nabc\n\n-----END KEY-----\n"); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"::add-mask::s3cr%25t",
		"::add-mask::-----BEGIN KEY-----%0D%0Aabc%0A%0A-----END KEY-----%0A",
		"::add-mask::-----BEGIN KEY-----",
		"::add-mask::abc",
		"::add-mask::-----END KEY-----",
		"",
	}, "\n")
	if got := f.out.String(); got != want {
		t.Errorf("log =\n%s\nwant\n%s", got, want)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("stdout closed") }

func TestGitHubMaskWriteError(t *testing.T) {
	gh := NewGitHub(WithGetenv(func(string) string { return "" }), WithWriter(failingWriter{}))
	if err := gh.Mask("secret"); err == nil || !strings.Contains(err.Error(), "stdout closed") {
		t.Errorf("error = %v, want the writer's error", err)
	}
	// Logging drops write errors instead of panicking.
	gh.Infof("x")
	gh.Group("g")()
}

func TestGitHubSummary(t *testing.T) {
	f := newGitHubFixture(t, nil)
	if err := f.gh.Summary("| platform | endpoint |\n|---|---|"); err != nil {
		t.Fatal(err)
	}
	if err := f.gh.Summary("done\n"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.file(t, EnvGitHubStepSummary), "| platform | endpoint |\n|---|---|\ndone\n"; got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
	if err := f.gh.Summary(strings.Repeat("x", maxSummaryBytes)); err == nil {
		t.Error("an oversized summary was accepted")
	}
}

func TestGitHubDebugAndTempDir(t *testing.T) {
	f := newGitHubFixture(t, map[string]string{"RUNNER_TEMP": "/runner/_work/_temp"})
	if f.gh.Debug() {
		t.Error("Debug without RUNNER_DEBUG")
	}
	f.env["RUNNER_DEBUG"] = "1"
	if !f.gh.Debug() {
		t.Error("Debug false with RUNNER_DEBUG=1")
	}
	if got := f.gh.TempDir(); got != "/runner/_work/_temp" {
		t.Errorf("TempDir = %q", got)
	}
	delete(f.env, "RUNNER_TEMP")
	if got := f.gh.TempDir(); got != "/tmp" {
		t.Errorf("TempDir without RUNNER_TEMP = %q", got)
	}
	f.env["TMPDIR"] = "/var/tmp"
	if got := f.gh.TempDir(); got != "/var/tmp" {
		t.Errorf("TempDir with TMPDIR = %q", got)
	}
}

func TestGitHubConcurrentLogging(t *testing.T) {
	f := newGitHubFixture(t, nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				f.gh.Infof("builder %d event %d", i, j)
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(f.out.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "builder ") {
			t.Fatalf("torn line %q", l)
		}
	}
}

func TestGitHubName(t *testing.T) {
	if got := NewGitHub().Name(); got != "github" {
		t.Errorf("Name = %q", got)
	}
}

// Pull requests from forks (or unreadable ones) are untrusted; pushes and same-repository pull
// requests are not.
func TestGitHubJobMarksForkPullRequestsUntrusted(t *testing.T) {
	payload := func(fork bool, head, base string) string {
		return fmt.Sprintf(`{"pull_request":{"head":{"repo":{"fork":%t,"full_name":%q}},"base":{"repo":{"full_name":%q}}}}`, fork, head, base)
	}
	for _, tc := range []struct {
		name, event, payload string
		untrusted            bool
	}{
		{"push", "push", "", false},
		{"same-repository pull request", "pull_request", payload(false, "org/app", "org/app"), false},
		{"fork pull request", "pull_request", payload(true, "someone/app", "org/app"), true},
		{"pull_request_target from a fork", "pull_request_target", payload(true, "someone/app", "org/app"), true},
		{"head repository deleted", "pull_request", `{"pull_request":{"head":{"repo":null},"base":{"repo":{"full_name":"org/app"}}}}`, true},
		{"unreadable payload", "pull_request", "", true},
	} {
		env := map[string]string{"GITHUB_EVENT_NAME": tc.event, "GITHUB_EVENT_PATH": "/event.json", "GITHUB_REPOSITORY": "org/app"}
		readFile := func(path string) ([]byte, error) {
			if path != "/event.json" || tc.payload == "" {
				return nil, os.ErrNotExist
			}
			return []byte(tc.payload), nil
		}
		gh := NewGitHub(WithGetenv(func(k string) string { return env[k] }), WithReadFile(readFile))
		if got := gh.Job().Untrusted; got != tc.untrusted {
			t.Errorf("%s: Untrusted = %v, want %v", tc.name, got, tc.untrusted)
		}
	}
}
