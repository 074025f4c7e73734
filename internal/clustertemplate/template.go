package clustertemplate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	sjson "sigs.k8s.io/json"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// The template's identity, and where it is kept.
const (
	// APIVersion is the one schema version this program reads.
	APIVersion = "setup-ephemeral-buildkit.io/v1alpha1"
	Kind       = "ClusterTemplate"
	// DefaultName is the ConfigMap the template input names by default, in the runner namespace.
	DefaultName = "setup-ephemeral-buildkit"
	// DataKey is the ConfigMap key that holds the template.
	DataKey = "template.yaml"
)

// Modes of the builders.
const (
	ModeRootful  = "rootful"
	ModeRootless = "rootless"
	// ModeUserNamespaces (hostUsers: false) is part of the schema so that a template asking for
	// it is refused with a reason rather than an unknown value.
	ModeUserNamespaces = "user-namespaces"
)

// AllPlatforms is the platforms key that applies to every platform.
const AllPlatforms = k8sprov.AllPlatforms

// GovernedInputs are the job inputs a template can keep to itself: a job may set one only if the
// template's jobInputs lists it (or has no jobInputs at all). Other inputs (platforms, owner-pod,
// namespace, labels, annotations, timeout, name, ...) stay the job's.
var GovernedInputs = []string{
	k8sprov.InputImage, k8sprov.InputRequests, k8sprov.InputLimits, k8sprov.InputNodeSelector,
	k8sprov.InputTolerations, k8sprov.InputBuildkitdFlags, k8sprov.InputBuildkitdConfig,
	k8sprov.InputRootless, k8sprov.InputMaxLifetime, k8sprov.InputTerminationGracePeriod,
	k8sprov.InputCache, k8sprov.InputCacheKey, k8sprov.InputCacheSize, k8sprov.InputCacheStorageClass,
	k8sprov.InputCacheMaxSlots,
}

// Template is a parsed and checked cluster template. Build it with Parse.
type Template struct {
	// Source names the template in errors: namespace/name of its ConfigMap, or a file's path.
	Source string

	Image           string
	ImagePullPolicy corev1.PullPolicy
	// AllowedImages are more images a job may choose (exact, or a prefix ending in '*').
	AllowedImages []string
	Mode          string
	Debug         bool
	// Env is buildkitd's OpenTelemetry environment.
	Env             []corev1.EnvVar
	BuildkitdFlags  []string
	BuildkitdConfig string
	// DefaultResources are the builders' requests and limits where a job sets none.
	DefaultResources corev1.ResourceRequirements
	// MaximumResources bound every builder's requests and limits.
	MaximumResources       corev1.ResourceList
	MaxLifetime            Bounds
	TerminationGracePeriod Bounds
	NodeSelectors          []k8sprov.NodeSelectorRule
	Tolerations            []k8sprov.TolerationRule
	Scheduling             []k8sprov.PlatformScheduling
	Cache                  Cache
	// JobInputs are the governed inputs jobs may set; nil means all of them.
	JobInputs []string
}

// Cache are the template's cache volume settings; zero values mean the product's.
type Cache struct {
	// Mode is the cache input's default (off or volume); empty: off.
	Mode         k8sprov.CacheMode
	StorageClass string
	// DefaultSize and MaximumSize bound cache-size; zero: the product's (10Gi; 500Gi).
	DefaultSize, MaximumSize resource.Quantity
	// MaxSlots is cache-max-slots' default and maximum; zero: the product's default, 4, and
	// its maximum.
	MaxSlots int
}

// Bounds are a duration's default and maximum; zero means the product's.
type Bounds struct {
	Default, Maximum time.Duration
}

