package k8sprov

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/google/shlex"
	toml "github.com/pelletier/go-toml/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// This file holds one parser per kind of input. Each returns *InputError values naming the
// refused entry and what is accepted; ParseOptions adds the input's name. Every parser that has a
// Format counterpart guarantees that what it accepts formats back into text it accepts again as
// the same value (the fuzz tests hold it to that).

// splitEntries splits a list input into its entries. Entries are separated by newlines; an input
// of a single line may separate them with commas instead. So "a=1,b=2" is two entries, and an
// annotation whose value contains a comma is written one entry per line. Blank entries are
// dropped and entries are trimmed.
func splitEntries(s string) []string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	separator := ","
	if strings.Contains(strings.TrimSpace(s), "\n") {
		separator = "\n"
	}
	var entries []string
	for _, entry := range strings.Split(s, separator) {
		if entry = strings.TrimSpace(entry); entry != "" {
			entries = append(entries, entry)
		}
	}
	return entries
}

// splitScopedEntries splits the per-platform inputs (node selectors, tolerations), whose entries
// hold commas themselves, at semicolons and newlines.
func splitScopedEntries(s string) []string {
	var entries []string
	for _, entry := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == '\n' || r == '\r' }) {
		if entry = strings.TrimSpace(entry); entry != "" {
			entries = append(entries, entry)
		}
	}
	return entries
}

// AcceptedResources describes what ParseResourceList accepts.
const AcceptedResources = "comma-separated name=quantity with names cpu, memory, ephemeral-storage " +
	"and non-negative Kubernetes quantities, e.g. cpu=500m,memory=1Gi"

// supportedResources are the resource names a builder's requests and limits may set. Extended
// resources (GPUs) make no sense for buildkitd and hugepages need pod-level care, so the list is
// closed and a typo ("mem=1Gi") is an error instead of an unsatisfiable request.
var supportedResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage}

// maxQuantityMagnitude bounds quantities far above any node's capacity, where Kubernetes still
// keeps them as exact int64 values (beyond int64 its canonical text may not read back the same).
var maxQuantityMagnitude = resource.MustParse("1Ei")

// ParseResourceList reads requests or limits such as "cpu=500m,memory=1Gi".
func ParseResourceList(s string) (corev1.ResourceList, error) {
	list := corev1.ResourceList{}
	for _, entry := range splitEntries(s) {
		name, value, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, inputErrorf(entry, AcceptedResources, "no '=' between name and quantity")
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		resourceName := corev1.ResourceName(name)
		if !slices.Contains(supportedResources, resourceName) {
			return nil, inputErrorf(entry, AcceptedResources, "unknown resource %q", name)
		}
		if _, dup := list[resourceName]; dup {
			return nil, inputErrorf(entry, AcceptedResources, "resource %q given twice", name)
		}
		q, err := parseQuantity(value)
		if err != nil {
			return nil, inputErrorf(entry, AcceptedResources, "%s: %w", name, err)
		}
		list[resourceName] = q
	}
	return list, nil
}

// quantityPattern is the subset of Kubernetes' quantity syntax parseQuantity hands to
// resource.ParseQuantity: unsigned, at most 32 characters, exponents of at most two digits.
// ParseQuantity and Quantity.Cmp take seconds on inputs such as "1e-23456782" (found by fuzzing),
// and no CPU or memory amount needs such numbers.
var quantityPattern = regexp.MustCompile(`^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,2})?$`)

const maxQuantityLength = 32

