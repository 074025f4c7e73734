package app

import (
	"encoding/json"
	"testing"
)

func TestServiceCacheGivesEachServiceItsOwnTag(t *testing.T) {
	got, err := serviceCache("type=registry,ref=10.0.0.1:5000/x/cache:cache-amd64,mode=max", "vote")
	if want := "type=registry,ref=10.0.0.1:5000/x/cache:cache-amd64-vote,mode=max"; err != nil || got != want {
		t.Errorf("serviceCache = %q, %v, want %q", got, err, want)
	}
	for _, bad := range []string{"type=registry", "type=registry,ref=10.0.0.1:5000/x/cache"} {
		if got, err := serviceCache(bad, "vote"); err == nil {
			t.Errorf("serviceCache(%q) = %q, want an error", bad, got)
		}
	}
}

func TestVotingOverrideSetsEveryService(t *testing.T) {
	data, err := votingOverride("linux/amd64", func(s string) ([]string, []string) {
		if s == "worker" {
			return []string{"from-worker"}, nil
		}
		return nil, []string{"to-" + s}
	})
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Target map[string]bakeTarget `json:"target"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Target) != 3 || f.Target["worker"].CacheFrom[0] != "from-worker" || f.Target["vote"].CacheTo[0] != "to-vote" ||
		f.Target["result"].Platforms[0] != "linux/amd64" || f.Target["worker"].CacheTo != nil {
		t.Errorf("override: %s", data)
	}
}

func TestVerdict(t *testing.T) {
	for _, tc := range []struct {
		ratio, target float64
		atLeast       bool
		want          string
	}{
		{3.5, 3, true, "met (target >= 3x)"},
		{2.9, 3, true, "MISSED (target >= 3x)"},
		{1.1, 1.2, false, "met (target <= 1.2x)"},
		{1.3, 1.2, false, "MISSED (target <= 1.2x)"},
	} {
		if got := verdict(tc.ratio, tc.target, tc.atLeast); got != tc.want {
			t.Errorf("verdict(%v, %v, %v) = %q, want %q", tc.ratio, tc.target, tc.atLeast, got, tc.want)
		}
	}
}