// document is the YAML schema. Kubernetes' own types are read through kube, which decodes them
// as the API server does (JSON field names, strict).
type document struct {
	APIVersion             string                      `yaml:"apiVersion"`
	Kind                   string                      `yaml:"kind"`
	Image                  string                      `yaml:"image"`
	ImagePullPolicy        string                      `yaml:"imagePullPolicy"`
	AllowedImages          []string                    `yaml:"allowedImages"`
	Mode                   string                      `yaml:"mode"`
	Debug                  bool                        `yaml:"debug"`
	OpenTelemetry          *openTelemetry              `yaml:"openTelemetry"`
	BuildkitdFlags         []string                    `yaml:"buildkitdFlags"`
	BuildkitdConfig        string                      `yaml:"buildkitdConfig"`
	Resources              resources                   `yaml:"resources"`
	MaxLifetime            bounds                      `yaml:"maxLifetime"`
	TerminationGracePeriod bounds                      `yaml:"terminationGracePeriod"`
	Platforms              map[string]platformSettings `yaml:"platforms"`
	Cache                  cacheDoc                    `yaml:"cache"`
	JobInputs              *[]string                   `yaml:"jobInputs"`
}

type cacheDoc struct {
	Mode         string `yaml:"mode"`
	StorageClass string `yaml:"storageClass"`
	Size         struct {
		Default string `yaml:"default"`
		Maximum string `yaml:"maximum"`
	} `yaml:"size"`
	MaxSlots int `yaml:"maxSlots"`
}

type openTelemetry struct {
	Endpoint string `yaml:"endpoint"`
	Protocol string `yaml:"protocol"`
}

type resources struct {
	Default struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"default"`
	Maximum map[string]string `yaml:"maximum"`
}

type bounds struct {
	Default string `yaml:"default"`
	Maximum string `yaml:"maximum"`
}

type platformSettings struct {
	NodeSelector              map[string]string                       `yaml:"nodeSelector"`
	Tolerations               kube[[]corev1.Toleration]               `yaml:"tolerations"`
	Affinity                  kube[*corev1.Affinity]                  `yaml:"affinity"`
	PriorityClassName         string                                  `yaml:"priorityClassName"`
	TopologySpreadConstraints kube[[]corev1.TopologySpreadConstraint] `yaml:"topologySpreadConstraints"`
}

// kube decodes a Kubernetes type the way the API server reads it: JSON field names, unknown and
// duplicate fields refused.
type kube[T any] struct{ Value T }

func (k *kube[T]) UnmarshalYAML(node *yaml.Node) error {
	var raw any
	if err := node.Decode(&raw); err != nil {
		return err
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return &lineError{line: node.Line, err: err}
	}
	strict, err := sjson.UnmarshalStrict(data, &k.Value, sjson.DisallowDuplicateFields, sjson.DisallowUnknownFields)
	if err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			err = fmt.Errorf("%s: a %s where %s belongs", typeErr.Field, typeErr.Value, typeErr.Type)
		}
		return &lineError{line: node.Line, err: err}
	}
	if len(strict) > 0 {
		return &lineError{line: lineOfStrictError(node, strict[0]), err: strict[0]}
	}
	return nil
}

// lineError is a problem at a line of the template.
type lineError struct {
	line int
	err  error
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %v", e.line, e.err) }

// strictPath pulls the field path out of sigs.k8s.io/json's strict errors (unknown field "a.b[0].c").
var strictPath = regexp.MustCompile(`"([^"]*)"`)

// lineOfStrictError finds the line of the field a strict decoding error names under node.
func lineOfStrictError(node *yaml.Node, err error) int {
	m := strictPath.FindStringSubmatch(err.Error())
	if m == nil {
		return node.Line
	}
	line := node.Line
	for _, part := range splitPath(m[1]) {
		next := childOf(node, part)
		if next == nil {
			break
		}
		node, line = next, next.Line
	}
	return line
}

// splitPath splits "a.b[0].c" into a, b, [0], c.
func splitPath(path string) []string {
	var parts []string
	for _, dotted := range strings.Split(path, ".") {
		for dotted != "" {
			i := strings.Index(dotted[1:], "[")
			if i < 0 {
				parts = append(parts, dotted)
				break
			}
			parts = append(parts, dotted[:i+1])
			dotted = dotted[i+1:]
		}
	}
	return parts
}

