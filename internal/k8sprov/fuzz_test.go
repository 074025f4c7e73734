package k8sprov

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The fuzz targets hold the parsers to two promises: they never panic, and whatever they accept
// formats into text they accept again as the same value (and that the options validator accepts
// too, so parsing and validation never disagree).

func FuzzParseResourceList(f *testing.F) {
	for _, seed := range []string{"cpu=500m,memory=1Gi", "cpu=2\nmemory=4Gi\nephemeral-storage=10G", "cpu=0.5", "memory=1e3",
		"cpu=1e-9", "cpu=0.0000000001", "memory=1Ei", "memory=9Ei", "cpu=-1", "gpu=1", "cpu=1,cpu=2", "cpu", "=", "cpu= 1 ", "memory=+1Ki",
		"cpu=123456789012345678901234567890", "memory=1.5Gi", "cpu=.5", "cpu=5.", "memory=0x10"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		list, err := ParseResourceList(input)
		if err != nil {
			return
		}
		formatted := FormatResourceList(list)
		again, err := ParseResourceList(formatted)
		if err != nil {
			t.Fatalf("ParseResourceList(%q) accepted, its formatted form %q is refused: %v", input, formatted, err)
		}
		if FormatResourceList(again) != formatted || len(again) != len(list) {
			t.Fatalf("round trip changed %q into %q", formatted, FormatResourceList(again))
		}
		for name, q := range list {
			if other := again[name]; q.Cmp(other) != 0 {
				t.Fatalf("round trip changed %s from %s to %s", name, q.String(), other.String())
			}
		}
		if err := validateResources(corev1.ResourceRequirements{Requests: list}); err != nil {
			t.Fatalf("parsed %q, validation refuses it: %v", input, err)
		}
	})
}

func FuzzParseNodeSelectors(f *testing.F) {
	for _, seed := range []string{"linux/arm64=pool=arm,disk=ssd", "*=team=ci;linux/amd64=pool=x86", "linux/arm/v7=kubernetes.io/arch=arm64\n*=a=",
		"linux/arm64=", "=a=b", "*=a", "linux/arm64=a=b;linux/aarch64=c=d", "*=example.com/k=v", "*= a = b ,c=d", ";;", "*=a=b,a=c"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		rules, err := ParseNodeSelectors(input)
		if err != nil {
			return
		}
		formatted := FormatNodeSelectors(rules)
		again, err := ParseNodeSelectors(formatted)
		if err != nil {
			t.Fatalf("ParseNodeSelectors(%q) accepted, its formatted form %q is refused: %v", input, formatted, err)
		}
		if !reflect.DeepEqual(rules, again) {
			t.Fatalf("round trip changed %#v into %#v", rules, again)
		}
		if err := validateRules(rules, nil); err != nil {
			t.Fatalf("parsed %q, validation refuses it: %v", input, err)
		}
	})
}

func FuzzParseTolerations(f *testing.F) {
	for _, seed := range []string{"linux/arm64=arch=arm64:NoSchedule", "*=dedicated:NoSchedule,spot=true:NoExecute:300", "*=a:NoExecute:0",
		"*=a:NoSchedule:5", "*=a=b:Bogus", "*=:NoSchedule", "*=a=b", "linux/arm64=a:NoExecute:-1", "*=a:NoExecute:+5", "*=a:NoExecute:007",
		"*=a:NoSchedule,a:NoSchedule", "*=a=:PreferNoSchedule", "*=example.com/gpu:NoSchedule\nlinux/amd64=x=y:NoExecute:99999999999"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		rules, err := ParseTolerations(input)
		if err != nil {
			return
		}
		formatted := FormatTolerations(rules)
		again, err := ParseTolerations(formatted)
		if err != nil {
			t.Fatalf("ParseTolerations(%q) accepted, its formatted form %q is refused: %v", input, formatted, err)
		}
		if !reflect.DeepEqual(rules, again) {
			t.Fatalf("round trip changed %#v into %#v", rules, again)
		}
		if err := validateRules(nil, rules); err != nil {
			t.Fatalf("parsed %q, validation refuses it: %v", input, err)
		}
	})
}

func FuzzParseLabels(f *testing.F) {
	for _, seed := range []string{"team=ci,cost=1", "a=\nb=c", "example.com/x=y", "app.kubernetes.io/name=x", "a=b,a=c", "a"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		labels, err := ParseLabels(input)
		if err != nil {
			return
		}
		again, err := ParseLabels(FormatKeyValues(labels))
		if err != nil || !reflect.DeepEqual(labels, again) {
			t.Fatalf("labels %v do not round-trip: %v, %v", labels, again, err)
		}
	})
}
