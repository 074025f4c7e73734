package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/pki"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
	"github.com/org/setup-ephemeral-buildkit/internal/regcache"
)

// rollbackTimeout bounds the removal of a job whose set-up failed or was cancelled. The GitHub
// runner sends SIGTERM 7.5 s after SIGINT and kills 2.5 s later; removal issues a handful of API
// calls and one docker command, which take well under a second when the cluster answers.
const rollbackTimeout = 7 * time.Second

// Main is the main phase: it reads the inputs, finds the runner pod, starts one BuildKit pod per
// platform next to it, registers them as one buildx remote builder with a node per platform,
// and exports the builder to later steps. What it needs to undo all that is saved as state
// before anything is created, so that Post can remove it even when Main is killed half-way.
// When Main fails or its context is cancelled, it removes what it created before returning.
func Main(ctx context.Context, p ci.System, deps Deps) (err error) {
	d := deps.withDefaults()
	started := d.Now()
	p.Infof("setup-ephemeral-buildkit %s", d.Version)
	// On GitHub the post step runs this program again and tells itself apart by this state only:
	// saved before anything can fail, or a failed main step would run once more as the post step.
	if err := p.SaveState(ci.StateIsPost, "true"); err != nil {
		return fmt.Errorf("saving state for the cleanup phase: %w", err)
	}
	in, err := checkInputs(p, d)
	if err != nil {
		return err
	}
	kube, plan, err := resolve(ctx, p, d, in)
	if err != nil {
		return err
	}
	// The cluster template may have changed the options (buildx records the buildkitd flags).
	in.opts = plan.Options
	st, earlierSecrets, err := recordJob(p, plan, in.set)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = rollbackMain(ctx, p, d, st, kube, err)
		}
	}()
	result, err := startBuilders(ctx, p, d, kube, plan, &st, earlierSecrets)
	if err != nil {
		return err
	}
	builder, inspection, files, err := registerBuilder(ctx, p, d, st, result, in)
	if err != nil {
		return err
	}
	exports, err := export(p, builder, inspection, st.BuildxDir, files, in.set.use, registryCache(p, in.set, plan.Platforms))
	if err != nil {
		return err
	}
	if err := p.Summary(summary(result, st.Builder, plan.Owner, d.Now().Sub(started), buildctlCommands(builder))); err != nil {
		p.Warningf("%v", err)
	}
	if err := markReady(p, exports); err != nil {
		return err
	}
	for _, b := range result.Builders {
		p.Infof("%s: %s (pod %s on %s), ready in %s", b.Platform, b.Endpoint, b.Pod, b.Node, formatSeconds(b.Ready.Sub(b.Created)))
	}
	p.Infof("Builder %s is ready in %s.", st.Builder, formatSeconds(d.Now().Sub(started)))
	return nil
}

// mainInputs are Main's checked inputs.
type mainInputs struct {
	// raw are the inputs as the job gave them; opts what they say without a cluster template.
	raw  k8sprov.Inputs
	opts k8sprov.Options
	set  settings
	// defaultPlatform is this runner's, for an empty platforms input; zero if it has none.
	defaultPlatform platform.Platform
}

// checkInputs reads and checks every input, and reports all problems at once.
func checkInputs(p ci.System, d Deps) (mainInputs, error) {
	in, set, inputErr := readInputs(p, d.ReadFile)
	opts, optsErr := k8sprov.ParseOptions(p.Job(), in)
	if err := errors.Join(inputErr, optsErr); err != nil {
		return mainInputs{}, fmt.Errorf("checking the inputs:\n%w", err)
	}
	if set.name != "" && !buildx.ValidBuilderName(set.name) {
		return mainInputs{}, &k8sprov.InputError{Input: InputName, Value: set.name, Err: errors.New("not a buildx builder name"),
			Accepted: buildx.NameRule + ` (not "default")`}
	}
	defaultPlatform, err := platform.Parse("linux/" + d.Arch)
	if err != nil && len(opts.Platforms) == 0 {
		return mainInputs{}, fmt.Errorf("no platforms input and this runner's architecture %q is not a builder platform: %w", d.Arch, err)
	}
	return mainInputs{raw: in, opts: opts, set: set, defaultPlatform: defaultPlatform}, nil
}

