package gitlabexec

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// Names of the hook's own settings, read by SettingsFromEnv from the hook's process environment
// — the runner pod's environment (the Helm chart's envVars), never the job's CI/CD variables,
// which arrive prefixed with CUSTOM_ENV_ and which a job's author controls.
const (
	EnvBuildsDir       = "EPHEMERAL_BUILDKIT_BUILDS_DIR"
	EnvCacheDir        = "EPHEMERAL_BUILDKIT_CACHE_DIR"
	EnvPerJobBuildsDir = "EPHEMERAL_BUILDKIT_PER_JOB_BUILDS_DIR"
	EnvStateDir        = "EPHEMERAL_BUILDKIT_STATE_DIR"
	EnvShell           = "EPHEMERAL_BUILDKIT_SHELL"
	EnvJobInputs       = "EPHEMERAL_BUILDKIT_JOB_INPUTS"
	EnvCleanupTimeout  = "EPHEMERAL_BUILDKIT_CLEANUP_TIMEOUT"
	EnvKillGrace       = "EPHEMERAL_BUILDKIT_KILL_GRACE"
	// EnvInputPrefix prefixes the administrator's inputs: EPHEMERAL_BUILDKIT_INPUT_NAMESPACE=ci
	// is input "namespace", EPHEMERAL_BUILDKIT_INPUT_NODE_SELECTOR input "node-selector".
	EnvInputPrefix = "EPHEMERAL_BUILDKIT_INPUT_"
)

// Defaults of the settings.
const (
	DefaultBuildsDir      = "/builds"
	DefaultCacheDir       = "/cache"
	DefaultStateDir       = "/tmp/setup-ephemeral-buildkit-gitlab"
	DefaultShell          = "bash"
	DefaultCleanupTimeout = 2 * time.Minute
	DefaultKillGrace      = 30 * time.Second
	// DriverName is what the runner prints as "Using Custom executor with driver ...".
	DriverName = "setup-ephemeral-buildkit"
)

// DefaultJobInputs are the inputs a job may set through its CI/CD variables
// (CUSTOM_ENV_BUILDKIT_PLATFORMS): which architectures it builds for, and which of its
// project's cache lineages it uses (the project is always part of a lineage, so no key reaches
// another project's volumes). Everything else — namespace, image, resources, node selectors,
// buildkitd flags, whether and how large cache volumes are — is the administrator's, because the
// hook acts with the runner's Kubernetes rights.
var DefaultJobInputs = []string{"platforms", "cache-key"}

// Settings configure the hook. The zero value of each field means its default.
type Settings struct {
	// BuildsDir is the base of the jobs' working directories (config's builds_dir); default
	// DefaultBuildsDir.
	BuildsDir string
	// CacheDir is the base of the local cache (config's cache_dir); default DefaultCacheDir.
	CacheDir string
	// PerJobBuildsDir gives every job a builds directory of its own, BuildsDir/job-<id>, removed
	// by cleanup (builds_dir_is_shared false). Without it jobs share BuildsDir and the runner
	// separates concurrent jobs itself (builds_dir_is_shared true), keeping clones for the next
	// job of the same project.
	PerJobBuildsDir bool
	// StateDir holds one directory per job, job-<id>: state between stages, the env file every
	// script gets, the client certificates and buildx configuration; default DefaultStateDir.
	StateDir string
	// Shell runs the scripts and is what config tells the runner to generate them for: "bash"
	// (default) or "sh".
	Shell string
	// Hostname is reported to the runner for the job's metadata; empty leaves it unset.
	Hostname string
	// DriverVersion is reported with DriverName.
	DriverVersion string
	// Inputs are the administrator's inputs, by their documented names.
	Inputs map[string]string
	// JobInputs are the inputs a job may override through CUSTOM_ENV_<InputPrefix><NAME>; nil
	// means DefaultJobInputs.
	JobInputs []string
	// InputPrefix prefixes the job's input variables; empty means ci.DefaultGitLabInputPrefix.
	InputPrefix string
	// CleanupTimeout bounds the cleanup stage's teardown; default DefaultCleanupTimeout. Set it
	// below the runner's cleanup_exec_timeout.
	CleanupTimeout time.Duration
	// KillGrace is how long a script may take to exit after a forwarded SIGTERM or SIGINT before
	// its process group is killed; default DefaultKillGrace. Set it below the runner's
	// graceful_kill_timeout.
	KillGrace time.Duration
}

