package ci

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// Environment variables the GitHub runner sets for a step.
const (
	EnvGitHubOutput      = "GITHUB_OUTPUT"
	EnvGitHubEnv         = "GITHUB_ENV"
	EnvGitHubState       = "GITHUB_STATE"
	EnvGitHubStepSummary = "GITHUB_STEP_SUMMARY"
	EnvRunnerDebug       = "RUNNER_DEBUG"
	EnvRunnerTemp        = "RUNNER_TEMP"
	// EnvRunnerName is the runner's name; on actions-runner-controller, the runner pod's.
	EnvRunnerName = "RUNNER_NAME"
	// EnvActionsRunnerPodName is the runner pod's name in the runner's kubernetes container mode.
	EnvActionsRunnerPodName = "ACTIONS_RUNNER_POD_NAME"
)

// InputJobID is the action's input carrying the job's check-run id (`${{ job.check_run_id }}`),
// the only value that tells matrix jobs apart: they share GITHUB_JOB.
const InputJobID = "job-id"

// maxSummaryBytes is the runner's limit on one step's job summary.
const maxSummaryBytes = 1024 * 1024

// GitHub is the System of a GitHub Actions step (also under actions-runner-controller and act).
// Build it with NewGitHub.
type GitHub struct {
	getenv   func(string) string
	readFile func(string) ([]byte, error)
	out      *LockedWriter
	random   io.Reader
}

var _ System = (*GitHub)(nil)

// GitHubOption configures NewGitHub.
type GitHubOption func(*GitHub)

// WithGetenv makes the adapter read the environment through getenv (default os.Getenv).
func WithGetenv(getenv func(string) string) GitHubOption {
	return func(g *GitHub) { g.getenv = getenv }
}

// WithReadFile makes the adapter read files (the event payload) through readFile (default
// os.ReadFile).
func WithReadFile(readFile func(string) ([]byte, error)) GitHubOption {
	return func(g *GitHub) { g.readFile = readFile }
}

// WithWriter makes the adapter write logs and workflow commands to w (default os.Stdout), which
// the runner reads.
func WithWriter(w io.Writer) GitHubOption {
	return func(g *GitHub) { g.out = &LockedWriter{W: w} }
}

// WithRandom makes the adapter draw heredoc delimiters from r (default crypto/rand.Reader).
func WithRandom(r io.Reader) GitHubOption {
	return func(g *GitHub) { g.random = r }
}

// NewGitHub returns the GitHub adapter.
func NewGitHub(opts ...GitHubOption) *GitHub {
	g := &GitHub{getenv: os.Getenv, readFile: os.ReadFile, out: &LockedWriter{W: os.Stdout}, random: defaultRandom()}
	for _, opt := range opts {
		opt(g)
	}
	return g
}

// Name returns "github".
func (g *GitHub) Name() string { return cijob.GitHub }

// Input returns INPUT_<NAME>, where NAME is name upper-cased with spaces replaced by underscores
// (hyphens are kept: input "job-id" is INPUT_JOB-ID), trimmed of surrounding white space.
func (g *GitHub) Input(name string) string {
	key := "INPUT_" + strings.ToUpper(strings.ReplaceAll(name, " ", "_"))
	return strings.TrimSpace(g.getenv(key))
}

// Job reads the job's identity from the runner's environment: GITHUB_REPOSITORY,
// GITHUB_REPOSITORY_ID, GITHUB_RUN_ID, GITHUB_RUN_ATTEMPT, GITHUB_JOB, GITHUB_SHA, and the job-id
// input for JobID. URL is the run attempt's page,
// GITHUB_SERVER_URL/GITHUB_REPOSITORY/actions/runs/GITHUB_RUN_ID/attempts/GITHUB_RUN_ATTEMPT.
//
// When the job-id input is empty (a runner too old for job.check_run_id, or act), JobID falls
// back to GITHUB_JOB and RUNNER_NAME joined by "@": unique among the jobs of a run attempt that
// run at the same time, since a runner runs one job at a time.
func (g *GitHub) Job() cijob.Identity {
	id := cijob.Identity{
		CIPlatform:   g.Name(),
		Repository:   g.getenv("GITHUB_REPOSITORY"),
		RepositoryID: g.getenv("GITHUB_REPOSITORY_ID"),
		RunID:        g.getenv("GITHUB_RUN_ID"),
		RunAttempt:   g.getenv("GITHUB_RUN_ATTEMPT"),
		JobID:        g.Input(InputJobID),
		JobName:      g.getenv("GITHUB_JOB"),
		Commit:       g.getenv("GITHUB_SHA"),
	}
	if id.JobID == "" {
		id.JobID = id.JobName
		if runner := g.getenv(EnvRunnerName); runner != "" {
			id.JobID += "@" + runner
		}
	}
	id.Untrusted = g.fromFork()
	if server := strings.TrimRight(g.getenv("GITHUB_SERVER_URL"), "/"); server != "" && id.Repository != "" && id.RunID != "" {
		id.URL = server + "/" + id.Repository + "/actions/runs/" + id.RunID
		if id.RunAttempt != "" {
			id.URL += "/attempts/" + id.RunAttempt
		}
	}
	return id
}

