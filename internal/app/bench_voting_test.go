package app

import (
	"encoding/json"
	"fmt"
	"strings"
)

// votingServices are the voting example's bake targets (examples/voting/docker-bake.hcl).
var votingServices = []string{"vote", "worker", "result"}

// serviceCache derives one service's registry cache value from the one the job exported for its
// platform (BUILDKIT_CACHE_FROM_/_TO_<ARCH>): the ref's tag gets "-<service>". The product
// exports one tag per platform, which holds one image's cache; three services exporting to it
// would overwrite each other, so a multi-service project gives each its own tag.
func serviceCache(exported, service string) (string, error) {
	fields := strings.Split(exported, ",")
	for i, f := range fields {
		if ref, ok := strings.CutPrefix(f, "ref="); ok {
			if !strings.Contains(ref[strings.LastIndexByte(ref, '/')+1:], ":") {
				return "", fmt.Errorf("cache value %q: its ref has no tag", exported)
			}
			fields[i] = f + "-" + service
			return strings.Join(fields, ","), nil
		}
	}
	return "", fmt.Errorf("cache value %q has no ref=", exported)
}

// bakeTarget is what the bench overrides in one of the example's targets.
type bakeTarget struct {
	Platforms []string `json:"platforms"`
	CacheFrom []string `json:"cache-from,omitempty"`
	CacheTo   []string `json:"cache-to,omitempty"`
}

// votingOverride is a bake file (JSON) that, given after the example's docker-bake.hcl, builds
// every service for platform alone with the cache values cache returns for it (nil: none).
func votingOverride(platform string, cache func(service string) (from, to []string)) ([]byte, error) {
	targets := map[string]bakeTarget{}
	for _, s := range votingServices {
		from, to := cache(s)
		targets[s] = bakeTarget{Platforms: []string{platform}, CacheFrom: from, CacheTo: to}
	}
	return json.MarshalIndent(map[string]any{"target": targets}, "", "  ")
}

// verdict says whether a ratio meets a target, for the table's notes: "met (target >= 3x)" or
// "MISSED (target >= 3x)". atLeast: the ratio must reach target; otherwise stay within it.
func verdict(ratio, target float64, atLeast bool) string {
	op := "<="
	ok := ratio <= target
	if atLeast {
		op, ok = ">=", ratio >= target
	}
	word := "MISSED"
	if ok {
		word = "met"
	}
	return fmt.Sprintf("%s (target %s %gx)", word, op, target)
}