// withDefaults fills unset fields.
func (s Settings) withDefaults() Settings {
	if s.BuildsDir == "" {
		s.BuildsDir = DefaultBuildsDir
	}
	if s.CacheDir == "" {
		s.CacheDir = DefaultCacheDir
	}
	if s.StateDir == "" {
		s.StateDir = DefaultStateDir
	}
	if s.Shell == "" {
		s.Shell = DefaultShell
	}
	if s.JobInputs == nil {
		s.JobInputs = DefaultJobInputs
	}
	if s.InputPrefix == "" {
		s.InputPrefix = ci.DefaultGitLabInputPrefix
	}
	if s.CleanupTimeout <= 0 {
		s.CleanupTimeout = DefaultCleanupTimeout
	}
	if s.KillGrace <= 0 {
		s.KillGrace = DefaultKillGrace
	}
	return s
}

// validate checks what the hook cannot work with.
func (s Settings) validate() error {
	for name, dir := range map[string]string{EnvBuildsDir: s.BuildsDir, EnvCacheDir: s.CacheDir, EnvStateDir: s.StateDir} {
		if !filepath.IsAbs(dir) {
			return fmt.Errorf("%s=%q: not an absolute path", name, dir)
		}
	}
	if s.Shell != "bash" && s.Shell != "sh" {
		return fmt.Errorf("%s=%q: the hook runs bash or sh scripts", EnvShell, s.Shell)
	}
	return nil
}

// SettingsFromEnv reads the settings from the hook's environment (os.Environ's form), the
// variables named by the Env* constants; every EPHEMERAL_BUILDKIT_INPUT_<NAME> is the input
// <name> (lower-cased, '_' made '-'). Durations are Go durations ("2m", "30s"); booleans
// k8sprov.AcceptedBool. Hostname defaults to hostname() (the runner pod's name).
func SettingsFromEnv(environ []string, hostname func() (string, error)) (Settings, error) {
	env := map[string]string{}
	s := Settings{Inputs: map[string]string{}}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		env[k] = v
		if name, ok := strings.CutPrefix(k, EnvInputPrefix); ok && name != "" {
			s.Inputs[strings.ReplaceAll(strings.ToLower(name), "_", "-")] = v
		}
	}
	s.BuildsDir = env[EnvBuildsDir]
	s.CacheDir = env[EnvCacheDir]
	s.StateDir = env[EnvStateDir]
	s.Shell = env[EnvShell]
	if v := env[EnvPerJobBuildsDir]; v != "" {
		b, err := k8sprov.ParseBool(v, false)
		if err != nil {
			return s, fmt.Errorf("%s=%q: not a boolean (accepted: %s)", EnvPerJobBuildsDir, v, k8sprov.AcceptedBool)
		}
		s.PerJobBuildsDir = b
	}
	if v, ok := env[EnvJobInputs]; ok {
		s.JobInputs = []string{}
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				s.JobInputs = append(s.JobInputs, name)
			}
		}
	}
	for name, d := range map[string]*time.Duration{EnvCleanupTimeout: &s.CleanupTimeout, EnvKillGrace: &s.KillGrace} {
		if v := env[name]; v != "" {
			parsed, err := time.ParseDuration(v)
			if err != nil || parsed <= 0 {
				return s, fmt.Errorf("%s=%q: not a positive duration such as 30s", name, v)
			}
			*d = parsed
		}
	}
	if hostname != nil {
		if h, err := hostname(); err == nil {
			s.Hostname = h
		}
	}
	return s, s.withDefaults().validate()
}

// environ returns os.Environ, for the default of Executor.Environ.
func environ() []string { return os.Environ() }