// recordJob names the builder and the job's local paths and saves them as state before anything
// is created. It returns the Secrets an earlier attempt of the job recorded: a retried attempt
// (GitLab retries prepare) replaces them.
func recordJob(p ci.System, plan k8sprov.Plan, set settings) (jobState, []k8sprov.ObjectRef, error) {
	builderName := set.name
	if builderName == "" {
		builderName = "buildkit-" + string(plan.Key)
	}
	if p.TempDir() == "" {
		return jobState{}, nil, errors.New("no directory for the job's certificates: the CI system gave no temporary directory")
	}
	jobDir, tlsDir, buildxDir := jobDirs(p.TempDir(), plan.Key)
	var earlierSecrets []k8sprov.ObjectRef
	if earlier, ok, _ := loadState(p); ok && earlier.Key == plan.Key && earlier.Namespace == plan.Namespace && earlier.Secret.UID != "" {
		earlierSecrets = append(earlierSecrets, earlier.Secret)
	}
	st := jobState{
		Namespace:  plan.Namespace,
		Key:        plan.Key,
		Owner:      plan.Owner,
		Builder:    builderName,
		Platforms:  plan.Platforms,
		JobDir:     jobDir,
		TLSDir:     tlsDir,
		BuildxDir:  buildxDir,
		Kubeconfig: set.kubeconfig,
		Cleanup:    set.cleanup,
	}
	if err := st.save(p); err != nil {
		return jobState{}, nil, err
	}
	return st, earlierSecrets, nil
}

// rollbackMain removes what a failed or cancelled Main created, after showing the builders'
// logs when it failed, and returns err with any problem doing so.
func rollbackMain(ctx context.Context, p ci.System, d Deps, st jobState, kube *KubeClient, err error) error {
	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if ctx.Err() != nil {
		p.Warningf("Cancelled: removing the builders of this job")
	} else {
		logCtx, cancelLogs := context.WithTimeout(context.WithoutCancel(ctx), logTailTimeout)
		showLogs(logCtx, p, kube, st, "the step failed")
		cancelLogs()
	}
	problems, refused := removeJob(cleanupCtx, p, d, st, kube)
	warnRefused(p, st.Namespace, refused)
	if len(problems) > 0 {
		return errors.Join(err, fmt.Errorf("removing what this step created: %w", errors.Join(problems...)))
	}
	// Nothing is left for the post step to remove.
	if serr := p.SaveState(stateMainOutcome, outcomeRemoved); serr != nil {
		p.Warningf("%v", serr)
	}
	return err
}

