// Package platform parses and names the build platforms a job asks builders for
// ("linux/amd64", "linux/arm/v7"). It is strict on purpose: a builder is a Linux pod scheduled on
// nodes of one CPU architecture, so only platforms that such a pod can natively serve are
// accepted, spelled one canonical way, so that names, labels and buildx nodes derived from them
// never disagree.
package platform

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Platform is one build platform in canonical form: lower case, with containerd's normalisation
// applied (x86_64 is amd64, aarch64 is arm64, arm alone is arm/v7, arm64/v8 is arm64).
type Platform struct {
	OS           string
	Architecture string
	Variant      string
}

// supportedArchitectures lists the architectures Kubernetes nodes report in the kubernetes.io/arch
// label and BuildKit publishes images for, each with the variants accepted after normalisation
// ("" meaning none).
var supportedArchitectures = map[string][]string{
	"386":      {""},
	"amd64":    {"", "v2", "v3", "v4"},
	"arm":      {"v5", "v6", "v7"},
	"arm64":    {""},
	"loong64":  {""},
	"mips64le": {""},
	"ppc64le":  {""},
	"riscv64":  {""},
	"s390x":    {""},
}

// Accepted describes, for error messages, what Parse accepts.
const Accepted = "os/arch[/variant] with os linux and arch one of 386, amd64 (variants v2-v4), " +
	"arm (variants v5-v7), arm64, loong64, mips64le, ppc64le, riscv64, s390x; e.g. linux/amd64, linux/arm/v7"

// ErrUnsupported is wrapped by every error of Parse and ParseList about a platform builders
// cannot serve (as opposed to one that is not a platform at all).
var ErrUnsupported = errors.New("unsupported platform")

// Parse reads one platform such as "linux/arm64" or "linux/arm/v7". It rejects a bare
// architecture or OS ("arm64", "linux"): defaulting those silently to the runner's own platform
// would hide mistakes.
func Parse(s string) (Platform, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return Platform{}, errors.New("empty platform")
	}
	parts := strings.Split(text, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return Platform{}, fmt.Errorf("platform %q: want os/arch or os/arch/variant", text)
	}
	for _, part := range parts {
		if part == "" {
			return Platform{}, fmt.Errorf("platform %q: empty component", text)
		}
	}
	spec := ocispec.Platform{OS: strings.ToLower(parts[0]), Architecture: strings.ToLower(parts[1])}
	if len(parts) == 3 {
		spec.Variant = strings.ToLower(parts[2])
	}
	if spec.OS != "linux" {
		return Platform{}, fmt.Errorf("platform %q: OS %q: %w: builders run as Linux pods", text, parts[0], ErrUnsupported)
	}
	spec = platforms.Normalize(spec)
	variants, ok := supportedArchitectures[spec.Architecture]
	if !ok {
		return Platform{}, fmt.Errorf("platform %q: architecture %q: %w", text, parts[1], ErrUnsupported)
	}
	if !slices.Contains(variants, spec.Variant) {
		return Platform{}, fmt.Errorf("platform %q: variant %q of %s: %w", text, spec.Variant, spec.Architecture, ErrUnsupported)
	}
	return Platform{OS: spec.OS, Architecture: spec.Architecture, Variant: spec.Variant}, nil
}

// MustParse is Parse for constants in tests and defaults; it panics on an error.
func MustParse(s string) Platform {
	p, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return p
}

// ParseList reads a list of platforms separated by commas and/or newlines, as CI inputs give them
// ("linux/amd64,linux/arm64"). Empty entries are skipped, so a trailing comma or blank line is
// harmless. Two entries naming the same platform after normalisation ("linux/arm64" and
// "linux/aarch64") are an error: each platform gets exactly one builder.
func ParseList(s string) ([]Platform, error) {
	var list []Platform
	for _, field := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		if strings.TrimSpace(field) == "" {
			continue
		}
		p, err := Parse(field)
		if err != nil {
			return nil, &EntryError{Entry: strings.TrimSpace(field), Err: err}
		}
		if slices.Contains(list, p) {
			return nil, &EntryError{Entry: strings.TrimSpace(field), Err: fmt.Errorf("platform %q: listed twice (as %s)", strings.TrimSpace(field), p)}
		}
		list = append(list, p)
	}
	return list, nil
}

// EntryError is ParseList's error: which entry of the list was refused, and why.
type EntryError struct {
	Entry string
	Err   error
}

// Error returns the reason, which names the entry.
func (e *EntryError) Error() string { return e.Err.Error() }

// Unwrap returns the reason.
func (e *EntryError) Unwrap() error { return e.Err }

// FormatList joins platforms the way ParseList reads them.
func FormatList(list []Platform) string {
	names := make([]string, len(list))
	for i, p := range list {
		names[i] = p.String()
	}
	return strings.Join(names, ",")
}

// String returns the canonical form, "linux/arm64" or "linux/arm/v7".
func (p Platform) String() string {
	if p.Variant == "" {
		return p.OS + "/" + p.Architecture
	}
	return p.OS + "/" + p.Architecture + "/" + p.Variant
}

// IsZero reports whether p is the zero Platform (no platform).
func (p Platform) IsZero() bool { return p == Platform{} }

// Slug returns a short name usable in DNS labels, Kubernetes label values and buildx node names:
// the architecture, and the variant after a dash ("amd64", "arm-v7"). The OS is left out because
// it is always linux. Slugs of distinct accepted platforms are distinct.
func (p Platform) Slug() string {
	if p.Variant == "" {
		return p.Architecture
	}
	return p.Architecture + "-" + p.Variant
}

// OCI returns p as an OCI image-spec platform, as the BuildKit client reports workers' platforms.
func (p Platform) OCI() ocispec.Platform {
	return ocispec.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

// ServedBy reports whether a worker that reports the given platforms can build for p natively.
// Variants are compared with containerd's rules, so an arm/v7 request is served by a worker that
// reports arm/v7 and an amd64 request by one reporting amd64.
func (p Platform) ServedBy(workerPlatforms []ocispec.Platform) bool {
	want := platforms.Normalize(p.OCI())
	for _, have := range workerPlatforms {
		have = platforms.Normalize(have)
		if have.OS == want.OS && have.Architecture == want.Architecture && have.Variant == want.Variant {
			return true
		}
	}
	return false
}
