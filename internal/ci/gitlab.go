package ci

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// GitLabCustomExecutorPrefix prefixes every CI/CD variable in the environment of a GitLab Runner
// custom-executor stage: the job's CI_JOB_ID arrives as CUSTOM_ENV_CI_JOB_ID.
const GitLabCustomExecutorPrefix = "CUSTOM_ENV_"

// DefaultGitLabInputPrefix prefixes the CI/CD variables that carry inputs: input "platforms" is
// the variable BUILDKIT_PLATFORMS, input "node-selector" BUILDKIT_NODE_SELECTOR.
const DefaultGitLabInputPrefix = "BUILDKIT_"

// GitLabConfig is everything the GitLab adapter reads and writes.
type GitLabConfig struct {
	// Getenv reads the environment the CI/CD variables are in; nil means os.Getenv.
	Getenv func(string) string
	// VarPrefix prefixes every CI/CD variable: GitLabCustomExecutorPrefix in a custom-executor
	// stage, "" in the job's own shell.
	VarPrefix string
	// InputPrefix prefixes the variables that carry inputs; empty means DefaultGitLabInputPrefix.
	InputPrefix string
	// Inputs are the inputs the runner's administrator set for the custom-executor hook, by
	// their documented names.
	Inputs map[string]string
	// JobInputs names the inputs a job may set through its CI/CD variables, overriding Inputs.
	// Nil means every input; the custom-executor hook, which runs with the runner's rights,
	// allows only a few.
	JobInputs []string
	// Job is the job's identity; a zero Job means GitLabJob(Getenv, VarPrefix). CIPlatform is
	// always cijob.GitLab.
	Job cijob.Identity
	// Post marks the cleanup phase (the hook's cleanup stage).
	Post bool
	// StateDir keeps state between phases, as for the Shell adapter (ShellStateFile).
	StateDir string
	// Exports receives `export NAME='value'` lines, as for the Shell adapter: the hook points it
	// at the job's env file, which its run stage loads into every script's environment (see
	// ParseExports).
	Exports io.Writer
	// OutputPrefix prefixes outputs' variable names; empty means DefaultShellOutputPrefix.
	OutputPrefix string
	// Log receives log lines; nil discards them. It is the job log in the hook's prepare stage,
	// the runner's own log in the cleanup stage.
	Log io.Writer
	// Sections makes Group write GitLab's collapsible job-log sections; without it Group writes
	// "==> title" as the Shell adapter does (the runner's log shows no sections).
	Sections bool
	// Now is the clock for section timestamps; nil means time.Now.
	Now func() time.Time
	// TempDir is the directory for the job's files (certificates, buildx configuration); empty
	// means StateDir.
	TempDir string
}

// GitLab is the System of a GitLab CI job as the custom-executor hook (package gitlabexec) sees
// it: inputs from the runner's settings and, where allowed, the job's CI/CD variables; the
// identity from GitLab's predefined variables; exports, state and logs as the Shell adapter has
// them, with collapsible sections in the job log. The CLI in a GitLab job (the Kubernetes
// executor's before_script) uses the Shell adapter with GitLabJob's identity instead: its
// inputs are its flags. Build it with NewGitLab.
type GitLab struct {
	*Shell
	getenv   func(string) string
	cfg      GitLabConfig
	allowed  map[string]bool
	now      func() time.Time
	mu       sync.Mutex
	sections int
}

var _ System = (*GitLab)(nil)

// NewGitLab returns the GitLab adapter, with the state a previous phase saved in cfg.StateDir.
func NewGitLab(cfg GitLabConfig) (*GitLab, error) {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.InputPrefix == "" {
		cfg.InputPrefix = DefaultGitLabInputPrefix
	}
	job := cfg.Job
	if job == (cijob.Identity{}) {
		job = GitLabJob(cfg.Getenv, cfg.VarPrefix)
	}
	job.CIPlatform = cijob.GitLab
	shell, err := NewShell(ShellConfig{
		Job: job, Post: cfg.Post, StateDir: cfg.StateDir, Exports: cfg.Exports, OutputPrefix: cfg.OutputPrefix,
		Log: cfg.Log, Debug: cfg.Getenv(cfg.VarPrefix+"CI_DEBUG_TRACE") == "true", TempDir: cfg.TempDir,
	})
	if err != nil {
		return nil, err
	}
	g := &GitLab{Shell: shell, getenv: cfg.Getenv, cfg: cfg, now: cfg.Now}
	if g.now == nil {
		g.now = time.Now
	}
	if cfg.JobInputs != nil {
		g.allowed = map[string]bool{}
		for _, name := range cfg.JobInputs {
			g.allowed[name] = true
		}
	}
	return g, nil
}

