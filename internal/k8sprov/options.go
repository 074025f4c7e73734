package k8sprov

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Names of the provisioner's inputs, as errors name them: the names users write in action.yml,
// the CI/CD component's inputs, the hook's settings and the CLI's flags, so an error names what
// the user wrote.
const (
	InputPlatforms              = "platforms"
	InputOwnerPod               = "owner-pod"
	InputNamespace              = "namespace"
	InputImage                  = "image"
	InputRequests               = "requests"
	InputLimits                 = "limits"
	InputNodeSelector           = "node-selector"
	InputTolerations            = "tolerations"
	InputLabels                 = "labels"
	InputAnnotations            = "annotations"
	InputBuildkitdFlags         = "buildkitd-flags"
	InputBuildkitdConfig        = "buildkitd-config"
	InputRootless               = "rootless"
	InputTimeout                = "timeout"
	InputMaxLifetime            = "max-lifetime"
	InputTerminationGracePeriod = "termination-grace-period"
)

// Defaults of the builder settings.
const (
	// DefaultImage is the official BuildKit image at the version the local test cluster runs.
	DefaultImage = "docker.io/moby/buildkit:v0.34.2"
	// DefaultRootlessImage is DefaultImage's rootless variant, used when Rootless is set and no
	// image is given.
	DefaultRootlessImage = DefaultImage + "-rootless"
	// DefaultReadinessTimeout matches buildx's kubernetes driver.
	DefaultReadinessTimeout = 120 * time.Second
	// DefaultMaxLifetime matches GitHub-hosted jobs' limit; builders and their certificates
	// never outlive it.
	DefaultMaxLifetime = 6 * time.Hour
	// DefaultTerminationGracePeriod bounds how long a deleted builder waits for running builds
	// (the preStop hook), as the BuildKit operator our users came from does. It only matters when
	// a builder is deleted mid-build (node drain, runner pod gone): at the end of a job no build
	// is connected and the hook returns at once.
	DefaultTerminationGracePeriod = 900 * time.Second
	// DefaultDrainQuietPeriod is how long the preStop hook, once it has seen a build connection,
	// must see none before it lets buildkitd stop.
	DefaultDrainQuietPeriod = 10 * time.Second
)

// Ranges of the durations, so that a typo ("6" meaning hours, read as seconds) is caught.
const (
	minReadinessTimeout = time.Second
	maxReadinessTimeout = 30 * time.Minute
	minMaxLifetime      = time.Minute
	// maxMaxLifetime is a week: the longest self-hosted GitHub job is five days, and the
	// certificates of a builder live as long as it may.
	maxMaxLifetime            = 7 * 24 * time.Hour
	maxTerminationGracePeriod = 24 * time.Hour
	maxDrainQuietPeriod       = 5 * time.Minute
)

// OwnerNone is the owner-pod input that opts out of an owner reference, for runners outside the
// cluster: cleanup then relies on teardown, the pods' deadline and the janitor.
const OwnerNone = "none"

// Inputs are the provisioner's inputs as text, the way CI adapters read them. Empty means default.
// ParseOptions turns them into Options; the syntax of each is in its parser's documentation.
type Inputs struct {
	Platforms              string // ParseList in package platform: "linux/amd64,linux/arm64"
	OwnerPod               string // runner pod name, "none", or empty to discover
	Namespace              string
	Image                  string
	Requests               string            // ParseResourceList: "cpu=500m,memory=1Gi"
	Limits                 string            // ParseResourceList
	NodeSelector           string            // ParseNodeSelectors: "linux/arm64=pool=arm"
	Tolerations            string            // ParseTolerations: "linux/arm64=arch=arm64:NoSchedule"
	Labels                 string            // ParseLabels
	Annotations            string            // ParseAnnotations
	BuildkitdFlags         string            // ParseBuildkitdFlags
	BuildkitdConfig        string            // buildkitd.toml content, its paths as BundleBuildkitdConfig rewrote them
	BuildkitdFiles         map[string][]byte // the files it names (BuildkitdBundle.Files)
	Rootless               string            // ParseBool
	Timeout                string            // ParseDuration: the readiness timeout
	MaxLifetime            string            // ParseDuration
	TerminationGracePeriod string            // ParseDuration
	Cache                  string            // ParseCacheMode: off or volume
	CacheKey               string            // free text naming a lineage
	CacheSize              string            // a quantity, e.g. 20Gi
	CacheStorageClass      string            // a StorageClass name
	CacheMaxSlots          string            // a whole number
}