// childOf returns the key node of a mapping's key, or a sequence's element for "[i]".
func childOf(node *yaml.Node, part string) *yaml.Node {
	if node.Kind == yaml.DocumentNode && len(node.Content) > 0 {
		node = node.Content[0]
	}
	if strings.HasPrefix(part, "[") && strings.HasSuffix(part, "]") {
		i, err := strconv.Atoi(part[1 : len(part)-1])
		if node.Kind != yaml.SequenceNode || err != nil || i < 0 || i >= len(node.Content) {
			return nil
		}
		return node.Content[i]
	}
	if node.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		if node.Content[i].Value == part {
			// The value, whose line is the key's for scalars and the first entry's otherwise;
			// keep the key's line for the report by returning a copy that carries it.
			value := *node.Content[i+1]
			value.Line = node.Content[i].Line
			return &value
		}
	}
	return nil
}

// Error is a template that cannot be read or used, with where in the file.
type Error struct {
	// Source is the template's ConfigMap (namespace/name) or file.
	Source string
	// Line is the line in the template document, 0 when unknown.
	Line int
	// Field is the field path, e.g. platforms.linux/arm64.tolerations, empty when unknown.
	Field string
	Err   error
}

func (e *Error) Error() string {
	where := "cluster template " + e.Source
	if e.Source == "" {
		where = "cluster template"
	}
	switch {
	case e.Line > 0 && e.Field != "":
		where += fmt.Sprintf(", line %d (%s)", e.Line, e.Field)
	case e.Line > 0:
		where += fmt.Sprintf(", line %d", e.Line)
	case e.Field != "":
		where += " (" + e.Field + ")"
	}
	return where + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Parse reads a template document strictly and checks it; source names it in errors (the
// ConfigMap's namespace/name, or a file). Every problem is reported at once, each an *Error with
// its line and field.
func Parse(data []byte, source string) (*Template, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(source, err)
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &Error{Source: source, Err: fmt.Errorf("empty; a template starts with apiVersion: %s", APIVersion)}
	}
	// More than one document would be silently half-read.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var first yaml.Node
	_ = dec.Decode(&first)
	var second yaml.Node
	if err := dec.Decode(&second); !errors.Is(err, io.EOF) {
		return nil, &Error{Source: source, Line: second.Line, Err: errors.New("more than one YAML document; a template is one")}
	}

	p := &parser{source: source, root: &root}
	var versionCheck struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
	}
	if err := root.Decode(&versionCheck); err != nil {
		return nil, yamlError(source, err)
	}
	if versionCheck.APIVersion != APIVersion {
		return nil, p.errorAt("apiVersion", fmt.Errorf("apiVersion %q, want %s (the schema this version of setup-ephemeral-buildkit reads)", versionCheck.APIVersion, APIVersion))
	}
	if versionCheck.Kind != Kind {
		return nil, p.errorAt("kind", fmt.Errorf("kind %q, want %s", versionCheck.Kind, Kind))
	}

	var doc document
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(&doc); err != nil {
		var le *lineError
		if errors.As(err, &le) {
			return nil, &Error{Source: source, Line: le.line, Err: le.err}
		}
		return nil, yamlError(source, err)
	}
	t := p.build(doc)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return t, nil
}

// goTypeName is how yaml.v3 names our Go types in its messages; users never see those names.
var goTypeName = regexp.MustCompile(` in type [\w.\[\]*]+`)

// leadingLine is the "line N: " yaml.v3 starts its messages with.
var leadingLine = regexp.MustCompile(`^line (\d+): `)

// yamlError turns a yaml.v3 error into an *Error with its line, in the user's words.
func yamlError(source string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = goTypeName.ReplaceAllString(msg, "")
	msg = strings.ReplaceAll(msg, " not found", " is not part of the schema "+APIVersion)
	line := 0
	if m := leadingLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	return &Error{Source: source, Line: line, Err: errors.New(msg)}
}

type parser struct {
	source string
	root   *yaml.Node
	errs   []error
}

// lineOf finds the line of a field path such as platforms.linux/arm64.nodeSelector.
func (p *parser) lineOf(field string) int {
	node := p.root
	line := 0
	for _, part := range strings.Split(field, "\x00") {
		next := childOf(node, part)
		if next == nil {
			break
		}
		node, line = next, next.Line
	}
	return line
}