// fromFork reports whether the job runs for a pull request from a fork (GITHUB_EVENT_NAME
// pull_request or pull_request_target, the event payload at GITHUB_EVENT_PATH naming a head
// repository that is a fork or not the base repository). Such a job is Untrusted. A pull
// request whose payload cannot be read counts as one from a fork: wrongly keeping a cache apart
// costs a cold build, wrongly sharing it could poison every later build.
func (g *GitHub) fromFork() bool {
	event := g.getenv("GITHUB_EVENT_NAME")
	if event != "pull_request" && event != "pull_request_target" {
		return false
	}
	readFile := g.readFile
	if readFile == nil {
		readFile = os.ReadFile
	}
	payload, err := readFile(g.getenv("GITHUB_EVENT_PATH"))
	if err != nil {
		return true
	}
	return PullRequestFromFork(payload)
}

// PullRequestFromFork reads a pull_request event payload: true when its head repository is a
// fork, is another repository than the base, or is missing (a deleted fork), or when the
// payload is unreadable.
func PullRequestFromFork(payload []byte) bool {
	var event struct {
		PullRequest *struct {
			Head struct {
				Repo *struct {
					Fork     bool   `json:"fork"`
					FullName string `json:"full_name"`
				} `json:"repo"`
			} `json:"head"`
			Base struct {
				Repo *struct {
					FullName string `json:"full_name"`
				} `json:"repo"`
			} `json:"base"`
		} `json:"pull_request"`
	}
	if err := json.Unmarshal(payload, &event); err != nil || event.PullRequest == nil {
		return true
	}
	head, base := event.PullRequest.Head.Repo, event.PullRequest.Base.Repo
	return head == nil || base == nil || head.Fork || head.FullName != base.FullName
}

// RunnerCandidates returns ACTIONS_RUNNER_POD_NAME (set in the runner's kubernetes container
// mode), then RUNNER_NAME (on actions-runner-controller, the runner pod's name), where set.
func (g *GitHub) RunnerCandidates() []cijob.RunnerCandidate {
	var list []cijob.RunnerCandidate
	for _, env := range []string{EnvActionsRunnerPodName, EnvRunnerName} {
		if name := strings.TrimSpace(g.getenv(env)); name != "" {
			list = append(list, cijob.RunnerCandidate{Name: name, Source: env})
		}
	}
	return list
}

// IsPost reports whether the main step saved StateIsPost, which makes this run the post step.
func (g *GitHub) IsPost() bool { return g.State(StateIsPost) != "" }

// SaveState appends name to the GITHUB_STATE file; the post step reads it as STATE_<name>.
func (g *GitHub) SaveState(name, value string) error {
	return g.appendKeyValue(EnvGitHubState, "state", name, value)
}

// State returns STATE_<name>, the value the main step saved with SaveState.
func (g *GitHub) State(name string) string { return g.getenv("STATE_" + name) }

// SetOutput appends name to the GITHUB_OUTPUT file.
func (g *GitHub) SetOutput(name, value string) error {
	return g.appendKeyValue(EnvGitHubOutput, "output", name, value)
}

// ExportEnv appends name to the GITHUB_ENV file, which sets it for the later steps of the job.
func (g *GitHub) ExportEnv(name, value string) error {
	return g.appendKeyValue(EnvGitHubEnv, "environment variable", name, value)
}