// OwnerSelection says which pod should own the builders.
type OwnerSelection struct {
	// Name is the runner pod's name, when given explicitly. Empty with None false means: discover
	// it (the CI system's candidates, POD_NAME or the hostname; see ResolveOwner).
	Name string
	// None opts out of an owner reference.
	None bool
}

// Options are the provisioner's validated settings. Build them with ParseOptions, or fill them in
// code and call WithDefaults and Validate.
type Options struct {
	Job cijob.Identity
	// Platforms to provision, one builder each, in order. Empty means the architecture of the
	// node the runner pod runs on, which the provisioner resolves (see Resolution).
	Platforms []platform.Platform
	Owner     OwnerSelection
	// Namespace of the builders; empty means the runner pod's namespace, which the provisioner
	// resolves. Owner and builders must share it.
	Namespace string

	Image     string
	Resources corev1.ResourceRequirements
	// NodeSelectors and Tolerations add to the defaults per platform; see ParseNodeSelectors.
	NodeSelectors []NodeSelectorRule
	Tolerations   []TolerationRule
	// Labels and Annotations are added to every pod and the Secret.
	Labels      map[string]string
	Annotations map[string]string
	// BuildkitdFlags are appended to buildkitd's arguments.
	BuildkitdFlags []string
	// BuildkitdConfig is the content of buildkitd.toml; empty means none.
	BuildkitdConfig string
	// BuildkitdFiles are the files buildkitd.toml names, keyed by their name in the builders'
	// files directory (see BundleBuildkitdConfig). The Secret carries them.
	BuildkitdFiles map[string][]byte
	// Rootless runs buildkitd unprivileged (the -rootless image, user 1000, no privileged
	// container); see RenderPod for what that needs from the cluster.
	Rootless bool
	// Pod holds what only a cluster template sets (pull policy, debug logging, OpenTelemetry
	// environment, affinity, priority class, topology spread).
	Pod PodSettings

	ReadinessTimeout       time.Duration
	MaxLifetime            time.Duration
	TerminationGracePeriod time.Duration
	// Cache says whether and where builders keep BuildKit's state across jobs.
	Cache CacheSettings

	// DrainQuietPeriod is how long the preStop hook waits with no build connection open before
	// buildkitd is stopped. Not an input: tests of teardown lower it.
	DrainQuietPeriod time.Duration
}