// errorAt returns an *Error for the field given as its path parts.
func (p *parser) errorAt(field string, err error, more ...string) *Error {
	parts := append([]string{field}, more...)
	return &Error{Source: p.source, Line: p.lineOf(strings.Join(parts, "\x00")), Field: strings.Join(parts, "."), Err: err}
}

func (p *parser) add(err error, field string, more ...string) {
	if err != nil {
		p.errs = append(p.errs, p.errorAt(field, err, more...))
	}
}

var acceptedModes = []string{ModeRootful, ModeRootless}

func (p *parser) build(doc document) *Template {
	t := &Template{
		Source:          p.source,
		Image:           strings.TrimSpace(doc.Image),
		ImagePullPolicy: corev1.PullPolicy(doc.ImagePullPolicy),
		AllowedImages:   doc.AllowedImages,
		Mode:            doc.Mode,
		Debug:           doc.Debug,
		BuildkitdFlags:  doc.BuildkitdFlags,
		BuildkitdConfig: doc.BuildkitdConfig,
	}
	switch t.Mode {
	case "":
		t.Mode = ModeRootful
	case ModeRootful, ModeRootless:
	case ModeUserNamespaces:
		p.add(errors.New("mode user-namespaces (hostUsers: false) is not supported by this version: its builders have not been proven to run; use rootful or rootless"), "mode")
	default:
		p.add(fmt.Errorf("mode %q, want one of %s", t.Mode, strings.Join(acceptedModes, ", ")), "mode")
	}
	if t.Image != "" {
		p.add(k8sprov.ValidateImage(t.Image), "image")
	}
	if t.ImagePullPolicy != "" {
		p.add(k8sprov.PodSettings{ImagePullPolicy: t.ImagePullPolicy}.Validate(), "imagePullPolicy")
	}
	for i, image := range t.AllowedImages {
		pattern := strings.TrimSuffix(image, "*")
		if pattern == "" || strings.Contains(pattern, "*") {
			p.add(fmt.Errorf("%q: an image reference, or a prefix ending in a single '*'", image), "allowedImages", fmt.Sprintf("[%d]", i))
		} else if !strings.HasSuffix(image, "*") {
			p.add(k8sprov.ValidateImage(image), "allowedImages", fmt.Sprintf("[%d]", i))
		}
	}
	t.Env = p.openTelemetry(doc.OpenTelemetry)
	if len(t.BuildkitdFlags) > 0 {
		_, err := k8sprov.ParseBuildkitdFlags(shellJoin(t.BuildkitdFlags))
		p.add(err, "buildkitdFlags")
	}
	if t.BuildkitdConfig != "" {
		p.add(k8sprov.ValidateBuildkitdConfig(t.BuildkitdConfig), "buildkitdConfig")
		_, err := k8sprov.BundleBuildkitdConfig(t.BuildkitdConfig, "", func(path string) ([]byte, error) {
			return nil, fmt.Errorf("%s: a template's buildkitd.toml cannot name files (a job's buildkitd-config can)", path)
		})
		p.add(err, "buildkitdConfig")
	}

	p.resources(t, doc.Resources)
	t.Cache = p.cache(doc.Cache)
	t.MaxLifetime = p.bounds(doc.MaxLifetime, "maxLifetime")
	t.TerminationGracePeriod = p.bounds(doc.TerminationGracePeriod, "terminationGracePeriod")

	p.platforms(t, doc.Platforms)
	if doc.JobInputs != nil {
		t.JobInputs = []string{}
		for i, name := range *doc.JobInputs {
			if !slices.Contains(GovernedInputs, name) {
				p.add(fmt.Errorf("%q is not an input a template governs; those are %s (the others are always the job's)", name, strings.Join(GovernedInputs, ", ")), "jobInputs", fmt.Sprintf("[%d]", i))
			}
			t.JobInputs = append(t.JobInputs, name)
		}
	}
	return t
}