// appendKeyValue writes one entry to the environment file named by the variable fileVar, in the
// multi-line syntax with a fresh random delimiter.
func (g *GitHub) appendKeyValue(fileVar, kind, name, value string) error {
	if err := validateKey(kind, name); err != nil {
		return err
	}
	delimiter, err := newDelimiter(g.random)
	if err != nil {
		return fmt.Errorf("setting %s %q: %w", kind, name, err)
	}
	entry, err := formatKeyValue(name, value, delimiter)
	if err != nil {
		return fmt.Errorf("setting %s: %w", kind, err)
	}
	if err := g.appendFile(fileVar, entry); err != nil {
		return fmt.Errorf("setting %s %q: %w", kind, name, err)
	}
	return nil
}

// appendFile appends text to the file named by the variable fileVar. The runner creates these
// files before the step starts; a missing one is an error, not something to create.
func (g *GitHub) appendFile(fileVar, text string) error {
	path := g.getenv(fileVar)
	if path == "" {
		return fmt.Errorf("%s is unset (not running in a GitHub Actions step?): %w", fileVar, ErrNotConfigured)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("opening %s file: %w", fileVar, err)
	}
	if _, err := io.WriteString(f, text); err != nil {
		_ = f.Close()
		return fmt.Errorf("writing %s file %s: %w", fileVar, path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s file %s: %w", fileVar, path, err)
	}
	return nil
}

// Mask issues ::add-mask:: for value and, for a multi-line value, for each of its non-empty lines,
// since the runner masks line by line. Empty values are ignored.
func (g *GitHub) Mask(value string) error {
	secrets := []string{value}
	if strings.ContainsAny(value, "\r\n") {
		for line := range strings.Lines(value) {
			secrets = append(secrets, strings.TrimRight(line, "\r\n"))
		}
	}
	var b strings.Builder
	for _, secret := range secrets {
		if strings.TrimSpace(secret) == "" {
			continue
		}
		b.WriteString(formatCommand("add-mask", nil, secret))
		b.WriteString("\n")
	}
	if b.Len() == 0 {
		return nil
	}
	if err := g.out.write(b.String()); err != nil {
		return fmt.Errorf("masking a value: %w", err)
	}
	return nil
}

// Group starts a collapsible ::group:: titled title; the returned function issues ::endgroup::
// once, however often it is called.
func (g *GitHub) Group(title string) (end func()) {
	g.command("group", nil, title)
	var once sync.Once
	return func() { once.Do(func() { g.command("endgroup", nil, "") }) }
}

// Debug reports whether RUNNER_DEBUG is 1 (step debug logging, or a re-run with debug logging).
func (g *GitHub) Debug() bool { return g.getenv(EnvRunnerDebug) == "1" }

// Debugf issues ::debug::, which the runner shows only with debug logging on.
func (g *GitHub) Debugf(format string, args ...any) {
	g.command("debug", nil, fmt.Sprintf(format, args...))
}

// Infof writes a plain log line.
func (g *GitHub) Infof(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !strings.HasSuffix(msg, "\n") {
		msg += "\n"
	}
	_ = g.out.write(msg)
}

// Warningf issues ::warning::, an annotation on the run.
func (g *GitHub) Warningf(format string, args ...any) {
	g.command("warning", nil, fmt.Sprintf(format, args...))
}

// Errorf issues ::error::, an annotation on the run. It does not fail the step: the exit code does.
func (g *GitHub) Errorf(format string, args ...any) {
	g.command("error", nil, fmt.Sprintf(format, args...))
}

func (g *GitHub) command(name string, props []property, message string) {
	_ = g.out.write(formatCommand(name, props, message) + "\n")
}

// Summary appends markdown, ending in a line break, to the GITHUB_STEP_SUMMARY file. The runner
// drops a step's summary beyond 1 MiB, so a longer one is refused here.
func (g *GitHub) Summary(markdown string) error {
	if !strings.HasSuffix(markdown, "\n") {
		markdown += "\n"
	}
	if len(markdown) > maxSummaryBytes {
		return fmt.Errorf("writing job summary: %d bytes is more than the runner's limit of %d", len(markdown), maxSummaryBytes)
	}
	if err := g.appendFile(EnvGitHubStepSummary, markdown); err != nil {
		return fmt.Errorf("writing job summary: %w", err)
	}
	return nil
}

// TempDir returns RUNNER_TEMP, which the runner empties after each job; outside a runner, TMPDIR
// or /tmp.
func (g *GitHub) TempDir() string {
	if dir := g.getenv(EnvRunnerTemp); dir != "" {
		return dir
	}
	if dir := g.getenv("TMPDIR"); dir != "" {
		return dir
	}
	return "/tmp"
}
