package platform_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

func TestParseAcceptsAndNormalises(t *testing.T) {
	for input, want := range map[string]string{
		"linux/amd64":    "linux/amd64",
		" linux/arm64 ":  "linux/arm64",
		"linux/arm/v7":   "linux/arm/v7",
		"linux/arm":      "linux/arm/v7",
		"linux/arm/6":    "linux/arm/v6",
		"linux/armhf":    "linux/arm/v7",
		"linux/aarch64":  "linux/arm64",
		"linux/arm64/v8": "linux/arm64",
		"linux/x86_64":   "linux/amd64",
		"linux/amd64/v1": "linux/amd64",
		"linux/amd64/v3": "linux/amd64/v3",
		"Linux/AMD64":    "linux/amd64",
		"linux/i386":     "linux/386",
		"linux/riscv64":  "linux/riscv64",
		"linux/s390x":    "linux/s390x",
		"linux/ppc64le":  "linux/ppc64le",
		"linux/loong64":  "linux/loong64",
		"linux/mips64le": "linux/mips64le",
	} {
		got, err := platform.Parse(input)
		if err != nil {
			t.Errorf("Parse(%q): %v", input, err)
			continue
		}
		if got.String() != want {
			t.Errorf("Parse(%q) = %s, want %s", input, got, want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for input, wantInMessage := range map[string]string{
		"":               "empty",
		"amd64":          "os/arch",
		"linux":          "os/arch",
		"linux/":         "empty component",
		"linux/amd64/":   "empty component",
		"linux/a/b/c":    "os/arch",
		"windows/amd64":  `OS "windows"`,
		"darwin/arm64":   `OS "darwin"`,
		"linux/sparc64":  `architecture "sparc64"`,
		"linux/arm64/v9": `variant "v9"`,
		"linux/arm/v8":   `variant "v8"`,
		"linux/amd64/v9": `variant "v9"`,
	} {
		_, err := platform.Parse(input)
		if err == nil {
			t.Errorf("Parse(%q) accepted", input)
			continue
		}
		if !strings.Contains(err.Error(), wantInMessage) {
			t.Errorf("Parse(%q) error %q does not mention %q", input, err, wantInMessage)
		}
	}
	if _, err := platform.Parse("windows/amd64"); !errors.Is(err, platform.ErrUnsupported) {
		t.Errorf("unsupported OS error does not wrap ErrUnsupported: %v", err)
	}
}

func TestParseList(t *testing.T) {
	got, err := platform.ParseList("linux/amd64, linux/arm64\nlinux/arm/v7,\n")
	if err != nil {
		t.Fatal(err)
	}
	if s := platform.FormatList(got); s != "linux/amd64,linux/arm64,linux/arm/v7" {
		t.Errorf("ParseList = %s", s)
	}
	if got, err := platform.ParseList(" \n"); err != nil || len(got) != 0 {
		t.Errorf("ParseList(blank) = %v, %v; want empty", got, err)
	}
	_, err = platform.ParseList("linux/arm64,linux/aarch64")
	if err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate after normalisation: err = %v", err)
	}
}

func TestSlugsAreDistinctAndDNSSafe(t *testing.T) {
	all := []string{"linux/386", "linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4", "linux/arm/v5",
		"linux/arm/v6", "linux/arm/v7", "linux/arm64", "linux/loong64", "linux/mips64le", "linux/ppc64le", "linux/riscv64", "linux/s390x"}
	var slugs []string
	for _, s := range all {
		slug := platform.MustParse(s).Slug()
		if slices.Contains(slugs, slug) {
			t.Errorf("slug %q of %s is not unique", slug, s)
		}
		for _, r := range slug {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				t.Errorf("slug %q of %s has %q", slug, s, r)
			}
		}
		slugs = append(slugs, slug)
	}
}

func TestServedBy(t *testing.T) {
	armv7 := platform.MustParse("linux/arm/v7")
	if !armv7.ServedBy([]ocispec.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm", Variant: "v7"}}) {
		t.Error("arm/v7 not served by a worker reporting it")
	}
	if armv7.ServedBy([]ocispec.Platform{{OS: "linux", Architecture: "arm", Variant: "v6"}}) {
		t.Error("arm/v7 served by a worker reporting arm/v6 only")
	}
	if !platform.MustParse("linux/arm64").ServedBy([]ocispec.Platform{{OS: "linux", Architecture: "arm64", Variant: "v8"}}) {
		t.Error("arm64 not served by a worker reporting arm64/v8")
	}
}

func FuzzParseList(f *testing.F) {
	for _, seed := range []string{"linux/amd64,linux/arm64", "linux/arm/v7", "linux/aarch64\nlinux/x86_64", "", ",,", "linux/arm/6",
		"windows/amd64", "linux/amd64,linux/amd64/v1", "LINUX/ARM64/V8", "linux//", "\u0130/amd64"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		list, err := platform.ParseList(input)
		if err != nil {
			return
		}
		formatted := platform.FormatList(list)
		again, err := platform.ParseList(formatted)
		if err != nil {
			t.Fatalf("ParseList(%q) accepted, but its formatted form %q is refused: %v", input, formatted, err)
		}
		if !slices.Equal(list, again) {
			t.Fatalf("round trip changed %v into %v", list, again)
		}
		for _, p := range list {
			if p.String() != strings.ToLower(p.String()) || p.OS != "linux" {
				t.Fatalf("non-canonical platform %#v accepted from %q", p, input)
			}
		}
	})
}
