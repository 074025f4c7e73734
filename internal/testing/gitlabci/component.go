// Package gitlabci is test tooling, not part of the product: what the tests use to run the
// GitLab CI/CD component in templates/ as GitLab would: it reads the component's spec header,
// interpolates $[[ inputs.NAME ]] the way GitLab does when a pipeline includes the component,
// parses the hidden job, and renders the shell scripts GitLab Runner's Kubernetes executor would
// run for a job that extends it. It is pure: it reads the component file and returns text;
// running the scripts is the caller's part.
//
// Only what templates/buildkit.yml uses is modelled (string, boolean and number inputs with
// defaults; a job's variables, before_script and after_script); anything else is an error
// rather than silently ignored.
package gitlabci

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Input is one entry of the component's spec:inputs.
type Input struct {
	Description string `json:"description"`
	// Default is the value used when the including pipeline gives none; nil means the input is
	// required.
	Default any `json:"default"`
	// Type is "", "string", "boolean", "number" or "array".
	Type string `json:"type"`
}

// Component is a CI/CD component file: its spec header and the configuration after "---".
type Component struct {
	Inputs map[string]Input
	// Body is the configuration, before interpolation.
	Body string
}

// Load reads a component file, such as templates/buildkit.yml.
func Load(path string) (Component, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Component{}, fmt.Errorf("reading the component: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Component{}, fmt.Errorf("component %s: %w", path, err)
	}
	return c, nil
}

// Parse splits a component into its spec header and its configuration (on the first line that
// is only "---") and reads the header's inputs. Unknown keys in the header are an error.
func Parse(data []byte) (Component, error) {
	header, body, ok := strings.Cut(string(data), "\n---\n")
	if !ok {
		return Component{}, errors.New("no --- line between the spec header and the configuration")
	}
	var spec struct {
		Spec struct {
			Inputs map[string]Input `json:"inputs"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict([]byte(header), &spec); err != nil {
		return Component{}, fmt.Errorf("spec header: %w", err)
	}
	return Component{Inputs: spec.Spec.Inputs, Body: body}, nil
}

// InputNames returns the names of the declared inputs, sorted.
func (c Component) InputNames() []string {
	return slices.Sorted(maps.Keys(c.Inputs))
}

// Defaults returns every input that has a default, as the text interpolation inserts.
func (c Component) Defaults() map[string]string {
	out := map[string]string{}
	for name, in := range c.Inputs {
		if in.Default != nil {
			out[name] = fmt.Sprint(in.Default)
		}
	}
	return out
}

// interpolationBlock is any $[[ ... ]]; inputReference is the only content supported inside.
var (
	interpolationBlock = regexp.MustCompile(`\$\[\[(.*?)\]\]`)
	inputReference     = regexp.MustCompile(`^\s*inputs\.([A-Za-z0-9_-]+)\s*$`)
)

// References returns the input names the configuration refers to as $[[ inputs.NAME ]], sorted
// and without repetition, declared or not.
func (c Component) References() []string {
	var names []string
	for _, m := range interpolationBlock.FindAllStringSubmatch(c.Body, -1) {
		if ref := inputReference.FindStringSubmatch(m[1]); ref != nil && !slices.Contains(names, ref[1]) {
			names = append(names, ref[1])
		}
	}
	slices.Sort(names)
	return names
}

// InputError is an interpolation error about one input.
type InputError struct {
	Name string
	Err  error
}

func (e *InputError) Error() string { return fmt.Sprintf("input %q: %v", e.Name, e.Err) }
func (e *InputError) Unwrap() error { return e.Err }

// Errors InputError wraps.
var (
	ErrUnknownInput  = errors.New("unknown input: not declared in spec:inputs")
	ErrMissingInput  = errors.New("required input not given and without default")
	ErrInputType     = errors.New("value does not match the input's type")
	ErrInterpolation = errors.New("unsupported interpolation")
)

// Interpolate replaces every $[[ inputs.NAME ]] with values[NAME] or the input's default, as
// GitLab does when it includes the component. As in GitLab, it is an error to give a value for
// an input the spec does not declare, to refer to one it does not declare, to leave out a
// required input, or to give a boolean or number input a value of another type. Interpolation
// functions ($[[ inputs.x | expand_vars ]]) are not supported.
func (c Component) Interpolate(values map[string]string) (string, error) {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(values)) {
		if _, ok := c.Inputs[name]; !ok {
			errs = append(errs, &InputError{Name: name, Err: ErrUnknownInput})
			continue
		}
		if err := checkType(c.Inputs[name].Type, values[name]); err != nil {
			errs = append(errs, &InputError{Name: name, Err: err})
		}
	}
	out := interpolationBlock.ReplaceAllStringFunc(c.Body, func(block string) string {
		ref := inputReference.FindStringSubmatch(interpolationBlock.FindStringSubmatch(block)[1])
		if ref == nil {
			errs = append(errs, fmt.Errorf("%w: %s", ErrInterpolation, block))
			return block
		}
		name := ref[1]
		in, ok := c.Inputs[name]
		if !ok {
			errs = append(errs, &InputError{Name: name, Err: ErrUnknownInput})
			return block
		}
		if v, ok := values[name]; ok {
			return v
		}
		if in.Default == nil {
			errs = append(errs, &InputError{Name: name, Err: ErrMissingInput})
			return block
		}
		return fmt.Sprint(in.Default)
	})
	if err := errors.Join(errs...); err != nil {
		return "", fmt.Errorf("interpolating the component: %w", err)
	}
	return out, nil
}

func checkType(typ, value string) error {
	switch typ {
	case "boolean":
		if value != "true" && value != "false" {
			return fmt.Errorf("%w: %q is not true or false", ErrInputType, value)
		}
	case "number":
		if _, err := strconv.ParseFloat(value, 64); err != nil {
			return fmt.Errorf("%w: %q is not a number", ErrInputType, value)
		}
	}
	return nil
}

// Job is the part of a job's configuration the component defines.
type Job struct {
	// Image is the job's image (the component's CI job image, pinned per release).
	Image        string            `json:"image"`
	Variables    map[string]string `json:"variables"`
	BeforeScript []string          `json:"before_script"`
	AfterScript  []string          `json:"after_script"`
}

// Job interpolates the configuration with values and returns the job called name (such as the
// hidden job ".ephemeral-buildkit"). Keys of a job that Job does not model are an error.
func (c Component) Job(name string, values map[string]string) (Job, error) {
	body, err := c.Interpolate(values)
	if err != nil {
		return Job{}, err
	}
	var config map[string]Job
	if err := yaml.UnmarshalStrict([]byte(body), &config); err != nil {
		return Job{}, fmt.Errorf("reading the component's configuration: %w", err)
	}
	job, ok := config[name]
	if !ok {
		return Job{}, fmt.Errorf("the component defines no job %q (it has %s)", name, strings.Join(slices.Sorted(maps.Keys(config)), ", "))
	}
	return job, nil
}