// ParseOptions reads every input, applies the defaults and validates the result: the one place
// where the provisioner's settings are checked. It reports all problems at once, each an
// *InputError, joined with errors.Join.
func ParseOptions(job cijob.Identity, in Inputs) (Options, error) {
	opts := Options{Job: job}
	var errs []error
	collect := func(input, value string, err error) {
		if err != nil {
			errs = append(errs, named(input, value, err))
		}
	}

	var err error
	opts.Platforms, err = platform.ParseList(in.Platforms)
	if err != nil {
		value := in.Platforms
		var entryErr *platform.EntryError
		if errors.As(err, &entryErr) {
			value = entryErr.Entry
		}
		errs = append(errs, &InputError{Input: InputPlatforms, Value: value, Err: err, Accepted: "a comma-separated list of " + platform.Accepted})
	}
	opts.Owner = parseOwner(in.OwnerPod)
	opts.Namespace = strings.TrimSpace(in.Namespace)
	opts.Image = strings.TrimSpace(in.Image)
	opts.Resources.Requests, err = ParseResourceList(in.Requests)
	collect(InputRequests, in.Requests, err)
	opts.Resources.Limits, err = ParseResourceList(in.Limits)
	collect(InputLimits, in.Limits, err)
	opts.NodeSelectors, err = ParseNodeSelectors(in.NodeSelector)
	collect(InputNodeSelector, in.NodeSelector, err)
	opts.Tolerations, err = ParseTolerations(in.Tolerations)
	collect(InputTolerations, in.Tolerations, err)
	opts.Labels, err = ParseLabels(in.Labels)
	collect(InputLabels, in.Labels, err)
	opts.Annotations, err = ParseAnnotations(in.Annotations)
	collect(InputAnnotations, in.Annotations, err)
	opts.BuildkitdFlags, err = ParseBuildkitdFlags(in.BuildkitdFlags)
	collect(InputBuildkitdFlags, in.BuildkitdFlags, err)
	opts.BuildkitdConfig = in.BuildkitdConfig
	opts.BuildkitdFiles = in.BuildkitdFiles
	opts.Rootless, err = ParseBool(in.Rootless, false)
	collect(InputRootless, in.Rootless, err)
	for _, d := range []struct {
		input string
		text  string
		into  *time.Duration
	}{
		{InputTimeout, in.Timeout, &opts.ReadinessTimeout},
		{InputMaxLifetime, in.MaxLifetime, &opts.MaxLifetime},
		{InputTerminationGracePeriod, in.TerminationGracePeriod, &opts.TerminationGracePeriod},
	} {
		if strings.TrimSpace(d.text) == "" {
			continue
		}
		*d.into, err = ParseDuration(d.text)
		if err == nil && *d.into <= 0 {
			// Zero would silently mean "default" below; say so instead.
			err = inputErrorf(d.text, AcceptedDuration+", greater than zero (leave the input empty for the default)", "not positive")
		}
		collect(d.input, d.text, err)
	}

	var cacheErrs []error
	opts.Cache, cacheErrs = parseCacheInputs(in)
	errs = append(errs, cacheErrs...)

	opts = opts.WithDefaults()
	// Validation also sees the inputs that failed to parse (as zero values); only its findings
	// about the other inputs are news.
	failed := map[string]bool{}
	for _, err := range errs {
		failed[err.(*InputError).Input] = true
	}
	for _, err := range Flatten(opts.Validate()) {
		var inputErr *InputError
		if errors.As(err, &inputErr) && failed[inputErr.Input] {
			continue
		}
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Options{}, errors.Join(errs...)
	}
	return opts, nil
}

func parseOwner(s string) OwnerSelection {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return OwnerSelection{}
	case strings.EqualFold(s, OwnerNone):
		return OwnerSelection{None: true}
	}
	return OwnerSelection{Name: s}
}

// WithDefaults returns a copy of o with every unset builder setting at its default. Platforms,
// owner and namespace stay empty: the provisioner resolves those from the cluster.
func (o Options) WithDefaults() Options {
	if o.Image == "" {
		o.Image = DefaultImage
		if o.Rootless {
			o.Image = DefaultRootlessImage
		}
	}
	if o.ReadinessTimeout == 0 {
		o.ReadinessTimeout = DefaultReadinessTimeout
	}
	if o.MaxLifetime == 0 {
		o.MaxLifetime = DefaultMaxLifetime
	}
	if o.TerminationGracePeriod == 0 {
		o.TerminationGracePeriod = DefaultTerminationGracePeriod
	}
	if o.DrainQuietPeriod == 0 {
		o.DrainQuietPeriod = DefaultDrainQuietPeriod
	}
	o.Cache = o.Cache.withDefaults()
	return o
}

