package ci

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// ShellStateFile is the name of the file, in ShellConfig.StateDir, that keeps state between
// phases.
const ShellStateFile = "state.json"

// DefaultShellOutputPrefix prefixes the variables Shell.SetOutput exports.
const DefaultShellOutputPrefix = "EPHEMERAL_BUILDKIT_"

// ShellConfig is everything the Shell adapter reads and writes. The CLI fills it from its flags
// and the environment.
type ShellConfig struct {
	// Inputs are the inputs by their documented names ("platforms", "namespace", ...).
	Inputs map[string]string
	// Job is the job's identity; CIPlatform defaults to "shell".
	Job cijob.Identity
	// Post marks the cleanup phase (the CLI's down).
	Post bool
	// StateDir holds ShellStateFile. NewShell loads it if present; SaveState writes it, and needs
	// StateDir set.
	StateDir string
	// Exports receives `export NAME='value'` lines, ready for eval: one per ExportEnv, and one
	// per SetOutput named OutputPrefix + NAME (NAME upper-cased, '-' and ' ' made '_'). Nil makes
	// SetOutput and ExportEnv fail.
	Exports io.Writer
	// OutputPrefix prefixes outputs' variable names; empty means DefaultShellOutputPrefix.
	OutputPrefix string
	// Log receives log lines and the summary; nil discards them.
	Log io.Writer
	// Debug turns on Debugf's output.
	Debug bool
	// TempDir is the directory for temporary files; empty means StateDir.
	TempDir string
	// JobFromRunnerPod, when set, refines Job with the annotations of the pod the job runs in
	// (JobFromGitLabPod for GitLab's Kubernetes executor); see RunnerPodJob.
	JobFromRunnerPod func(job cijob.Identity, annotations map[string]string) (cijob.Identity, []string, []string)
	// DefaultBranch, when set, answers OnTrustedDefaultBranch (GitLabOnTrustedDefaultBranch for
	// the CLI in a GitLab job).
	DefaultBranch func() (bool, string)
}

// Shell is the System of the plain CLI, for a person at a terminal or a CI system without an
// adapter of its own. Build it with NewShell.
type Shell struct {
	cfg     ShellConfig
	log     *LockedWriter
	exports *LockedWriter

	mu    sync.Mutex
	state map[string]string
}

var _ System = (*Shell)(nil)

// NewShell returns the Shell adapter, with the state a previous phase saved in cfg.StateDir.
func NewShell(cfg ShellConfig) (*Shell, error) {
	if cfg.Job.CIPlatform == "" {
		cfg.Job.CIPlatform = cijob.Shell
	}
	if cfg.OutputPrefix == "" {
		cfg.OutputPrefix = DefaultShellOutputPrefix
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	s := &Shell{cfg: cfg, log: &LockedWriter{W: cfg.Log}, state: map[string]string{}}
	if cfg.Exports != nil {
		s.exports = &LockedWriter{W: cfg.Exports}
	}
	if cfg.StateDir != "" {
		path := filepath.Join(cfg.StateDir, ShellStateFile)
		data, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("reading state: %w", err)
		default:
			if err := json.Unmarshal(data, &s.state); err != nil {
				return nil, fmt.Errorf("reading state %s: %w", path, err)
			}
		}
	}
	return s, nil
}

// Name returns the job identity's CIPlatform, cijob.Shell unless configured otherwise.
func (s *Shell) Name() string { return s.cfg.Job.CIPlatform }

// Input returns the configured input, trimmed.
func (s *Shell) Input(name string) string { return strings.TrimSpace(s.cfg.Inputs[name]) }

// Job returns the configured identity, as JobFromRunnerPod refined it.
func (s *Shell) Job() cijob.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Job
}

var _ RunnerPodJob = (*Shell)(nil)

// JobFromRunnerPod refines the identity with the runner pod's annotations when the
// configuration says how (ShellConfig.JobFromRunnerPod); otherwise it takes nothing.
func (s *Shell) JobFromRunnerPod(annotations map[string]string) (taken, notes []string) {
	if s.cfg.JobFromRunnerPod == nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	job, taken, notes := s.cfg.JobFromRunnerPod(s.cfg.Job, annotations)
	job.CIPlatform = s.cfg.Job.CIPlatform
	s.cfg.Job = job
	return taken, notes
}

