package clustertemplate

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Allows tells whether jobs may set the governed input.
func (t *Template) Allows(input string) bool {
	return t.JobInputs == nil || slices.Contains(t.JobInputs, input)
}

// ImageFor is the builders' image for a mode when the job names none: the template's image for
// its own mode, else the product's default for that mode.
func (t *Template) ImageFor(rootless bool) string {
	if t.Image != "" && rootless == (t.Mode == ModeRootless) {
		return t.Image
	}
	if rootless {
		return k8sprov.DefaultRootlessImage
	}
	return k8sprov.DefaultImage
}

// Images are the builder images the template admits: its image(s) and AllowedImages when jobs
// may choose the image.
func (t *Template) Images() []string {
	images := []string{t.ImageFor(t.Mode == ModeRootless)}
	if t.Allows(k8sprov.InputRootless) {
		images = append(images, t.ImageFor(t.Mode != ModeRootless))
	}
	if t.Allows(k8sprov.InputImage) {
		images = append(images, t.AllowedImages...)
	}
	return slices.Compact(images)
}

// AllowsPrivileged tells whether rootful (privileged) builders can result from the template.
func (t *Template) AllowsPrivileged() bool {
	return t.Mode != ModeRootless || t.Allows(k8sprov.InputRootless)
}

// LifetimeFor is the effective default and maximum of a duration input.
func (b Bounds) effectiveDefault(product time.Duration) time.Duration {
	d := b.Default
	if d == 0 {
		d = product
	}
	if b.Maximum > 0 && d > b.Maximum {
		d = b.Maximum
	}
	return d
}

// Apply returns a job's effective options under the template: in are the job's inputs as text
// (which of them the job set), opts what k8sprov.ParseOptions made of them. Inputs the job left
// empty take the template's values; inputs it set must be ones the template lets jobs set and
// stay within its maximums. Every refusal is an *k8sprov.InputError naming the input, the
// value, the template and the limit; all are reported at once. A nil template changes nothing.
func (t *Template) Apply(in k8sprov.Inputs, opts k8sprov.Options) (k8sprov.Options, error) {
	if t == nil {
		return opts, nil
	}
	var errs []error
	refuse := func(input, value string, err error, accepted string) {
		errs = append(errs, &k8sprov.InputError{Input: input, Value: value, Err: err, Accepted: accepted})
	}
	given := func(input, text string) bool {
		if strings.TrimSpace(text) == "" {
			return false
		}
		if !t.Allows(input) {
			refuse(input, text, fmt.Errorf("cluster template %s does not let jobs set %s (jobInputs)", t.Source, input),
				"no value: the template sets it; jobs may set "+t.jobInputsText())
			return false
		}
		return true
	}

	rootless := t.Mode == ModeRootless
	if given(k8sprov.InputRootless, in.Rootless) {
		rootless = opts.Rootless
	}
	opts.Rootless = rootless
	if given(k8sprov.InputImage, in.Image) {
		if !slices.ContainsFunc(t.Images(), func(p string) bool { return imageMatches(p, opts.Image) }) {
			refuse(k8sprov.InputImage, opts.Image, fmt.Errorf("not an image cluster template %s allows (image, allowedImages)", t.Source),
				strings.Join(t.Images(), ", "))
		}
	} else {
		opts.Image = t.ImageFor(rootless)
	}

	opts.Resources = t.resources(in, opts.Resources, given, refuse)

	if given(k8sprov.InputNodeSelector, in.NodeSelector) {
		errs = append(errs, t.nodeSelectorConflicts(opts.NodeSelectors)...)
		opts.NodeSelectors = mergeNodeSelectors(t.NodeSelectors, opts.NodeSelectors)
	} else {
		opts.NodeSelectors = mergeNodeSelectors(t.NodeSelectors, nil)
	}
	if given(k8sprov.InputTolerations, in.Tolerations) {
		opts.Tolerations = mergeTolerations(t.Tolerations, opts.Tolerations)
	} else {
		opts.Tolerations = mergeTolerations(t.Tolerations, nil)
	}
	jobFlags := opts.BuildkitdFlags
	if !given(k8sprov.InputBuildkitdFlags, in.BuildkitdFlags) {
		jobFlags = nil
	}
	opts.BuildkitdFlags = append(slices.Clone(t.BuildkitdFlags), jobFlags...)
	if !given(k8sprov.InputBuildkitdConfig, in.BuildkitdConfig) {
		opts.BuildkitdConfig, opts.BuildkitdFiles = t.BuildkitdConfig, nil
	}

	for _, d := range []struct {
		input   string
		text    string
		bounds  Bounds
		field   string
		product time.Duration
		into    *time.Duration
	}{
		{k8sprov.InputMaxLifetime, in.MaxLifetime, t.MaxLifetime, "maxLifetime", k8sprov.DefaultMaxLifetime, &opts.MaxLifetime},
		{k8sprov.InputTerminationGracePeriod, in.TerminationGracePeriod, t.TerminationGracePeriod, "terminationGracePeriod", k8sprov.DefaultTerminationGracePeriod, &opts.TerminationGracePeriod},
	} {
		if !given(d.input, d.text) {
			*d.into = d.bounds.effectiveDefault(d.product)
			continue
		}
		if d.bounds.Maximum > 0 && *d.into > d.bounds.Maximum {
			refuse(d.input, d.text, fmt.Errorf("above the maximum %s of cluster template %s (%s.maximum)", d.bounds.Maximum, t.Source, d.field),
				"at most "+d.bounds.Maximum.String())
		}
	}

	opts.Cache = t.cache(in, opts.Cache, given, refuse)

	opts.Pod = k8sprov.PodSettings{ImagePullPolicy: t.ImagePullPolicy, Debug: t.Debug, Env: slices.Clone(t.Env), Scheduling: slices.Clone(t.Scheduling)}
	if len(errs) == 0 {
		if err := opts.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("with cluster template %s: %w", t.Source, err))
		}
	}
	if len(errs) > 0 {
		return k8sprov.Options{}, errors.Join(errs...)
	}
	return opts, nil
}