// Validate checks every setting and their relations and returns all problems joined, each an
// *InputError naming the input. It expects defaults applied (WithDefaults).
func (o Options) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(ValidateJob(o.Job))
	add(validatePlatforms(o.Platforms))
	if o.Owner.None && o.Owner.Name != "" {
		add(&InputError{Input: InputOwnerPod, Value: o.Owner.Name, Err: errors.New("both a name and none"), Accepted: ownerAccepted})
	}
	if o.Owner.Name != "" {
		if msgs := validation.IsDNS1123Subdomain(o.Owner.Name); len(msgs) > 0 {
			add(&InputError{Input: InputOwnerPod, Value: o.Owner.Name, Err: errors.New(strings.Join(msgs, "; ")), Accepted: ownerAccepted})
		}
	}
	if o.Namespace != "" {
		if msgs := validation.IsDNS1123Label(o.Namespace); len(msgs) > 0 {
			add(&InputError{Input: InputNamespace, Value: o.Namespace, Err: errors.New(strings.Join(msgs, "; ")),
				Accepted: "a namespace name (DNS label), or empty for the runner pod's namespace"})
		}
	}
	add(named(InputImage, o.Image, validateImage(o.Image)))
	add(validateResources(o.Resources))
	add(validateRules(o.NodeSelectors, o.Tolerations))
	for key, value := range o.Labels {
		add(named(InputLabels, key+"="+value, wrapAccepted(key+"="+value, AcceptedLabels, validateExtraLabel(key, value))))
	}
	for key, value := range o.Annotations {
		add(named(InputAnnotations, key+"="+value, wrapAccepted(key+"="+value, AcceptedAnnotations, validateExtraAnnotation(key, value))))
	}
	// The identity and times are added to the user's annotations on every object.
	if err := apivalidation.ValidateAnnotationsSize(o.Annotations); err != nil {
		add(&InputError{Input: InputAnnotations, Value: fmt.Sprintf("%d annotations", len(o.Annotations)), Err: err, Accepted: AcceptedAnnotations})
	}
	add(named(InputBuildkitdFlags, strings.Join(o.BuildkitdFlags, " "), validateBuildkitdFlags(o.BuildkitdFlags)))
	if o.BuildkitdConfig != "" {
		add(named(InputBuildkitdConfig, o.BuildkitdConfig, validateBuildkitdConfig(o.BuildkitdConfig)))
	}
	if err := o.Pod.Validate(); err != nil {
		add(fmt.Errorf("cluster template settings: %w", err))
	}
	add(validateDuration(InputTimeout, o.ReadinessTimeout, minReadinessTimeout, maxReadinessTimeout))
	lifetimeErr := validateDuration(InputMaxLifetime, o.MaxLifetime, minMaxLifetime, maxMaxLifetime)
	add(lifetimeErr)
	add(validateDuration(InputTerminationGracePeriod, o.TerminationGracePeriod, time.Second, maxTerminationGracePeriod))
	add(validateDuration("drain quiet period", o.DrainQuietPeriod, 0, maxDrainQuietPeriod))
	add(o.Cache.validate(o.Job))
	if lifetimeErr == nil && o.ReadinessTimeout >= o.MaxLifetime {
		add(&InputError{Input: InputMaxLifetime, Value: o.MaxLifetime.String(),
			Err:      fmt.Errorf("not longer than the readiness timeout %s", o.ReadinessTimeout),
			Accepted: "a lifetime longer than the " + InputTimeout})
	}
	return errors.Join(errs...)
}

const ownerAccepted = "the runner pod's name, none to opt out of an owner reference, or empty to discover the runner pod"

func wrapAccepted(value, accepted string, err error) error {
	if err == nil {
		return nil
	}
	return &InputError{Value: value, Err: err, Accepted: accepted}
}

func validatePlatforms(list []platform.Platform) error {
	accepted := "a comma-separated list of " + platform.Accepted
	var seen []platform.Platform
	for _, p := range list {
		canonical, err := platform.Parse(p.String())
		if err != nil || canonical != p {
			return &InputError{Input: InputPlatforms, Value: p.String(), Err: errors.New("not a canonical supported platform"), Accepted: accepted}
		}
		if slices.Contains(seen, p) {
			return &InputError{Input: InputPlatforms, Value: p.String(), Err: errors.New("listed twice"), Accepted: accepted}
		}
		seen = append(seen, p)
	}
	return nil
}