// openTelemetry checks the template's OpenTelemetry section and returns the environment it gives
// buildkitd.
func (p *parser) openTelemetry(otel *openTelemetry) []corev1.EnvVar {
	if otel == nil {
		return nil
	}
	var env []corev1.EnvVar
	if otel.Endpoint == "" {
		p.add(errors.New("no endpoint (e.g. http://otel-collector.observability:4317)"), "openTelemetry", "endpoint")
	} else if !strings.HasPrefix(otel.Endpoint, "http://") && !strings.HasPrefix(otel.Endpoint, "https://") {
		p.add(fmt.Errorf("endpoint %q: a URL starting with http:// or https://", otel.Endpoint), "openTelemetry", "endpoint")
	}
	env = append(env, corev1.EnvVar{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: otel.Endpoint})
	switch otel.Protocol {
	case "":
	case "grpc", "http/protobuf", "http/json":
		env = append(env, corev1.EnvVar{Name: "OTEL_EXPORTER_OTLP_PROTOCOL", Value: otel.Protocol})
	default:
		p.add(fmt.Errorf("protocol %q, want grpc, http/protobuf or http/json", otel.Protocol), "openTelemetry", "protocol")
	}
	return env
}

// resources reads the template's default and maximum resources into t; a default above the
// maximum is refused.
func (p *parser) resources(t *Template, r resources) {
	var err error
	t.DefaultResources.Requests, err = resourceList(r.Default.Requests)
	p.add(err, "resources", "default", "requests")
	t.DefaultResources.Limits, err = resourceList(r.Default.Limits)
	p.add(err, "resources", "default", "limits")
	t.MaximumResources, err = resourceList(r.Maximum)
	p.add(err, "resources", "maximum")
	for _, which := range []struct {
		field string
		list  corev1.ResourceList
	}{{"requests", t.DefaultResources.Requests}, {"limits", t.DefaultResources.Limits}} {
		for _, name := range slices.Sorted(maps.Keys(which.list)) {
			q := which.list[name]
			if max, ok := t.MaximumResources[name]; ok && q.Cmp(max) > 0 {
				p.add(fmt.Errorf("%s=%s is above the maximum %s", name, q.String(), max.String()), "resources", "default", which.field)
			}
		}
	}
}

// platforms reads the template's per-platform scheduling into t: node selectors, tolerations,
// affinity, priority class and topology spread, each checked as a job's input would be.
func (p *parser) platforms(t *Template, platforms map[string]platformSettings) {
	for _, key := range slices.Sorted(maps.Keys(platforms)) {
		settings := platforms[key]
		var scope platform.Platform
		if key != AllPlatforms {
			pl, err := platform.Parse(key)
			if err != nil || pl.String() != key {
				p.add(fmt.Errorf("%q: %s, written canonically, or * for every platform", key, platform.Accepted), "platforms", key)
				continue
			}
			scope = pl
		}
		if len(settings.NodeSelector) > 0 {
			rule := k8sprov.NodeSelectorRule{Platform: scope, Labels: settings.NodeSelector}
			_, err := k8sprov.ParseNodeSelectors(k8sprov.FormatNodeSelectors([]k8sprov.NodeSelectorRule{rule}))
			p.add(err, "platforms", key, "nodeSelector")
			t.NodeSelectors = append(t.NodeSelectors, rule)
		}
		if len(settings.Tolerations.Value) > 0 {
			rule := k8sprov.TolerationRule{Platform: scope, Tolerations: settings.Tolerations.Value}
			p.add(k8sprov.ValidateTolerations([]k8sprov.TolerationRule{rule}), "platforms", key, "tolerations")
			t.Tolerations = append(t.Tolerations, rule)
		}
		if settings.Affinity.Value != nil || settings.PriorityClassName != "" || settings.TopologySpreadConstraints.Value != nil {
			entry := k8sprov.PlatformScheduling{Platform: scope, Affinity: settings.Affinity.Value,
				PriorityClassName: settings.PriorityClassName, TopologySpreadConstraints: settings.TopologySpreadConstraints.Value}
			p.add(k8sprov.PodSettings{Scheduling: []k8sprov.PlatformScheduling{entry}}.Validate(), "platforms", key)
			t.Scheduling = append(t.Scheduling, entry)
		}
	}
}