func (t *Template) jobInputsText() string {
	if len(t.JobInputs) == 0 {
		return "none of " + strings.Join(GovernedInputs, ", ")
	}
	return strings.Join(t.JobInputs, ", ")
}

// resources merges the template's defaults with the job's entries (the job's win per resource),
// fills each limit the job left open with the maximum, and refuses what is above a maximum.
func (t *Template) resources(in k8sprov.Inputs, job corev1.ResourceRequirements, given func(string, string) bool,
	refuse func(input, value string, err error, accepted string)) corev1.ResourceRequirements {
	out := *t.DefaultResources.DeepCopy()
	for _, list := range []struct {
		input string
		text  string
		job   corev1.ResourceList
		into  *corev1.ResourceList
	}{{k8sprov.InputRequests, in.Requests, job.Requests, &out.Requests}, {k8sprov.InputLimits, in.Limits, job.Limits, &out.Limits}} {
		if !given(list.input, list.text) {
			continue
		}
		if *list.into == nil {
			*list.into = corev1.ResourceList{}
		}
		for _, name := range slices.Sorted(maps.Keys(list.job)) {
			q := list.job[name]
			if max, ok := t.MaximumResources[name]; ok && q.Cmp(max) > 0 {
				refuse(list.input, string(name)+"="+q.String(),
					fmt.Errorf("above the maximum %s=%s of cluster template %s (resources.maximum)", name, max.String(), t.Source),
					fmt.Sprintf("at most %s=%s per builder", name, max.String()))
			}
			(*list.into)[name] = q
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.MaximumResources)) {
		if _, ok := out.Limits[name]; ok {
			continue
		}
		if out.Limits == nil {
			out.Limits = corev1.ResourceList{}
		}
		out.Limits[name] = t.MaximumResources[name].DeepCopy()
	}
	return out
}

// MaxCacheSize is the largest cache volume the template allows: its maximum, else the product's.
func (t *Template) MaxCacheSize() resource.Quantity {
	if !t.Cache.MaximumSize.IsZero() {
		return t.Cache.MaximumSize.DeepCopy()
	}
	return k8sprov.MaxCacheSize()
}

