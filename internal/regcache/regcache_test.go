package regcache

import (
	"errors"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

func TestParseRef(t *testing.T) {
	for _, ok := range []string{"", "registry.example.com/org/app/cache", "10.213.0.1:5000/voting/cache", "localhost/cache", "ghcr.io/o/a-b__c.d"} {
		if got, err := ParseRef(ok); err != nil || got != ok {
			t.Errorf("ParseRef(%q) = %q, %v; want it accepted unchanged", ok, got, err)
		}
	}
	for in, why := range map[string]string{
		"https://registry.example.com/app": "not a URL",
		"registry.example.com/app:latest":  "has a tag",
		"registry.example.com/app@sha256:0123456789012345678901234567890123456789012345678901234567890123": "has a digest",
		"org/app":                   "not a registry host",
		"registry.example.com/-app": "not a repository name",
		"registry.example.com/a//b": "not a repository name",
		"registry.example.com":      "not a repository name",
	} {
		_, err := ParseRef(in)
		var ie *k8sprov.InputError
		if !errors.As(err, &ie) || ie.Input != InputCacheRef || ie.Value != in || ie.Accepted != AcceptedRef || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseRef(%q) = %v; want an input error naming cache-ref, the value and %q", in, err, why)
		}
	}
}

func TestParseRefLowerCases(t *testing.T) {
	if got, err := ParseRef("ghcr.io/Org/App/cache"); err != nil || got != "ghcr.io/org/app/cache" {
		t.Errorf("ParseRef(ghcr.io/Org/App/cache) = %q, %v; want it lower-cased", got, err)
	}
}

func TestParseWrite(t *testing.T) {
	for in, want := range map[string]Write{"": WriteAuto, "auto": WriteAuto, "true": WriteTrue, "FALSE": WriteFalse} {
		if got, err := ParseWrite(in); err != nil || got != want {
			t.Errorf("ParseWrite(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"yes", "Auto", "max"} {
		var ie *k8sprov.InputError
		if _, err := ParseWrite(in); !errors.As(err, &ie) || ie.Input != InputCacheWrite || ie.Value != in {
			t.Errorf("ParseWrite(%q) = %v; want an input error naming cache-write and the value", in, err)
		}
	}
}

func TestPlanOneReferencePerPlatform(t *testing.T) {
	platforms := []platform.Platform{platform.MustParse("linux/amd64"), platform.MustParse("linux/arm/v7")}
	read := Plan("reg.example/app/cache", platforms, false)
	if len(read) != 2 || read[0].Ref != "reg.example/app/cache:cache-amd64" || read[1].Ref != "reg.example/app/cache:cache-arm-v7" {
		t.Fatalf("Plan refs = %+v", read)
	}
	for _, c := range read {
		if c.CacheFrom != "type=registry,ref="+c.Ref || c.CacheTo != "" {
			t.Errorf("read-only cache %+v: want cache-from of its ref and no cache-to", c)
		}
	}
	written := Plan("reg.example/app/cache", platforms, true)
	if want := "type=registry,ref=reg.example/app/cache:cache-amd64,mode=max,oci-mediatypes=true,image-manifest=true"; written[0].CacheTo != want {
		t.Errorf("cache-to = %q, want %q", written[0].CacheTo, want)
	}
	if Plan("", platforms, true) != nil {
		t.Error("Plan without a repository returned caches")
	}
}

func TestDecide(t *testing.T) {
	for _, c := range []struct {
		w       Write
		trusted bool
		want    bool
	}{
		{WriteAuto, true, true}, {WriteAuto, false, false}, {WriteTrue, false, true}, {WriteFalse, true, false},
	} {
		got, why := Decide(c.w, c.trusted, "a pull request")
		if got != c.want || why == "" {
			t.Errorf("Decide(%q, %v) = %v, %q; want %v with a reason", c.w, c.trusted, got, why, c.want)
		}
	}
}
