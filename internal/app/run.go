package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
	"github.com/org/setup-ephemeral-buildkit/internal/jobstatus"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/regcache"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

// Exit codes of the program.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// exitError carries an exit code and whether the error was already shown to the user.
type exitError struct {
	code     int
	reported bool
	err      error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// ExitCode maps Run's error to the process's exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitError
}

// Reported tells whether Run already showed err to the user (as a workflow error annotation or
// usage text), so main need not print it again.
func Reported(err error) bool {
	var ee *exitError
	return errors.As(err, &ee) && ee.reported
}

// Run is the whole program. Started by the GitHub runner (GITHUB_ACTIONS=true, no arguments),
// it is the action's main step, or its post step once the main step saved state. Otherwise
// args[0] is a CLI verb:
//
//	up     start the builders and print `export NAME='value'` lines for eval
//	down   remove them again
//	env    print the export lines of the builders that are up
//	gc     remove builders of finished jobs in a namespace (the janitor)
//
// Run returns an error for a failed job phase; ExitCode maps it to the exit code.
func Run(ctx context.Context, args []string, deps Deps) error {
	d := deps.withDefaults()
	if len(args) == 0 && d.Getenv("GITHUB_ACTIONS") == "true" {
		return runGitHub(ctx, d)
	}
	if len(args) == 0 {
		usage(d.Stderr)
		return &exitError{code: ExitUsage, reported: true, err: errors.New("no command given")}
	}
	verb, rest := args[0], args[1:]
	switch verb {
	case "up":
		return runUp(ctx, rest, d)
	case "down":
		return runDown(ctx, rest, d)
	case "env":
		return runEnv(rest, d)
	case "gc":
		return runGC(ctx, rest, d)
	case "policy":
		return runPolicy(rest, d)
	case "version", "--version":
		info := version.Get()
		info.Version = d.Version
		_, err := fmt.Fprintln(d.Stdout, info.String("setup-ephemeral-buildkit"))
		return err
	case "help", "-h", "-help", "--help":
		usage(d.Stdout)
		return nil
	}
	err := fmt.Errorf("unknown command %q (want up, down, env, gc, policy, version or help)", verb)
	fmt.Fprintf(d.Stderr, "setup-ephemeral-buildkit: %v\n\n", err)
	usage(d.Stderr)
	return &exitError{code: ExitUsage, reported: true, err: err}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: setup-ephemeral-buildkit COMMAND [FLAGS]

Gives a CI job (or you) its own BuildKit builder per CPU architecture in Kubernetes, registered
as a docker buildx builder with one node per platform.

Commands:
  up       start the builders; prints export lines:  eval "$(setup-ephemeral-buildkit up --platforms linux/amd64,linux/arm64)"
  down     remove the builders, their Secret, the buildx builder and the certificate files
  env      print the environment exports of the builders that are up (BUILDX_*, BUILDKIT_*; not up's EPHEMERAL_BUILDKIT_* outputs)
  gc       remove builders of finished jobs in a namespace (expired, or runner pod gone)
  policy   print the admission policy, with a cluster template's limits: policy --template FILE | kubectl apply -f -
  version  print the version, the commit and the BuildKit version it was tested with (also --version)

Run "setup-ephemeral-buildkit COMMAND -h" for the flags of a command. Started by the GitHub
Actions runner without a command, it is the action's main or post step.
`)
}

// runGitHub is the action: main step, or post step when the main step saved state.
func runGitHub(ctx context.Context, d Deps) error {
	gh := ci.NewGitHub(ci.WithGetenv(d.Getenv), ci.WithWriter(d.Stdout))
	if gh.IsPost() {
		return Post(ctx, gh, d)
	}
	if err := Main(ctx, gh, d); err != nil {
		gh.Errorf("%v", err)
		return &exitError{code: ExitError, reported: true, err: err}
	}
	return nil
}

// inputFlag describes one input as a CLI flag.
type inputFlag struct {
	name, usage string
	boolean     bool
	def         string
}

// upFlags are the inputs of `up`, the action's inputs by the same names.
var upFlags = []inputFlag{
	{name: k8sprov.InputPlatforms, usage: "platforms, comma-separated, one builder pod each (default: this machine's architecture)"},
	{name: InputName, usage: "buildx builder name (default: derived from the job)"},
	{name: k8sprov.InputNamespace, usage: "namespace of the builder pods (default: POD_NAMESPACE, the service account's, the kubeconfig context's)"},
	{name: k8sprov.InputOwnerPod, usage: `pod that owns the builders, or "none" (default: discovered: POD_NAME, the host name)`},
	{name: k8sprov.InputImage, usage: "BuildKit image"},
	{name: k8sprov.InputRequests, usage: "resource requests of each builder, e.g. cpu=2,memory=4Gi"},
	{name: k8sprov.InputLimits, usage: "resource limits of each builder, e.g. memory=8Gi"},
	{name: k8sprov.InputNodeSelector, usage: "extra node labels per platform: PLATFORM=KEY=VALUE,...;... (KEY- removes a default label)"},
	{name: k8sprov.InputTolerations, usage: "tolerations per platform: PLATFORM=KEY=VALUE:EFFECT,...;..."},
	{name: k8sprov.InputTimeout, usage: "readiness timeout, e.g. 2m (default 120s)"},
	{name: k8sprov.InputMaxLifetime, usage: "deadline of the builder pods and certificates, e.g. 6h"},
	{name: k8sprov.InputTerminationGracePeriod, usage: "how long a deleted builder may finish running builds (default 900s)"},
	{name: k8sprov.InputCache, usage: "where builders keep BuildKit's state: off (cold every job) or volume (a cache volume per lineage, one builder at a time)"},
	{name: k8sprov.InputCacheKey, usage: "splits the repository's cache lineages, e.g. a Dockerfile or branch family (default: the repository alone)"},
	{name: k8sprov.InputCacheSize, usage: "size of a cache volume (default 10Gi)"},
	{name: k8sprov.InputCacheStorageClass, usage: "StorageClass of the cache volumes (default: the cluster's default)"},
	{name: k8sprov.InputCacheMaxSlots, usage: "cache volumes per lineage, for concurrent jobs (default 4)"},
	{name: k8sprov.InputBuildkitdFlags, usage: "extra buildkitd flags"},
	{name: k8sprov.InputBuildkitdConfig, usage: "path of a buildkitd.toml"},
	{name: InputBuildkitdConfigInline, usage: "content of a buildkitd.toml"},
	{name: k8sprov.InputLabels, usage: "extra labels on the pods and Secret, KEY=VALUE,..."},
	{name: k8sprov.InputAnnotations, usage: "extra annotations on the pods and Secret, KEY=VALUE,..."},
	{name: regcache.InputCacheRef, usage: "registry repository for a registry cache, one tag per platform (cache-amd64, ...); exports BUILDKIT_CACHE_FROM_<ARCH>/_TO_<ARCH>"},
	{name: regcache.InputCacheWrite, usage: "export the registry cache: auto (only from the default branch of a trusted pipeline), true or false", def: string(regcache.WriteAuto)},
	{name: InputKubeconfig, usage: "kubeconfig file (default: in-cluster, KUBECONFIG, ~/.kube/config)"},
	{name: InputTemplate, usage: "ConfigMap of the runner namespace holding the platform team's cluster template (default " + clustertemplate.DefaultName + "; none there: the defaults)"},
	// No default text: an unset rootless leaves the mode to the cluster template.
	{name: k8sprov.InputRootless, usage: "run buildkitd rootless (default false, or the cluster template's mode)", boolean: true},
	{name: InputUse, usage: "make the builder the current buildx builder and export BUILDX_BUILDER", boolean: true, def: "true"},
	{name: InputCleanup, usage: "let down remove the builders", boolean: true, def: "true"},
	{name: InputDebug, usage: "more log output", boolean: true, def: "false"},
}

// boolInput is a boolean flag kept as the text the inputs use, read by the one boolean parser.
type boolInput struct{ value *string }

func (b boolInput) String() string {
	if b.value == nil {
		return ""
	}
	return *b.value
}

func (b boolInput) Set(s string) error {
	v, err := k8sprov.ParseBool(s, false)
	if err != nil {
		return fmt.Errorf("%q is not %s", s, k8sprov.AcceptedBool)
	}
	*b.value = strconv.FormatBool(v)
	return nil
}

func (b boolInput) IsBoolFlag() bool { return true }

// jobFlags are the job identity's fields; on GitLab their defaults come from its variables.
type jobFlags struct {
	ciPlatform, repository, repositoryID, runID, runAttempt, jobID, jobName, commit, url string
	// explicit names the flags given on the command line.
	explicit map[string]bool
}

func (j *jobFlags) register(fs *flag.FlagSet, d Deps) {
	// In a GitLab job (the Kubernetes executor's before_script) the defaults are the job's own
	// predefined variables; elsewhere there are none.
	var defaults cijob.Identity
	if d.Getenv("GITLAB_CI") == "true" {
		defaults = ci.GitLabJob(d.Getenv, "")
	} else {
		defaults.CIPlatform = cijob.Shell
	}
	if defaults.JobID == "" {
		host, _ := d.Hostname()
		defaults.JobID = "cli@" + host
	}
	fs.StringVar(&j.ciPlatform, "ci-platform", defaults.CIPlatform, "CI system, recorded on the builders")
	fs.StringVar(&j.repository, "repository", defaults.Repository, "repository or project, recorded on the builders")
	fs.StringVar(&j.repositoryID, ci.JobFieldRepositoryID, defaults.RepositoryID, "numeric repository or project id, recorded on the builders (the janitor asks GitLab by it)")
	fs.StringVar(&j.runID, "run-id", defaults.RunID, "run or pipeline id")
	fs.StringVar(&j.runAttempt, "run-attempt", defaults.RunAttempt, "attempt of the run, where the CI system re-runs (GitHub); with the other fields it names the builders")
	fs.StringVar(&j.jobID, "job-id", defaults.JobID, "job id, unique among the jobs running at the same time; with the other fields it names the builders")
	fs.StringVar(&j.jobName, "job-name", defaults.JobName, "job name, recorded on the builders")
	fs.StringVar(&j.commit, "commit", defaults.Commit, "commit being built, recorded on the builders")
	fs.StringVar(&j.url, "job-url", defaults.URL, "URL of the job, recorded on the builders")
}

func (j *jobFlags) identity() cijob.Identity {
	return cijob.Identity{CIPlatform: j.ciPlatform, Repository: j.repository, RepositoryID: j.repositoryID, RunID: j.runID,
		RunAttempt: j.runAttempt, JobID: j.jobID, JobName: j.jobName, Commit: j.commit, URL: j.url}
}

// recordExplicit notes which flags the command line set; call it after parsing.
func (j *jobFlags) recordExplicit(fs *flag.FlagSet) {
	j.explicit = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { j.explicit[f.Name] = true })
}

// jobFromRunnerPod is how up refines the identity with the runner pod's annotations: on GitLab
// (a job on the Kubernetes executor, whose pod GitLab Runner annotates with the job), the
// job.runner.gitlab.com/* annotations override the CI/CD variables but not explicit flags.
func (j *jobFlags) jobFromRunnerPod() func(cijob.Identity, map[string]string) (cijob.Identity, []string, []string) {
	if j.ciPlatform != cijob.GitLab {
		return nil
	}
	return func(job cijob.Identity, annotations map[string]string) (cijob.Identity, []string, []string) {
		return ci.JobFromGitLabPod(job, annotations, func(field string) bool { return j.explicit[field] })
	}
}

// defaultBranch is how up tells a trusted default-branch job, for cache-write auto: from the
// job's variables on GitLab (the component runs up in the job's shell); elsewhere it cannot.
func (j *jobFlags) defaultBranch(d Deps) func() (bool, string) {
	if j.ciPlatform != cijob.GitLab || d.Getenv("GITLAB_CI") != "true" {
		return nil
	}
	return func() (bool, string) { return ci.GitLabOnTrustedDefaultBranch(d.Getenv, "") }
}

// defaultStateDir is where up keeps its state when --state-dir is not given.
func defaultStateDir(d Deps) string {
	tmp := d.Getenv("TMPDIR")
	if tmp == "" {
		tmp = "/tmp"
	}
	return filepath.Join(tmp, fmt.Sprintf("setup-ephemeral-buildkit-%d", os.Getuid()))
}

// newFlagSet returns a flag set for verb that reports to d.Stderr.
func newFlagSet(verb, synopsis string, d Deps) *flag.FlagSet {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(d.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(d.Stderr, "Usage: setup-ephemeral-buildkit %s [FLAGS]\n\n%s\n\nFlags:\n", verb, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, refusing positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: ExitOK, reported: true, err: err}
		}
		return &exitError{code: ExitUsage, reported: true, err: err}
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments: %s (%s takes flags only)", strings.Join(fs.Args(), " "), fs.Name())
		fmt.Fprintf(fs.Output(), "setup-ephemeral-buildkit: %v\n\n", err)
		fs.Usage()
		return &exitError{code: ExitUsage, reported: true, err: err}
	}
	return nil
}

func runUp(ctx context.Context, args []string, d Deps) error {
	fs := newFlagSet("up", "Starts one BuildKit pod per platform, registers them as a buildx builder and prints\n"+
		"export lines for the environment (eval them). State and certificates go to --state-dir.", d)
	inputs := map[string]string{}
	values := map[string]*string{}
	for _, f := range upFlags {
		v := new(string)
		*v = f.def
		values[f.name] = v
		if f.boolean {
			// PrintDefaults adds "(default ...)" itself.
			fs.Var(boolInput{v}, f.name, f.usage)
		} else {
			fs.StringVar(v, f.name, f.def, f.usage)
		}
	}
	var job jobFlags
	job.register(fs, d)
	stateDir := fs.String("state-dir", defaultStateDir(d), "directory for state, certificates and buildx configuration")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	job.recordExplicit(fs)
	for name, v := range values {
		inputs[name] = *v
	}
	if existing, err := ci.NewShell(ci.ShellConfig{StateDir: *stateDir}); err == nil {
		if st, ok, _ := loadState(existing); ok && st.Ready {
			return fmt.Errorf("builder %s is already up (state in %s): run `setup-ephemeral-buildkit down` first, or use another --state-dir", st.Builder, *stateDir)
		}
	}
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	sh, err := ci.NewShell(ci.ShellConfig{
		Inputs:           inputs,
		Job:              job.identity(),
		JobFromRunnerPod: job.jobFromRunnerPod(),
		DefaultBranch:    job.defaultBranch(d),
		StateDir:         *stateDir,
		Exports:          d.Stdout,
		Log:              d.Stderr,
		Debug:            inputs[InputDebug] == "true",
	})
	if err != nil {
		return err
	}
	return Main(ctx, sh, d)
}

func runDown(ctx context.Context, args []string, d Deps) error {
	fs := newFlagSet("down", "Removes the builders `up` started, with the state in --state-dir.", d)
	stateDir := fs.String("state-dir", defaultStateDir(d), "the state directory given to up")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: the one up used)")
	jobStatus := fs.String(InputJobStatus, "", `the job's status; anything but "success" shows the builders' last log lines first`)
	debug := "false"
	fs.Var(boolInput{&debug}, InputDebug, "show the builders' last log lines first")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	sh, err := ci.NewShell(ci.ShellConfig{
		Inputs:   map[string]string{InputKubeconfig: *kubeconfig, InputJobStatus: *jobStatus, InputDebug: debug},
		Post:     true,
		StateDir: *stateDir,
		Log:      d.Stderr,
		Debug:    debug == "true",
	})
	if err != nil {
		return err
	}
	left, err := post(ctx, sh, d)
	if err != nil {
		return err
	}
	switch {
	case left.transient > 0:
		return fmt.Errorf("cleanup incomplete (%d problem(s) above); the state in %s is kept: run down again", left.transient+left.refused, *stateDir)
	case left.refused > 0:
		// A rerun of down would meet the same refusal; keeping the state would only block up.
		err = fmt.Errorf("cleanup incomplete: %d object(s) refused (see above); running down again will not change that, so the state in %s is removed; "+
			"what is left goes at its deadline, through the janitor, or by an administrator's hand", left.refused, *stateDir)
	}
	if rmErr := os.Remove(filepath.Join(*stateDir, ci.ShellStateFile)); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		return errors.Join(err, fmt.Errorf("removing the state: %w", rmErr))
	}
	// A state write that a killed up left half done (the fault suite's SIGKILL mid-provision).
	partial, _ := filepath.Glob(filepath.Join(*stateDir, ci.ShellStateFile+".*"))
	for _, f := range partial {
		_ = os.Remove(f)
	}
	_ = os.Remove(*stateDir) // only if empty: it may be a directory the user gave
	return err
}

func runEnv(args []string, d Deps) error {
	fs := newFlagSet("env", "Prints the environment exports of the builders `up` started (BUILDX_*, BUILDKIT_*), for a new shell:\n"+
		"eval \"$(setup-ephemeral-buildkit env)\". up's EPHEMERAL_BUILDKIT_* outputs describe the start-up and are not repeated.", d)
	stateDir := fs.String("state-dir", defaultStateDir(d), "the state directory given to up")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	sh, err := ci.NewShell(ci.ShellConfig{StateDir: *stateDir})
	if err != nil {
		return err
	}
	st, ok, err := loadState(sh)
	if err != nil {
		return err
	}
	if !ok || !st.Ready {
		return fmt.Errorf("no builders are up (state directory %s)", *stateDir)
	}
	names := make([]string, 0, len(st.Exports))
	for name := range st.Exports {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if _, err := fmt.Fprintf(d.Stdout, "export %s=%s\n", name, ci.ShellQuote(st.Exports[name])); err != nil {
			return err
		}
	}
	return nil
}

func runGC(ctx context.Context, args []string, d Deps) error {
	fs := newFlagSet("gc", "Removes the builders of jobs that are over: past their deadline, whose runner pod is gone, or whose\n"+
		"CI job has finished. GitHub and GitLab are asked about their jobs when GITHUB_TOKEN (GITHUB_API_URL) or\n"+
		"GITLAB_TOKEN (GITLAB_URL) are set; JOB_STATUS_TIMEOUT bounds each request.", d)
	var opts GCOptions
	fs.StringVar(&opts.Namespace, "namespace", "", "namespace to clean (default: POD_NAMESPACE, the service account's, the kubeconfig context's)")
	fs.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, KUBECONFIG, ~/.kube/config)")
	dryRun := "false"
	fs.Var(boolInput{&dryRun}, "dry-run", "only report what would be deleted")
	fs.DurationVar(&opts.CacheBudget.MaxUnused, "cache-max-unused", k8sprov.DefaultCacheMaxUnused, "remove cache volumes no job claimed for this long (0: never)")
	fs.IntVar(&opts.CacheBudget.MaxCount, "cache-max-count", 0, "keep at most this many cache volumes in the namespace, least recently used go first (0: no limit)")
	maxSize := ""
	fs.StringVar(&maxSize, "cache-max-size", "", "keep the namespace's cache volumes within this much requested storage, e.g. 500Gi (empty: no limit)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts.DryRun = dryRun == "true"
	if maxSize != "" {
		q, err := resource.ParseQuantity(maxSize)
		if err != nil || q.Sign() <= 0 {
			return &k8sprov.InputError{Input: "cache-max-size", Value: maxSize, Err: errors.New("not a positive quantity"), Accepted: "a quantity such as 500Gi, or empty for no limit"}
		}
		opts.CacheBudget.MaxSize = q
	}
	if opts.CacheBudget.MaxUnused < 0 || opts.CacheBudget.MaxCount < 0 {
		return &k8sprov.InputError{Input: "cache-max-unused/cache-max-count", Value: fmt.Sprintf("%s/%d", opts.CacheBudget.MaxUnused, opts.CacheBudget.MaxCount),
			Err: errors.New("negative"), Accepted: "a duration and a count of zero or more"}
	}
	checker, err := jobstatus.FromEnv(d.Getenv)
	if err != nil {
		return fmt.Errorf("configuring the job status checks: %w", err)
	}
	opts.Checker = checker
	namespace, decisions, err := CollectGarbage(ctx, opts, d)
	// No decisions at all means the builders could not be listed: there is nothing true to
	// report about them, only the error.
	if namespace != "" && decisions != nil {
		if werr := WriteGCReport(d.Stdout, namespace, decisions, opts.DryRun); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	if namespace != "" {
		cache, cerr := CollectCacheVolumes(ctx, namespace, opts, d)
		err = errors.Join(err, cerr, WriteCacheReport(d.Stdout, cache, opts.DryRun))
	}
	return err
}