func parseQuantity(s string) (resource.Quantity, error) {
	if strings.HasPrefix(s, "-") {
		return resource.Quantity{}, fmt.Errorf("quantity %q is negative", s)
	}
	if len(s) > maxQuantityLength || !quantityPattern.MatchString(s) {
		return resource.Quantity{}, fmt.Errorf("quantity %q is not a number with an optional suffix (Ki, Mi, Gi, m, k, M, G, e3, ...) of at most %d characters", s, maxQuantityLength)
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return resource.Quantity{}, fmt.Errorf("quantity %q: %w", s, err)
	}
	if q.Sign() < 0 {
		return resource.Quantity{}, fmt.Errorf("quantity %q is negative", s)
	}
	if q.Cmp(maxQuantityMagnitude) > 0 {
		return resource.Quantity{}, fmt.Errorf("quantity %q is larger than %s", s, maxQuantityMagnitude.String())
	}
	// Let the canonical form decide what the value is, so that what is stored is what is shown.
	canonical, err := resource.ParseQuantity(q.String())
	if err != nil || canonical.Cmp(q) != 0 {
		return resource.Quantity{}, fmt.Errorf("quantity %q cannot be represented exactly", s)
	}
	return canonical, nil
}

// FormatResourceList writes a list the way ParseResourceList reads it, names sorted.
func FormatResourceList(list corev1.ResourceList) string {
	names := slices.Sorted(maps.Keys(list))
	entries := make([]string, len(names))
	for i, name := range names {
		q := list[name]
		entries[i] = string(name) + "=" + q.String()
	}
	return strings.Join(entries, ",")
}

// AllPlatforms is the scope word of a node-selector or toleration entry that applies to every
// platform.
const AllPlatforms = "*"

// NodeSelectorRule adds node labels a platform's builder must be scheduled on.
type NodeSelectorRule struct {
	// Platform the rule applies to; the zero Platform means every platform.
	Platform platform.Platform
	// Labels the node must carry. A key also set by a less specific rule (or the default
	// kubernetes.io/arch) is overridden.
	Labels map[string]string
	// Remove drops keys a less specific rule or the defaults set, written KEY- (as kubectl
	// label does). It maps an architecture onto nodes that do not carry it in
	// kubernetes.io/arch, e.g. arm64 builders on amd64 nodes that emulate arm64 with qemu.
	Remove []string
}

// AcceptedNodeSelectors describes the syntax ParseNodeSelectors reads.
const AcceptedNodeSelectors = "entries separated by ';' or newlines, each PLATFORM=KEY=VALUE[,KEY=VALUE...] " +
	"where PLATFORM is os/arch[/variant] or * for every platform and KEY=VALUE is a node label " +
	"(KEY- drops a default such as kubernetes.io/arch), e.g. linux/arm64=pool=arm,disk=ssd;*=team=ci"

// ParseNodeSelectors reads per-platform node selectors:
//
//	linux/arm64=pool=arm,disk=ssd
//	*=team=ci
//
// Entries are separated by semicolons or newlines. An entry starts with the platform it applies to
// (or * for all) and an '='; then come node labels as KEY=VALUE separated by commas. Each platform
// appears at most once. The default selector kubernetes.io/arch=<arch> always applies; an entry
// may override it by naming that key.
func ParseNodeSelectors(s string) ([]NodeSelectorRule, error) {
	var rules []NodeSelectorRule
	for _, entry := range splitScopedEntries(s) {
		scope, body, err := parseScope(entry, AcceptedNodeSelectors, rules, func(r NodeSelectorRule) platform.Platform { return r.Platform })
		if err != nil {
			return nil, err
		}
		labels := map[string]string{}
		var remove []string
		for _, pair := range strings.Split(body, ",") {
			pair = strings.TrimSpace(pair)
			key, value, ok := strings.Cut(pair, "=")
			if !ok && strings.HasSuffix(pair, "-") {
				key = strings.TrimSpace(strings.TrimSuffix(pair, "-"))
				if msgs := validation.IsQualifiedName(key); len(msgs) > 0 {
					return nil, inputErrorf(entry, AcceptedNodeSelectors, "node label key %q: %s", key, strings.Join(msgs, "; "))
				}
				if _, dup := labels[key]; dup || slices.Contains(remove, key) {
					return nil, inputErrorf(entry, AcceptedNodeSelectors, "node label key %q given twice", key)
				}
				remove = append(remove, key)
				continue
			}
			if !ok {
				return nil, inputErrorf(entry, AcceptedNodeSelectors, "node label %q has no '='", pair)
			}
			key, value = strings.TrimSpace(key), strings.TrimSpace(value)
			if err := validateLabel(key, value); err != nil {
				return nil, inputErrorf(entry, AcceptedNodeSelectors, "node label %q: %w", pair, err)
			}
			if _, dup := labels[key]; dup || slices.Contains(remove, key) {
				return nil, inputErrorf(entry, AcceptedNodeSelectors, "node label key %q given twice", key)
			}
			labels[key] = value
		}
		slices.Sort(remove)
		rules = append(rules, NodeSelectorRule{Platform: scope, Labels: labels, Remove: remove})
	}
	return rules, nil
}