// GitLabJob reads a GitLab job's identity from its predefined CI/CD variables, each prefixed by
// prefix: CI_PROJECT_PATH, CI_PROJECT_ID, CI_PIPELINE_ID, CI_JOB_ID, CI_JOB_NAME, CI_COMMIT_SHA,
// CI_JOB_URL. It is the one place those variables are read. GitLab has no run attempts: a
// retried job is a new job with a new id. The CLI's job flags take their defaults from it
// (prefix "") when GITLAB_CI is true, so that builders of GitLab jobs carry CIPlatform
// cijob.GitLab and the janitor can ask GitLab about them.
//
// A merge request pipeline whose source project is not the target project (a fork's merge
// request, run in the parent project) is Untrusted: its builders never mount a cache volume
// trusted jobs use.
func GitLabJob(getenv func(string) string, prefix string) cijob.Identity {
	v := func(name string) string { return strings.TrimSpace(getenv(prefix + name)) }
	source, target := v("CI_MERGE_REQUEST_SOURCE_PROJECT_ID"), v("CI_MERGE_REQUEST_PROJECT_ID")
	return cijob.Identity{
		Untrusted:    source != "" && source != target,
		CIPlatform:   cijob.GitLab,
		Repository:   v("CI_PROJECT_PATH"),
		RepositoryID: v("CI_PROJECT_ID"),
		RunID:        v("CI_PIPELINE_ID"),
		JobID:        v("CI_JOB_ID"),
		JobName:      v("CI_JOB_NAME"),
		Commit:       v("CI_COMMIT_SHA"),
		URL:          v("CI_JOB_URL"),
	}
}

// GitLabInputVariable is the CI/CD variable that carries input name: prefix plus the name
// upper-cased, with '-' and ' ' made '_' ("node-selector" is BUILDKIT_NODE_SELECTOR).
func GitLabInputVariable(prefix, name string) string {
	return prefix + strings.ToUpper(strings.NewReplacer("-", "_", " ", "_").Replace(name))
}

// Input returns the job's variable for name when the job may set it and did, else the
// configured input; trimmed either way.
func (g *GitLab) Input(name string) string {
	if g.allowed == nil || g.allowed[name] {
		if v := strings.TrimSpace(g.getenv(g.cfg.VarPrefix + GitLabInputVariable(g.cfg.InputPrefix, name))); v != "" {
			return v
		}
	}
	return strings.TrimSpace(g.cfg.Inputs[name])
}

// buildkitClientVariables are the BUILDKIT_* variables docker buildx (v0.38) and buildctl (BuildKit
// v0.34) read themselves: a job sets them for those tools, not as inputs of ours.
var buildkitClientVariables = map[string]bool{
	"BUILDKIT_HOST": true, "BUILDKIT_PROGRESS": true, "BUILDKIT_COLORS": true, "BUILDKIT_TTY_LOG_LINES": true,
	"BUILDKIT_STEP_LOG_MAX_SIZE": true, "BUILDKIT_STEP_LOG_MAX_SPEED": true,
}

// IgnoredJobVariables returns, sorted, the input variables set in environ (os.Environ's form) that
// this adapter does not read because the job may not set that input (JobInputs), so that the
// job's author can be told rather than left to wonder. Empty values, and the variables BuildKit's
// own clients read (with the default prefix), are not counted.
func (g *GitLab) IgnoredJobVariables(environ []string) []string {
	if g.allowed == nil {
		return nil
	}
	read := map[string]bool{}
	for name := range g.allowed {
		read[GitLabInputVariable(g.cfg.InputPrefix, name)] = true
	}
	var ignored []string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		name, ok := strings.CutPrefix(k, g.cfg.VarPrefix)
		if !ok || !strings.HasPrefix(name, g.cfg.InputPrefix) || read[name] || buildkitClientVariables[name] || strings.TrimSpace(v) == "" {
			continue
		}
		ignored = append(ignored, name)
	}
	sort.Strings(ignored)
	return ignored
}

// ReadJobVariables names, sorted, the variables a job may set inputs with.
func (g *GitLab) ReadJobVariables() []string {
	var names []string
	for name := range g.allowed {
		names = append(names, GitLabInputVariable(g.cfg.InputPrefix, name))
	}
	sort.Strings(names)
	return names
}

// sectionName is what GitLab accepts as a section name.
var sectionUnsafe = regexp.MustCompile(`[^a-z0-9_.-]+`)

// Group starts a collapsible section of the job log when Sections is set (collapsed, titled
// title); the returned function ends it once. Otherwise it writes "==> title", as Shell does.
func (g *GitLab) Group(title string) (end func()) {
	if !g.cfg.Sections {
		return g.Shell.Group(title)
	}
	g.mu.Lock()
	g.sections++
	name := fmt.Sprintf("ephemeral_buildkit_%d_%s", g.sections, strings.Trim(sectionUnsafe.ReplaceAllString(strings.ToLower(title), "_"), "_"))
	g.mu.Unlock()
	if len(name) > 100 {
		name = name[:100]
	}
	title = strings.ReplaceAll(strings.ReplaceAll(title, "\r", " "), "\n", " ")
	_ = g.Shell.log.write(fmt.Sprintf("\x1b[0Ksection_start:%d:%s[collapsed=true]\r\x1b[0K%s\n", g.now().Unix(), name, title))
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = g.Shell.log.write(fmt.Sprintf("\x1b[0Ksection_end:%d:%s\r\x1b[0K\n", g.now().Unix(), name))
		})
	}
}