// cache applies the template's cache settings: the job's cache, cache-key, cache-size,
// cache-storage-class and cache-max-slots where the template lets jobs set them and within its
// maximums, the template's (or the product's) values otherwise.
func (t *Template) cache(in k8sprov.Inputs, job k8sprov.CacheSettings, given func(string, string) bool,
	refuse func(input, value string, err error, accepted string)) k8sprov.CacheSettings {
	c := t.Cache
	out := job
	if !given(k8sprov.InputCache, in.Cache) {
		out.Mode = c.Mode
		if out.Mode == "" {
			out.Mode = k8sprov.CacheOff
		}
	}
	if !given(k8sprov.InputCacheKey, in.CacheKey) {
		out.Key = ""
	}
	if !given(k8sprov.InputCacheStorageClass, in.CacheStorageClass) {
		out.StorageClass = c.StorageClass
	}
	max := t.MaxCacheSize()
	if given(k8sprov.InputCacheSize, in.CacheSize) {
		if !c.MaximumSize.IsZero() && job.Size.Cmp(c.MaximumSize) > 0 {
			refuse(k8sprov.InputCacheSize, in.CacheSize, fmt.Errorf("above the maximum %s of cluster template %s (cache.size.maximum)", max.String(), t.Source),
				"at most "+max.String())
		}
	} else {
		out.Size = k8sprov.DefaultCacheSize.DeepCopy()
		if !c.DefaultSize.IsZero() {
			out.Size = c.DefaultSize.DeepCopy()
		}
		if out.Size.Cmp(max) > 0 {
			out.Size = max
		}
	}
	slots := c.MaxSlots
	if given(k8sprov.InputCacheMaxSlots, in.CacheMaxSlots) {
		if slots > 0 && job.MaxSlots > slots {
			refuse(k8sprov.InputCacheMaxSlots, in.CacheMaxSlots, fmt.Errorf("above the maximum %d of cluster template %s (cache.maxSlots)", slots, t.Source),
				fmt.Sprintf("at most %d", slots))
		}
	} else {
		out.MaxSlots = k8sprov.DefaultCacheMaxSlots
		if slots > 0 {
			out.MaxSlots = slots
		}
	}
	return out
}

// nodeSelectorConflicts refuses job rules that change or drop a node label the template sets for
// an overlapping platform: a job may add labels, never move builders off the template's pools.
func (t *Template) nodeSelectorConflicts(job []k8sprov.NodeSelectorRule) []error {
	var errs []error
	for _, jr := range job {
		for _, tr := range t.NodeSelectors {
			if !scopesOverlap(jr.Platform, tr.Platform) {
				continue
			}
			keys := append(slices.Collect(maps.Keys(jr.Labels)), jr.Remove...)
			slices.Sort(keys)
			for _, key := range keys {
				want, set := tr.Labels[key]
				if !set && !slices.Contains(tr.Remove, key) {
					continue
				}
				if got, ok := jr.Labels[key]; ok && set && got == want {
					continue
				}
				scope := scopeText(tr.Platform)
				errs = append(errs, &k8sprov.InputError{Input: k8sprov.InputNodeSelector, Value: k8sprov.FormatNodeSelectors([]k8sprov.NodeSelectorRule{jr}),
					Err:      fmt.Errorf("changes node label %s, which cluster template %s sets for %s (platforms.%s.nodeSelector: %s=%s)", key, t.Source, scope, scope, key, want),
					Accepted: "node labels the template does not set; it keeps " + key + "=" + want})
			}
		}
	}
	return errs
}

func scopesOverlap(a, b platform.Platform) bool {
	return a == (platform.Platform{}) || b == (platform.Platform{}) || a == b
}

func scopeText(p platform.Platform) string {
	if p == (platform.Platform{}) {
		return AllPlatforms
	}
	return p.String()
}

// mergeNodeSelectors returns the template's rules with the job's added, one rule per platform.
func mergeNodeSelectors(template, job []k8sprov.NodeSelectorRule) []k8sprov.NodeSelectorRule {
	var out []k8sprov.NodeSelectorRule
	for _, r := range slices.Concat(template, job) {
		i := slices.IndexFunc(out, func(o k8sprov.NodeSelectorRule) bool { return o.Platform == r.Platform })
		if i < 0 {
			out = append(out, k8sprov.NodeSelectorRule{Platform: r.Platform, Labels: maps.Clone(r.Labels), Remove: slices.Clone(r.Remove)})
			continue
		}
		if out[i].Labels == nil {
			out[i].Labels = map[string]string{}
		}
		maps.Copy(out[i].Labels, r.Labels)
		for _, key := range r.Remove {
			if !slices.Contains(out[i].Remove, key) {
				out[i].Remove = append(out[i].Remove, key)
			}
		}
		slices.Sort(out[i].Remove)
	}
	return out
}

// mergeTolerations returns the template's rules with the job's added, one rule per platform.
func mergeTolerations(template, job []k8sprov.TolerationRule) []k8sprov.TolerationRule {
	var out []k8sprov.TolerationRule
	for _, r := range slices.Concat(template, job) {
		i := slices.IndexFunc(out, func(o k8sprov.TolerationRule) bool { return o.Platform == r.Platform })
		if i < 0 {
			out = append(out, k8sprov.TolerationRule{Platform: r.Platform, Tolerations: slices.Clone(r.Tolerations)})
			continue
		}
		out[i].Tolerations = append(out[i].Tolerations, r.Tolerations...)
	}
	return out
}

// imageMatches is the admission policy's image rule: exact, or a prefix ending in '*'.
func imageMatches(pattern, image string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(image, prefix)
	}
	return image == pattern
}