// FormatNodeSelectors writes rules the way ParseNodeSelectors reads them.
func FormatNodeSelectors(rules []NodeSelectorRule) string {
	entries := make([]string, len(rules))
	for i, rule := range rules {
		pairs := make([]string, 0, len(rule.Labels))
		for _, key := range slices.Sorted(maps.Keys(rule.Labels)) {
			pairs = append(pairs, key+"="+rule.Labels[key])
		}
		for _, key := range rule.Remove {
			pairs = append(pairs, key+"-")
		}
		entries[i] = formatScope(rule.Platform) + "=" + strings.Join(pairs, ",")
	}
	return strings.Join(entries, ";")
}

// TolerationRule adds tolerations to a platform's builder.
type TolerationRule struct {
	// Platform the rule applies to; the zero Platform means every platform.
	Platform platform.Platform
	// Tolerations to add.
	Tolerations []corev1.Toleration
}

// AcceptedTolerations describes the syntax ParseTolerations reads.
const AcceptedTolerations = "entries separated by ';' or newlines, each PLATFORM=TOLERATION[,TOLERATION...] " +
	"where PLATFORM is os/arch[/variant] or * for every platform and TOLERATION is KEY=VALUE:EFFECT (operator Equal) " +
	"or KEY:EFFECT (operator Exists), EFFECT one of NoSchedule, PreferNoSchedule, NoExecute, and NoExecute may be " +
	"followed by :SECONDS; e.g. linux/arm64=arch=arm64:NoSchedule;*=spot:NoExecute:300"

// validEffects are the taint effects a toleration may name. An empty effect (tolerate every
// effect) is deliberately not offered: tolerating NoExecute by accident lets a builder stay on
// a node being drained.
var validEffects = []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute}

// maxTolerationSeconds bounds tolerationSeconds to what fits the API's int64 with room to spare
// and exceeds any builder lifetime.
const maxTolerationSeconds = 1 << 31

// ParseTolerations reads per-platform tolerations:
//
//	linux/arm64=arch=arm64:NoSchedule,dedicated:NoSchedule
//	*=spot=true:NoExecute:300
//
// The entry and platform syntax is that of ParseNodeSelectors. A toleration is KEY=VALUE:EFFECT
// (operator Equal), or KEY:EFFECT (operator Exists, any value); a NoExecute toleration may end
// in :SECONDS, how long the builder stays after such a taint appears. A toleration without a key
// (tolerate every taint) is not accepted.
func ParseTolerations(s string) ([]TolerationRule, error) {
	var rules []TolerationRule
	for _, entry := range splitScopedEntries(s) {
		scope, body, err := parseScope(entry, AcceptedTolerations, rules, func(r TolerationRule) platform.Platform { return r.Platform })
		if err != nil {
			return nil, err
		}
		var tolerations []corev1.Toleration
		for _, text := range strings.Split(body, ",") {
			toleration, err := parseToleration(strings.TrimSpace(text))
			if err != nil {
				return nil, inputErrorf(entry, AcceptedTolerations, "toleration %q: %w", strings.TrimSpace(text), err)
			}
			if slices.ContainsFunc(tolerations, func(seen corev1.Toleration) bool { return seen.MatchToleration(&toleration) }) {
				return nil, inputErrorf(entry, AcceptedTolerations, "toleration %q given twice", strings.TrimSpace(text))
			}
			tolerations = append(tolerations, toleration)
		}
		rules = append(rules, TolerationRule{Platform: scope, Tolerations: tolerations})
	}
	return rules, nil
}