// startBuilders provisions the plan's builders, printing their progress in a group. It records
// the job's Secret in st the moment it exists, for the rollback and the post step.
func startBuilders(ctx context.Context, p ci.System, d Deps, kube *KubeClient, plan k8sprov.Plan, st *jobState, earlierSecrets []k8sprov.ObjectRef) (*k8sprov.Result, error) {
	end := p.Group(fmt.Sprintf("Starting %d BuildKit pod(s) in namespace %s", len(plan.Platforms), plan.Namespace))
	provisioner := &k8sprov.Provisioner{
		Client:         kube.Client,
		Now:            d.Now,
		Progress:       progressPrinter(p, d.Now()),
		Verify:         d.Verify,
		VerifyInterval: d.VerifyInterval,
		SecretCreated:  func(secret k8sprov.ObjectRef) error { return st.saveSecret(p, secret) },
		EarlierSecrets: earlierSecrets,
		Warning:        func(msg string) { p.Warningf("%s", msg) },
	}
	result, err := provisioner.Provision(ctx, plan)
	end()
	if err != nil {
		if ctx.Err() != nil {
			// The provisioner reports its own deadline and a cancelled job alike.
			return nil, fmt.Errorf("cancelled while the builders were starting: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("starting the builders: %w", err)
	}
	return result, nil
}

// registerBuilder writes the client certificates and creates the buildx builder with a node per
// builder.
func registerBuilder(ctx context.Context, p ci.System, d Deps, st jobState, result *k8sprov.Result, in mainInputs) (buildx.Builder, buildx.Inspection, pki.ClientFiles, error) {
	if err := os.MkdirAll(st.JobDir, 0o700); err != nil {
		return buildx.Builder{}, buildx.Inspection{}, pki.ClientFiles{}, fmt.Errorf("creating the job's directory: %w", err)
	}
	files, err := pki.WriteClientFiles(st.TLSDir, result.Credentials.CACertPEM, result.Credentials.Client)
	if err != nil {
		return buildx.Builder{}, buildx.Inspection{}, pki.ClientFiles{}, err
	}
	builder := buildx.Builder{Name: st.Builder, Use: in.set.use}
	for _, b := range result.Builders {
		builder.Nodes = append(builder.Nodes, buildx.Node{
			Platform:       b.Platform.String(),
			Endpoint:       b.Endpoint,
			CACert:         files.CA,
			Cert:           files.Cert,
			Key:            files.Key,
			ServerName:     b.ServerName,
			BuildkitdFlags: strings.Join(in.opts.BuildkitdFlags, " "),
			Pod:            b.Pod,
			KubernetesNode: b.Node,
		})
	}
	end := p.Group("Creating buildx builder " + st.Builder)
	bx := &buildx.Client{Runner: d.Runner, Docker: d.Docker, BuildxConfigDir: st.BuildxDir, Logf: p.Infof}
	inspection, err := bx.Create(ctx, builder)
	end()
	return builder, inspection, files, err
}

// resolve connects to Kubernetes, finds the builders' namespace, applies the cluster template
// kept there, finds the runner pod that will own the builders, and plans the job's objects.
func resolve(ctx context.Context, p ci.System, d Deps, in mainInputs) (*KubeClient, k8sprov.Plan, error) {
	opts, defaultPlatform := in.opts, in.defaultPlatform
	end := p.Group("Finding the runner pod")
	defer end()
	kube, err := d.Kube(ctx, in.set.kubeconfig)
	if err != nil {
		return nil, k8sprov.Plan{}, fmt.Errorf("connecting to Kubernetes: %w", err)
	}
	p.Infof("Kubernetes: %s", kube.Source)
	hostname, _ := d.Hostname()
	lookup := k8sprov.OwnerLookup{
		Selection:           opts.Owner,
		Namespace:           opts.Namespace,
		Candidates:          p.RunnerCandidates(),
		Getenv:              d.Getenv,
		Hostname:            hostname,
		ReadFile:            d.ReadFile,
		KubeconfigNamespace: kube.Namespace,
	}
	namespace, source, err := k8sprov.ResolveNamespace(lookup)
	if err != nil {
		return nil, k8sprov.Plan{}, err
	}
	p.Infof("Namespace: %s (from %s)", namespace, source)
	if opts, err = applyTemplate(ctx, p, kube, namespace, in); err != nil {
		return nil, k8sprov.Plan{}, err
	}
	owner, err := k8sprov.ResolveOwner(ctx, kube.Client, namespace, lookup)
	if err != nil {
		return nil, k8sprov.Plan{}, err
	}
	if owner != nil {
		p.Infof("Runner pod: %s (uid %s); the builders are owned by it and go when it goes", owner.Name, owner.UID)
		if opts, err = jobFromRunnerPod(p, opts, owner); err != nil {
			return nil, k8sprov.Plan{}, err
		}
	} else {
		p.Infof("Runner pod: none (owner-pod: none); cleanup relies on the post step, the pods' deadline and the janitor")
	}
	plan, err := k8sprov.NewPlan(opts, k8sprov.Resolution{Namespace: namespace, Owner: owner, DefaultPlatform: defaultPlatform, CreatedAt: d.Now()})
	if err != nil {
		return nil, k8sprov.Plan{}, err
	}
	p.Infof("Job key: %s; platforms: %s", plan.Key, platform.FormatList(plan.Platforms))
	return kube, plan, nil
}

// jobFromRunnerPod lets a platform whose CI system describes the job on the pod it runs in
// (GitLab's Kubernetes executor) take the job's identity from the runner pod's annotations,
// and returns opts with that identity. It costs no request: owner discovery read the pod.
func jobFromRunnerPod(p ci.System, opts k8sprov.Options, owner *k8sprov.RunnerPod) (k8sprov.Options, error) {
	refiner, ok := p.(ci.RunnerPodJob)
	if !ok {
		return opts, nil
	}
	taken, notes := refiner.JobFromRunnerPod(owner.Annotations)
	for _, note := range notes {
		p.Warningf("Job identity: %s", note)
	}
	if len(taken) == 0 {
		return opts, nil
	}
	job := p.Job()
	if err := k8sprov.ValidateJob(job); err != nil {
		return opts, fmt.Errorf("the job identity from the runner pod %s's annotations: %w", owner.Name, err)
	}
	opts.Job = job
	p.Infof("Job identity from the runner pod's annotations: %s", strings.Join(taken, ", "))
	return opts, nil
}

// Names of the environment variables Main exports (see the package documentation).
const (
	EnvBuildxConfig  = "BUILDX_CONFIG"
	EnvBuildxBuilder = "BUILDX_BUILDER"
	EnvBuildkitHost  = "BUILDKIT_HOST"
	EnvTLSDir        = "BUILDKIT_TLS_DIR"
	EnvTLSCACert     = "BUILDKIT_TLS_CACERT"
	EnvTLSCert       = "BUILDKIT_TLS_CERT"
	EnvTLSKey        = "BUILDKIT_TLS_KEY"
	EnvTLSServerName = "BUILDKIT_TLS_SERVERNAME"
)

// Names of the outputs, those of docker/setup-buildx-action plus endpoints.
const (
	OutputName      = "name"
	OutputDriver    = "driver"
	OutputPlatforms = "platforms"
	OutputNodes     = "nodes"
	OutputEndpoints = "endpoints"
	// OutputCacheFrom lists every platform's --cache-from value, one per line (a multi-platform
	// build imports each platform's cache on the node that builds it).
	OutputCacheFrom = "cache-from"
	// OutputCacheRefs is a JSON object: per platform, its ref, cache-from and cache-to.
	OutputCacheRefs = "cache-refs"
	// OutputCacheWrite is "true" when this job exports the registry cache.
	OutputCacheWrite = "cache-write"
)

// Prefixes of the per-platform registry cache variables: BUILDKIT_CACHE_FROM_AMD64,
// BUILDKIT_CACHE_TO_ARM_V7 (cacheEnvName).
const (
	EnvCacheFromPrefix = "BUILDKIT_CACHE_FROM_"
	EnvCacheToPrefix   = "BUILDKIT_CACHE_TO_"
)

// cacheEnvName is prefix plus the platform's slug upper-cased, '-' made '_'.
func cacheEnvName(prefix string, p platform.Platform) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(p.Slug(), "-", "_"))
}