func validateResources(r corev1.ResourceRequirements) error {
	var errs []error
	for _, list := range []struct {
		input string
		list  corev1.ResourceList
	}{{InputRequests, r.Requests}, {InputLimits, r.Limits}} {
		for _, name := range slices.Sorted(maps.Keys(list.list)) {
			q := list.list[name]
			entry := string(name) + "=" + q.String()
			if !slices.Contains(supportedResources, name) {
				errs = append(errs, &InputError{Input: list.input, Value: entry, Err: fmt.Errorf("unknown resource %q", name), Accepted: AcceptedResources})
			} else if q.Sign() < 0 {
				errs = append(errs, &InputError{Input: list.input, Value: entry, Err: errors.New("negative"), Accepted: AcceptedResources})
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.Limits)) {
		limit := r.Limits[name]
		if request, ok := r.Requests[name]; ok && request.Cmp(limit) > 0 {
			errs = append(errs, &InputError{Input: InputLimits, Value: string(name) + "=" + limit.String(),
				Err:      fmt.Errorf("below the request %s", request.String()),
				Accepted: "limits at least as large as the requests for the same resource"})
		}
	}
	return errors.Join(errs...)
}

func validateRules(selectors []NodeSelectorRule, tolerations []TolerationRule) error {
	// Formatting and parsing again checks programmatic rules with the very code that checks text.
	if _, err := ParseNodeSelectors(FormatNodeSelectors(selectors)); err != nil {
		return named(InputNodeSelector, FormatNodeSelectors(selectors), err)
	}
	for _, rule := range selectors {
		if len(rule.Labels) == 0 {
			return &InputError{Input: InputNodeSelector, Value: formatScope(rule.Platform), Err: errors.New("rule without labels"), Accepted: AcceptedNodeSelectors}
		}
	}
	if _, err := ParseTolerations(FormatTolerations(tolerations)); err != nil {
		return named(InputTolerations, FormatTolerations(tolerations), err)
	}
	for _, rule := range tolerations {
		for _, t := range rule.Tolerations {
			// Formatting drops an Exists toleration's value, so the round trip above cannot see it.
			if t.Operator == corev1.TolerationOpExists && t.Value != "" {
				return &InputError{Input: InputTolerations, Value: t.Key + "=" + t.Value, Err: errors.New("operator Exists with a value"), Accepted: AcceptedTolerations}
			}
			if t.Operator != corev1.TolerationOpExists && t.Operator != corev1.TolerationOpEqual {
				return &InputError{Input: InputTolerations, Value: t.Key, Err: fmt.Errorf("operator %q", t.Operator), Accepted: AcceptedTolerations}
			}
		}
	}
	return nil
}

func validateDuration(input string, d, lowest, highest time.Duration) error {
	if d < lowest || d > highest {
		return &InputError{Input: input, Value: d.String(), Err: errors.New("out of range"),
			Accepted: fmt.Sprintf("%s, from %s to %s", AcceptedDuration, lowest, highest)}
	}
	return nil
}

// ScheduleFor returns the node selector and tolerations of the builder for p: the default
// kubernetes.io/os and kubernetes.io/arch selectors, then the rules for every platform, then the
// rules for p, later keys overriding earlier ones. Variants are not visible to the scheduler
// (linux/amd64/v3 selects kubernetes.io/arch=amd64); a rule for the platform can add a node
// label that guarantees the variant.
func (o Options) ScheduleFor(p platform.Platform) (map[string]string, []corev1.Toleration) {
	selector := map[string]string{
		corev1.LabelOSStable:   p.OS,
		corev1.LabelArchStable: p.Architecture,
	}
	var tolerations []corev1.Toleration
	for _, scope := range []platform.Platform{{}, p} {
		for _, rule := range o.NodeSelectors {
			if rule.Platform == scope {
				maps.Copy(selector, rule.Labels)
				for _, key := range rule.Remove {
					delete(selector, key)
				}
			}
		}
		for _, rule := range o.Tolerations {
			if rule.Platform == scope {
				for _, t := range rule.Tolerations {
					// A platform's own toleration for the same taint replaces the general one
					// (its tolerationSeconds may differ).
					i := slices.IndexFunc(tolerations, func(seen corev1.Toleration) bool { return seen.MatchToleration(&t) })
					if i >= 0 {
						tolerations[i] = *t.DeepCopy()
					} else {
						tolerations = append(tolerations, *t.DeepCopy())
					}
				}
			}
		}
	}
	return selector, tolerations
}