func parseToleration(text string) (corev1.Toleration, error) {
	parts := strings.Split(text, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return corev1.Toleration{}, errors.New("want KEY[=VALUE]:EFFECT[:SECONDS]")
	}
	var t corev1.Toleration
	key, value, hasValue := strings.Cut(parts[0], "=")
	t.Key = strings.TrimSpace(key)
	if t.Key == "" {
		return corev1.Toleration{}, errors.New("empty key")
	}
	if msgs := validation.IsQualifiedName(t.Key); len(msgs) > 0 {
		return corev1.Toleration{}, fmt.Errorf("key %q: %s", t.Key, strings.Join(msgs, "; "))
	}
	if hasValue {
		t.Operator = corev1.TolerationOpEqual
		t.Value = strings.TrimSpace(value)
		if msgs := validation.IsValidLabelValue(t.Value); len(msgs) > 0 {
			return corev1.Toleration{}, fmt.Errorf("value %q: %s", t.Value, strings.Join(msgs, "; "))
		}
	} else {
		t.Operator = corev1.TolerationOpExists
	}
	t.Effect = corev1.TaintEffect(strings.TrimSpace(parts[1]))
	if !slices.Contains(validEffects, t.Effect) {
		return corev1.Toleration{}, fmt.Errorf("unknown effect %q", t.Effect)
	}
	if len(parts) == 3 {
		if t.Effect != corev1.TaintEffectNoExecute {
			return corev1.Toleration{}, fmt.Errorf("seconds are only meaningful with NoExecute, not %s", t.Effect)
		}
		digits := strings.TrimSpace(parts[2])
		seconds, err := strconv.ParseInt(digits, 10, 64)
		if err != nil || seconds < 0 || seconds > maxTolerationSeconds || strings.HasPrefix(digits, "+") {
			return corev1.Toleration{}, fmt.Errorf("seconds %q: want a whole number from 0 to %d", digits, maxTolerationSeconds)
		}
		t.TolerationSeconds = &seconds
	}
	return t, nil
}

// FormatTolerations writes rules the way ParseTolerations reads them.
func FormatTolerations(rules []TolerationRule) string {
	entries := make([]string, len(rules))
	for i, rule := range rules {
		texts := make([]string, len(rule.Tolerations))
		for j, t := range rule.Tolerations {
			text := t.Key
			if t.Operator == corev1.TolerationOpEqual {
				text += "=" + t.Value
			}
			text += ":" + string(t.Effect)
			if t.TolerationSeconds != nil {
				text += ":" + strconv.FormatInt(*t.TolerationSeconds, 10)
			}
			texts[j] = text
		}
		entries[i] = formatScope(rule.Platform) + "=" + strings.Join(texts, ",")
	}
	return strings.Join(entries, ";")
}

// parseScope reads the "PLATFORM=" or "*=" head of a per-platform entry and refuses a platform
// that an earlier entry already named.
func parseScope[R any](entry, accepted string, earlier []R, scopeOf func(R) platform.Platform) (platform.Platform, string, error) {
	head, body, ok := strings.Cut(entry, "=")
	if !ok || strings.TrimSpace(body) == "" {
		return platform.Platform{}, "", inputErrorf(entry, accepted, "want PLATFORM= followed by at least one item")
	}
	head = strings.TrimSpace(head)
	var scope platform.Platform
	if head != AllPlatforms {
		p, err := platform.Parse(head)
		if err != nil {
			return platform.Platform{}, "", inputErrorf(entry, accepted, "%w", err)
		}
		scope = p
	}
	for _, rule := range earlier {
		if scopeOf(rule) == scope {
			return platform.Platform{}, "", inputErrorf(entry, accepted, "platform %s has an earlier entry; put its items in one entry", formatScope(scope))
		}
	}
	return scope, body, nil
}

