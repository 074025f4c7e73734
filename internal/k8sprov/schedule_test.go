package k8sprov

import (
	"maps"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

func TestNodeSelectorCanDropTheDefaultArchLabel(t *testing.T) {
	rules, err := ParseNodeSelectors("linux/arm64=kubernetes.io/arch-,pool=emulated")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{NodeSelectors: rules}
	got, _ := opts.ScheduleFor(platform.MustParse("linux/arm64"))
	want := map[string]string{"kubernetes.io/os": "linux", "pool": "emulated"}
	if !maps.Equal(got, want) {
		t.Fatalf("selector = %v, want %v", got, want)
	}
	amd, _ := opts.ScheduleFor(platform.MustParse("linux/amd64"))
	if amd["kubernetes.io/arch"] != "amd64" {
		t.Fatalf("a rule for arm64 must leave amd64's default alone: %v", amd)
	}
	if back := FormatNodeSelectors(rules); back != "linux/arm64=pool=emulated,kubernetes.io/arch-" {
		t.Fatalf("FormatNodeSelectors = %q", back)
	}
	for _, bad := range []string{"linux/arm64=pool-,pool=x", "linux/arm64=-", "linux/arm64=a/b/c-"} {
		if _, err := ParseNodeSelectors(bad); err == nil {
			t.Errorf("ParseNodeSelectors(%q) accepted", bad)
		}
	}
}

func TestSummarizeLogKeepsTheReasonBeforeHelpText(t *testing.T) {
	log := "Incorrect Usage: flag provided but not defined: -no-such-flag\nNAME:\n   buildkitd\n"
	for i := 0; i < 50; i++ {
		log += "   --some-flag  help text\n"
	}
	got := summarizeLog(log, 5)
	if !strings.HasPrefix(got, "Incorrect Usage: flag provided but not defined: -no-such-flag\n[...]\n") {
		t.Fatalf("summary lost the reason:\n%s", got)
	}
	if n := strings.Count(got, "\n"); n != 6 {
		t.Fatalf("summary has %d lines, want reason + marker + 5", n+1)
	}
	if short := summarizeLog("a\nb\n", 5); short != "a\nb" {
		t.Fatalf("short log = %q", short)
	}
}
