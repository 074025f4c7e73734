package k8sprov

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// PodSettings are the builder pod's settings that only a platform team's cluster template sets
// (package clustertemplate), not a job's inputs: how the image is pulled, buildkitd's debug
// logging and OpenTelemetry environment, and per platform the scheduling a node pool needs
// beyond its node selector and tolerations. The zero value renders today's pods.
type PodSettings struct {
	// ImagePullPolicy of the buildkitd container; empty means IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// Debug runs buildkitd with --debug.
	Debug bool
	// Env is buildkitd's environment (the template's OpenTelemetry exporter settings).
	Env []corev1.EnvVar
	// Scheduling per platform; the zero Platform applies to every platform, a platform's own
	// entry replaces each field it sets.
	Scheduling []PlatformScheduling
}

// PlatformScheduling is the scheduling of one platform's builders beyond node labels and
// tolerations.
type PlatformScheduling struct {
	Platform                  platform.Platform
	Affinity                  *corev1.Affinity
	PriorityClassName         string
	TopologySpreadConstraints []corev1.TopologySpreadConstraint
}

// SchedulingFor merges the scheduling for every platform with p's own: p's fields win where set.
func (s PodSettings) SchedulingFor(p platform.Platform) PlatformScheduling {
	out := PlatformScheduling{Platform: p}
	for _, scope := range []platform.Platform{{}, p} {
		for _, entry := range s.Scheduling {
			if entry.Platform != scope {
				continue
			}
			if entry.Affinity != nil {
				out.Affinity = entry.Affinity.DeepCopy()
			}
			if entry.PriorityClassName != "" {
				out.PriorityClassName = entry.PriorityClassName
			}
			if entry.TopologySpreadConstraints != nil {
				out.TopologySpreadConstraints = nil
				for _, c := range entry.TopologySpreadConstraints {
					out.TopologySpreadConstraints = append(out.TopologySpreadConstraints, *c.DeepCopy())
				}
			}
		}
	}
	return out
}

var pullPolicies = []corev1.PullPolicy{corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever}

// Validate checks the settings the API server would otherwise refuse pod by pod.
func (s PodSettings) Validate() error {
	var errs []error
	if s.ImagePullPolicy != "" && !slices.Contains(pullPolicies, s.ImagePullPolicy) {
		errs = append(errs, fmt.Errorf("image pull policy %q: not one of Always, IfNotPresent, Never", s.ImagePullPolicy))
	}
	for _, env := range s.Env {
		if msgs := validation.IsEnvVarName(env.Name); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("environment variable %q: %s", env.Name, strings.Join(msgs, "; ")))
		}
		if env.ValueFrom != nil {
			errs = append(errs, fmt.Errorf("environment variable %q: only plain values", env.Name))
		}
	}
	var seen []platform.Platform
	for _, entry := range s.Scheduling {
		if slices.Contains(seen, entry.Platform) {
			errs = append(errs, fmt.Errorf("scheduling for %s given twice", formatScope(entry.Platform)))
		}
		seen = append(seen, entry.Platform)
		if entry.PriorityClassName != "" {
			if msgs := validation.IsDNS1123Subdomain(entry.PriorityClassName); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("priority class %q: %s", entry.PriorityClassName, strings.Join(msgs, "; ")))
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// ValidateImage checks an image reference as the image input is checked; the cluster template
// checks its images with it.
func ValidateImage(image string) error { return validateImage(image) }

// ValidateBuildkitdConfig checks a buildkitd.toml as the buildkitd-config input is checked.
func ValidateBuildkitdConfig(content string) error { return validateBuildkitdConfig(content) }

// ValidateTolerations checks toleration rules as the tolerations input is checked.
func ValidateTolerations(rules []TolerationRule) error { return validateRules(nil, rules) }
