package ci

import (
	"fmt"
	"io"
	"os"
	"regexp"
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
	// stage, "" in the job's own shell (the Kubernetes executor's before_script).
	VarPrefix string
	// InputPrefix prefixes the variables that carry inputs; empty means DefaultGitLabInputPrefix.
	InputPrefix string
	// Inputs are the inputs set by whoever runs the program — the runner's administrator for the
	// custom-executor hook, the command line for the CLI — by their documented names.
	Inputs map[string]string
	// JobInputs names the inputs a job may set through its CI/CD variables, overriding Inputs.
	// Nil means every input (the CLI, where the job runs the program itself anyway); the
	// custom-executor hook, which runs with the runner's rights, allows only a few.
	JobInputs []string
	// Job is the job's identity; a zero Job means GitLabJob(Getenv, VarPrefix). CIPlatform is
	// always "gitlab".
	Job cijob.Identity
	// Post marks the cleanup phase (the hook's cleanup stage, the CLI's down).
	Post bool
	// StateDir keeps state between phases, as for the Shell adapter (ShellStateFile).
	StateDir string
	// Exports receives `export NAME='value'` lines, as for the Shell adapter: the hook points it
	// at the job's env file, which its run stage loads into every script's environment (see
	// ParseExports); the CLI at the file its before_script sources.
	Exports io.Writer
	// OutputPrefix prefixes outputs' variable names; empty means DefaultShellOutputPrefix.
	OutputPrefix string
	// Log receives log lines; nil discards them. It is the job log in a job and in the hook's
	// prepare and run stages, the runner's own log in the cleanup stage.
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

// GitLab is the System of a GitLab CI job: inputs from CI/CD variables (and the runner's
// settings), the identity from GitLab's predefined variables, and exports, state and logs as
// the Shell adapter has them, with collapsible sections in the job log. Build it with
// NewGitLab.
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
// prefix: CI_PROJECT_PATH, CI_PROJECT_ID, CI_PIPELINE_ID, CI_JOB_ID, CI_JOB_NAME, CI_COMMIT_SHA, CI_JOB_URL.
// GitLab has no run attempts: a retried job is a new job with a new id. The CLI fills its
// Shell adapter's Job with it (prefix "") so that builders of GitLab jobs carry CIPlatform
// "gitlab" and the janitor can ask GitLab about them.
func GitLabJob(getenv func(string) string, prefix string) cijob.Identity {
	v := func(name string) string { return strings.TrimSpace(getenv(prefix + name)) }
	return cijob.Identity{
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

// ParseExports reads the `export NAME='value'` lines the Shell and GitLab adapters write (see
// ShellQuote) and returns the variables, a later line for a name overriding an earlier one.
// It accepts exactly that form — one export per line, the value a sequence of single-quoted
// strings and \' — so that reading an env file never runs anything; blank lines and lines
// starting with '#' are skipped.
func ParseExports(r io.Reader) (map[string]string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading exports: %w", err)
	}
	s := string(data)
	vars := map[string]string{}
	line := 1
	for len(s) > 0 {
		switch {
		case s[0] == '\n':
			s, line = s[1:], line+1
			continue
		case s[0] == '#':
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i:]
			} else {
				s = ""
			}
			continue
		case strings.TrimLeft(s[:lineEnd(s)], " \t") == "":
			s = s[lineEnd(s):]
			continue
		}
		rest, ok := strings.CutPrefix(s, "export ")
		if !ok {
			return nil, fmt.Errorf("exports line %d: does not start with \"export \"", line)
		}
		eq := strings.IndexByte(rest, '=')
		if eq < 0 || !shellName.MatchString(rest[:eq]) {
			return nil, fmt.Errorf("exports line %d: no NAME= after export", line)
		}
		name := rest[:eq]
		rest = rest[eq+1:]
		var value strings.Builder
		for len(rest) > 0 && rest[0] != '\n' {
			switch {
			case rest[0] == '\'':
				end := strings.IndexByte(rest[1:], '\'')
				if end < 0 {
					return nil, fmt.Errorf("exports line %d: %s: unterminated quote", line, name)
				}
				quoted := rest[1 : 1+end]
				value.WriteString(quoted)
				line += strings.Count(quoted, "\n")
				rest = rest[end+2:]
			case strings.HasPrefix(rest, `\'`):
				value.WriteByte('\'')
				rest = rest[2:]
			case rest[0] == ' ' || rest[0] == '\t':
				rest = strings.TrimLeft(rest, " \t")
				if len(rest) > 0 && rest[0] != '\n' {
					return nil, fmt.Errorf("exports line %d: %s: text after the value", line, name)
				}
			default:
				return nil, fmt.Errorf("exports line %d: %s: unexpected %q in value", line, name, rest[0])
			}
		}
		vars[name] = value.String()
		s = rest
	}
	return vars, nil
}

// lineEnd returns the index of the first '\n' in s, or len(s).
func lineEnd(s string) int {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return i
	}
	return len(s)
}