// RunnerCandidates returns none: a shell knows no runner pod; the provisioner still tries
// POD_NAME and the host name.
func (s *Shell) RunnerCandidates() []cijob.RunnerCandidate { return nil }

// IsPost returns the configured Post.
func (s *Shell) IsPost() bool { return s.cfg.Post }

// SaveState records name in the state file, replacing the file atomically (mode 0600).
func (s *Shell) SaveState(name, value string) error {
	if err := validateKey("state", name); err != nil {
		return err
	}
	if s.cfg.StateDir == "" {
		return fmt.Errorf("saving state %q: no state directory: %w", name, ErrNotConfigured)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.state)
	next[name] = value
	if err := writeFileAtomic(filepath.Join(s.cfg.StateDir, ShellStateFile), next); err != nil {
		return fmt.Errorf("saving state %q: %w", name, err)
	}
	s.state = next
	return nil
}

// writeFileAtomic writes state as JSON to a temporary file next to path and renames it over path,
// so that a reader never sees half a file.
func writeFileAtomic(path string, state map[string]string) (err error) {
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ShellStateFile+".*")
	if err != nil {
		return fmt.Errorf("creating state file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("writing state file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing state file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing state file: %w", err)
	}
	return nil
}

// State returns a saved value, or "".
func (s *Shell) State(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state[name]
}

// shellName is what a POSIX shell accepts as a variable name.
var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// SetOutput exports the output as OutputPrefix + NAME.
func (s *Shell) SetOutput(name, value string) error {
	if err := validateKey("output", name); err != nil {
		return err
	}
	variable := s.cfg.OutputPrefix + strings.ToUpper(strings.NewReplacer("-", "_", " ", "_").Replace(name))
	if err := s.export(variable, value); err != nil {
		return fmt.Errorf("setting output %q: %w", name, err)
	}
	return nil
}

// ExportEnv writes `export NAME='value'` to Exports.
func (s *Shell) ExportEnv(name, value string) error {
	if err := s.export(name, value); err != nil {
		return fmt.Errorf("exporting environment variable: %w", err)
	}
	return nil
}

func (s *Shell) export(name, value string) error {
	if !shellName.MatchString(name) {
		return fmt.Errorf("%q is not a shell variable name: %w", name, ErrInvalidName)
	}
	if s.exports == nil {
		return fmt.Errorf("%s: nowhere to write exports: %w", name, ErrNotConfigured)
	}
	if err := s.exports.write("export " + name + "=" + ShellQuote(value) + "\n"); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// ShellQuote quotes s for a POSIX shell: the whole in single quotes, and each single quote in s
// ends the quoting, adds an escaped quote and starts quoting again.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
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

// Mask does nothing: a terminal has no masking. The CLI never prints private keys.
func (s *Shell) Mask(string) error { return nil }

// Group writes "==> title"; the returned function does nothing.
func (s *Shell) Group(title string) (end func()) {
	s.line("==> ", title)
	return func() {}
}

// Debug returns the configured Debug.
func (s *Shell) Debug() bool { return s.cfg.Debug }

// Debugf writes "debug: " and the message when Debug is on.
func (s *Shell) Debugf(format string, args ...any) {
	if s.cfg.Debug {
		s.line("debug: ", fmt.Sprintf(format, args...))
	}
}

// Infof writes the message.
func (s *Shell) Infof(format string, args ...any) { s.line("", fmt.Sprintf(format, args...)) }

// Warningf writes "warning: " and the message.
func (s *Shell) Warningf(format string, args ...any) {
	s.line("warning: ", fmt.Sprintf(format, args...))
}

// Errorf writes "error: " and the message.
func (s *Shell) Errorf(format string, args ...any) { s.line("error: ", fmt.Sprintf(format, args...)) }

func (s *Shell) line(prefix, msg string) {
	_ = s.log.write(prefix + strings.TrimSuffix(msg, "\n") + "\n")
}

// Summary writes the markdown to the log.
func (s *Shell) Summary(markdown string) error {
	if err := s.log.write(strings.TrimSuffix(markdown, "\n") + "\n"); err != nil {
		return fmt.Errorf("writing summary: %w", err)
	}
	return nil
}

// TempDir returns the configured TempDir, or StateDir.
func (s *Shell) TempDir() string {
	if s.cfg.TempDir != "" {
		return s.cfg.TempDir
	}
	return s.cfg.StateDir
}