func (p *parser) cache(doc cacheDoc) Cache {
	var c Cache
	if doc.Mode != "" {
		mode, err := k8sprov.ParseCacheMode(doc.Mode)
		if err != nil || string(mode) != doc.Mode {
			p.add(fmt.Errorf("%q, want %s", doc.Mode, k8sprov.AcceptedCache), "cache", "mode")
		}
		c.Mode = mode
	}
	c.StorageClass = doc.StorageClass
	p.add(k8sprov.ValidateStorageClass(doc.StorageClass), "cache", "storageClass")
	for _, q := range []struct {
		name string
		text string
		into *resource.Quantity
	}{{"default", doc.Size.Default, &c.DefaultSize}, {"maximum", doc.Size.Maximum, &c.MaximumSize}} {
		if q.text == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.text)
		if err == nil {
			if err = k8sprov.ValidateCacheSize(v); err != nil {
				err = fmt.Errorf("%s is %v: %s", q.text, err, k8sprov.AcceptedCacheSize)
			}
		} else {
			err = fmt.Errorf("%q is not a quantity: %s", q.text, k8sprov.AcceptedCacheSize)
		}
		p.add(err, "cache", "size", q.name)
		*q.into = v
	}
	if !c.DefaultSize.IsZero() && !c.MaximumSize.IsZero() && c.DefaultSize.Cmp(c.MaximumSize) > 0 {
		p.add(fmt.Errorf("default %s is above the maximum %s", c.DefaultSize.String(), c.MaximumSize.String()), "cache", "size", "default")
	}
	if doc.MaxSlots != 0 {
		if err := k8sprov.ValidateCacheMaxSlots(doc.MaxSlots); err != nil {
			p.add(fmt.Errorf("%d is %v: %s", doc.MaxSlots, err, k8sprov.AcceptedCacheMaxSlots), "cache", "maxSlots")
		}
	}
	c.MaxSlots = doc.MaxSlots
	return c
}

func (p *parser) bounds(b bounds, field string) Bounds {
	var out Bounds
	for _, d := range []struct {
		name string
		text string
		into *time.Duration
	}{{"default", b.Default, &out.Default}, {"maximum", b.Maximum, &out.Maximum}} {
		if d.text == "" {
			continue
		}
		v, err := k8sprov.ParseDuration(d.text)
		if err == nil && v <= 0 {
			err = errors.New("not positive")
		}
		p.add(err, field, d.name)
		*d.into = v
	}
	if out.Default > 0 && out.Maximum > 0 && out.Default > out.Maximum {
		p.add(fmt.Errorf("default %s is above the maximum %s", out.Default, out.Maximum), field, "default")
	}
	return out
}

func resourceList(m map[string]string) (corev1.ResourceList, error) {
	if len(m) == 0 {
		return nil, nil
	}
	entries := make([]string, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		entries = append(entries, name+"="+m[name])
	}
	return k8sprov.ParseResourceList(strings.Join(entries, ","))
}

// shellJoin quotes args so that ParseBuildkitdFlags splits them back into the same list.
func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'"'"'`) + "'"
	}
	return strings.Join(quoted, " ")
}

// ParseFile reads a template from a file: the template document itself, or a ConfigMap manifest
// (deploy/cluster-template.yaml) whose DataKey holds it. Errors name the file (and the key).
func ParseFile(data []byte, path string) (*Template, error) {
	var head struct {
		Kind string            `yaml:"kind"`
		Data map[string]string `yaml:"data"`
	}
	if yaml.Unmarshal(data, &head) == nil && head.Kind == "ConfigMap" {
		content, ok := head.Data[DataKey]
		if !ok {
			return nil, &Error{Source: path, Err: fmt.Errorf("a ConfigMap without the key %s", DataKey)}
		}
		return Parse([]byte(content), path+" ("+DataKey+")")
	}
	return Parse(data, path)
}