// registryCache is the job's registry cache (none without cache-ref), with cache-write
// resolved against what the CI system says about the job, and says so in the log.
func registryCache(p ci.System, set settings, platforms []platform.Platform) []regcache.Platform {
	if set.cacheRef == "" {
		return nil
	}
	trusted, why := false, "the CI system does not say whether this job is on the default branch"
	if b, ok := p.(ci.DefaultBranchJob); ok {
		trusted, why = b.OnTrustedDefaultBranch()
	}
	write, reason := regcache.Decide(set.cacheWrite, trusted, why)
	verb := "reads"
	if write {
		verb = "reads and writes (mode=max)"
	}
	p.Infof("Registry cache: this job %s %s:cache-<platform> (%s)", verb, set.cacheRef, reason)
	return regcache.Plan(set.cacheRef, platforms, write)
}

// maxLoggedOutputSize bounds how much of an output's value the log shows.
const maxLoggedOutputSize = 4096

// export sets the outputs and the environment of later steps, and returns the environment.
func export(p ci.System, b buildx.Builder, insp buildx.Inspection, buildxDir string, files pki.ClientFiles, use bool, caches []regcache.Platform) (map[string]string, error) {
	nodes, err := buildx.NodesJSON(b, insp)
	if err != nil {
		return nil, err
	}
	endpoints, err := buildx.EndpointsJSON(b)
	if err != nil {
		return nil, err
	}
	env := [][2]string{{EnvBuildxConfig, buildxDir}}
	if use {
		env = append(env, [2]string{EnvBuildxBuilder, b.Name})
	}
	env = append(env,
		[2]string{EnvBuildkitHost, b.Nodes[0].Endpoint},
		[2]string{EnvTLSDir, files.Dir},
		[2]string{EnvTLSCACert, files.CA},
		[2]string{EnvTLSCert, files.Cert},
		[2]string{EnvTLSKey, files.Key},
		[2]string{EnvTLSServerName, b.Nodes[0].ServerName},
	)
	outputs := [][2]string{
		{OutputName, b.Name},
		{OutputDriver, buildx.Driver},
		{OutputPlatforms, strings.Join(b.Platforms(), ",")},
		{OutputNodes, nodes},
		{OutputEndpoints, endpoints},
	}
	if len(caches) > 0 {
		refs := map[string]regcache.Platform{}
		var from []string
		for _, c := range caches {
			// Always set, empty when not writing: a value from an earlier step must not linger.
			env = append(env, [2]string{cacheEnvName(EnvCacheFromPrefix, c.Platform), c.CacheFrom},
				[2]string{cacheEnvName(EnvCacheToPrefix, c.Platform), c.CacheTo})
			refs[c.Platform.String()] = c
			from = append(from, c.CacheFrom)
		}
		refsJSON, err := json.Marshal(refs)
		if err != nil {
			return nil, err
		}
		outputs = append(outputs, [2]string{OutputCacheFrom, strings.Join(from, "\n")},
			[2]string{OutputCacheRefs, string(refsJSON)},
			[2]string{OutputCacheWrite, strconv.FormatBool(caches[0].CacheTo != "")})
	}
	end := p.Group("Exports for later steps")
	defer end()
	exported := map[string]string{}
	for _, kv := range env {
		if err := p.ExportEnv(kv[0], kv[1]); err != nil {
			return nil, err
		}
		exported[kv[0]] = kv[1]
		p.Infof("env %s=%s", kv[0], kv[1])
	}
	for _, kv := range outputs {
		if err := p.SetOutput(kv[0], kv[1]); err != nil {
			return nil, err
		}
		value := kv[1]
		if len(value) > maxLoggedOutputSize {
			value = value[:maxLoggedOutputSize] + "..."
		}
		p.Infof("output %s=%s", kv[0], value)
	}
	p.Infof("%s is this job's own buildx configuration: builders made earlier in the job (docker/setup-buildx-action) are not "+
		"listed in later steps; reach one with `%s= docker buildx build --builder NAME ...`", EnvBuildxConfig, EnvBuildxConfig)
	p.Infof("buildctl reads %s but none of the TLS settings above; reach each builder with:", EnvBuildkitHost)
	for _, line := range buildctlCommands(b) {
		p.Infof("  %s", line)
	}
	return exported, nil
}

// progressPrinter writes the provisioner's live progress, one line per change, with the time
// since start. An event Kubernetes repeats for the same pod (its count goes up) is shown once.
func progressPrinter(p ci.System, start time.Time) func(k8sprov.Progress) {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(pr k8sprov.Progress) {
		if pr.Kind == k8sprov.ProgressEvent {
			key := pr.Pod + "\x00" + pr.Message
			mu.Lock()
			repeated := seen[key]
			seen[key] = true
			mu.Unlock()
			if repeated {
				return
			}
		}
		who := "job"
		if !pr.Platform.IsZero() {
			who = pr.Platform.String()
		}
		p.Infof("%7s  %-12s %s", "+"+formatSeconds(pr.At.Sub(start)), who, pr.Message)
	}
}

// formatSeconds shows a duration in seconds with one decimal, "2.3s".
func formatSeconds(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}