func formatScope(p platform.Platform) string {
	if p.IsZero() {
		return AllPlatforms
	}
	return p.String()
}

// AcceptedLabels describes what ParseLabels reads.
const AcceptedLabels = "KEY=VALUE entries separated by commas or newlines, Kubernetes label syntax, keys outside " +
	reservedPrefix + " and app.kubernetes.io/name and managed-by"

// AcceptedAnnotations describes what ParseAnnotations reads.
const AcceptedAnnotations = "KEY=VALUE entries, one per line (or separated by commas on a single line), " +
	"Kubernetes annotation key syntax, keys outside " + reservedPrefix + " and app.kubernetes.io/name and managed-by"

// ParseLabels reads extra labels for the builders' pods and Secret.
func ParseLabels(s string) (map[string]string, error) {
	return parseKeyValues(s, AcceptedLabels, validateExtraLabel)
}

// ParseAnnotations reads extra annotations for the builders' pods and Secret. Values may hold
// anything but newlines; values with commas need one entry per line.
func ParseAnnotations(s string) (map[string]string, error) {
	return parseKeyValues(s, AcceptedAnnotations, validateExtraAnnotation)
}

func parseKeyValues(s, accepted string, validate func(key, value string) error) (map[string]string, error) {
	result := map[string]string{}
	for _, entry := range splitEntries(s) {
		key, value, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, inputErrorf(entry, accepted, "no '=' between key and value")
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if _, dup := result[key]; dup {
			return nil, inputErrorf(entry, accepted, "key %q given twice", key)
		}
		if err := validate(key, value); err != nil {
			return nil, inputErrorf(entry, accepted, "%w", err)
		}
		result[key] = value
	}
	return result, nil
}

// FormatKeyValues writes labels or annotations one per line, keys sorted, the way ParseLabels
// and ParseAnnotations read them.
func FormatKeyValues(m map[string]string) string {
	lines := make([]string, 0, len(m))
	for _, key := range slices.Sorted(maps.Keys(m)) {
		lines = append(lines, key+"="+m[key])
	}
	return strings.Join(lines, "\n")
}

func validateLabel(key, value string) error {
	if msgs := validation.IsQualifiedName(key); len(msgs) > 0 {
		return fmt.Errorf("key %q: %s", key, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsValidLabelValue(value); len(msgs) > 0 {
		return fmt.Errorf("value %q: %s", value, strings.Join(msgs, "; "))
	}
	return nil
}

func validateExtraLabel(key, value string) error {
	if err := refuseReservedKey(key); err != nil {
		return err
	}
	return validateLabel(key, value)
}

func validateExtraAnnotation(key, value string) error {
	if err := refuseReservedKey(key); err != nil {
		return err
	}
	if msgs := validation.IsQualifiedName(strings.ToLower(key)); len(msgs) > 0 {
		return fmt.Errorf("key %q: %s", key, strings.Join(msgs, "; "))
	}
	if strings.ContainsAny(value, "\n\r") {
		return fmt.Errorf("value of %q holds a line break", key)
	}
	return nil
}

// refuseReservedKey keeps users from overriding the labels and annotations teardown and the
// janitor rely on: a pod relabelled by a user input would be invisible to cleanup.
func refuseReservedKey(key string) error {
	if strings.HasPrefix(key, reservedPrefix) || key == LabelName || key == LabelManagedBy {
		return fmt.Errorf("key %q is reserved for setup-ephemeral-buildkit's own bookkeeping", key)
	}
	return nil
}

// AcceptedBuildkitdFlags describes what ParseBuildkitdFlags reads.
const AcceptedBuildkitdFlags = "buildkitd command-line flags, split like a shell would, except --addr, --tlscacert, --tlscert, " +
	"--tlskey (set by the provisioner) and --config (use the buildkitd-config input), e.g. --debug --oci-worker-gc=false"

// reservedBuildkitdFlags are set by RenderPod; a user value would break the mTLS endpoint or the
// readiness probe.
var reservedBuildkitdFlags = []string{"addr", "tlscacert", "tlscert", "tlskey", "config"}

// ParseBuildkitdFlags splits extra buildkitd flags with shell quoting rules, as
// docker/setup-buildx-action does with its buildkitd-flags input.
func ParseBuildkitdFlags(s string) ([]string, error) {
	args, err := shlex.Split(s)
	if err != nil {
		return nil, inputErrorf(s, AcceptedBuildkitdFlags, "splitting: %w", err)
	}
	if err := validateBuildkitdFlags(args); err != nil {
		return nil, err
	}
	return args, nil
}

func validateBuildkitdFlags(args []string) error {
	for _, arg := range args {
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if slices.Contains(reservedBuildkitdFlags, name) {
			return inputErrorf(arg, AcceptedBuildkitdFlags, "flag --%s is set by the provisioner", name)
		}
	}
	return nil
}

// AcceptedBuildkitdConfig describes what the buildkitd-config input accepts.
const AcceptedBuildkitdConfig = "the content of a buildkitd.toml, valid TOML, at most 256 KiB"

// maxBuildkitdConfigSize keeps the Secret, which holds the config beside the certificates, far
// below the API's 1 MiB object limit.
const maxBuildkitdConfigSize = 256 << 10

func validateBuildkitdConfig(content string) error {
	if len(content) > maxBuildkitdConfigSize {
		return inputErrorf(content[:64]+"...", AcceptedBuildkitdConfig, "%d bytes long", len(content))
	}
	var document map[string]any
	if err := toml.Unmarshal([]byte(content), &document); err != nil {
		excerpt := content
		if len(excerpt) > 64 {
			excerpt = excerpt[:64] + "..."
		}
		return inputErrorf(excerpt, AcceptedBuildkitdConfig, "not valid TOML: %w", err)
	}
	return nil
}

// AcceptedImage describes what the image input accepts.
const AcceptedImage = "a container image reference, e.g. docker.io/moby/buildkit:v0.34.2 or registry.example/buildkit@sha256:..."

func validateImage(image string) error {
	if _, err := reference.ParseNormalizedNamed(image); err != nil {
		return inputErrorf(image, AcceptedImage, "%w", err)
	}
	return nil
}

// AcceptedDuration describes what duration inputs accept (with a per-input range appended).
const AcceptedDuration = "a Go duration such as 90s, 2m or 6h, or a whole number of seconds"

// ParseDuration reads a duration input: a Go duration ("2m30s") or bare seconds ("150").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if seconds, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(seconds) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, inputErrorf(s, AcceptedDuration, "not a duration")
	}
	return d, nil
}

// AcceptedBool describes what ParseBool reads: the YAML 1.2 core schema's booleans, the set the
// GitHub Actions toolkit's getBooleanInput accepts.
const AcceptedBool = "true, True, TRUE, false, False or FALSE"

// ParseBool reads a yes/no input, or def when it is empty (blank). It is the one boolean parser:
// every boolean input, flag and setting goes through it, so all accept the same words.
func ParseBool(s string, def bool) (bool, error) {
	switch strings.TrimSpace(s) {
	case "":
		return def, nil
	case "true", "True", "TRUE":
		return true, nil
	case "false", "False", "FALSE":
		return false, nil
	}
	return false, inputErrorf(s, AcceptedBool, "not a boolean")
}
