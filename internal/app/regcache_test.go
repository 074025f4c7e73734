package app

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/regcache"
)

// TestMainExportsTheRegistryCache: with cache-ref, later steps get one cache per platform, and
// cache-write auto writes from a push to the default branch but not from a pull request.
func TestMainExportsTheRegistryCache(t *testing.T) {
	for _, c := range []struct {
		event, ref string
		write      string
		wantWrite  bool
	}{
		{"push", "refs/heads/main", "", true},
		{"pull_request", "refs/pull/3/merge", "", false},
		{"push", "refs/heads/feature", "", false},
		{"pull_request", "refs/pull/3/merge", "true", true},
		{"push", "refs/heads/main", "false", false},
	} {
		t.Run(c.event+"-"+c.ref+"-"+c.write, func(t *testing.T) {
			w, ctx := startedWorld(t)
			payload := filepath.Join(w.ghDir, "event.json")
			if err := os.WriteFile(payload, []byte(`{"repository":{"default_branch":"main"}}`), 0o600); err != nil {
				t.Fatal(err)
			}
			w.env["GITHUB_EVENT_NAME"], w.env["GITHUB_REF"], w.env["GITHUB_EVENT_PATH"] = c.event, c.ref, payload
			w.env["INPUT_CACHE-REF"] = "registry.example/org/app/cache"
			w.env["INPUT_CACHE-WRITE"] = c.write
			if err := Main(ctx, w.github(), w.deps()); err != nil {
				t.Fatalf("Main: %v\n%s", err, w.stdout.String())
			}
			outputs := readEnvFile(t, w.env[ci.EnvGitHubOutput])
			env := readEnvFile(t, w.env[ci.EnvGitHubEnv])
			amd, arm := "registry.example/org/app/cache:cache-amd64", "registry.example/org/app/cache:cache-arm64"
			if got, want := outputs[OutputCacheFrom], "type=registry,ref="+amd+"\ntype=registry,ref="+arm; got != want {
				t.Errorf("output cache-from = %q, want %q", got, want)
			}
			if env["BUILDKIT_CACHE_FROM_ARM64"] != "type=registry,ref="+arm {
				t.Errorf("BUILDKIT_CACHE_FROM_ARM64 = %q", env["BUILDKIT_CACHE_FROM_ARM64"])
			}
			to, set := env["BUILDKIT_CACHE_TO_AMD64"]
			if !set || (to != "") != c.wantWrite || (c.wantWrite && !strings.HasPrefix(to, "type=registry,ref="+amd+",mode=max")) {
				t.Errorf("BUILDKIT_CACHE_TO_AMD64 = %q (set %v); want it set, writing %v", to, set, c.wantWrite)
			}
			var refs map[string]regcache.Platform
			if err := json.Unmarshal([]byte(outputs[OutputCacheRefs]), &refs); err != nil || refs["linux/arm64"].Ref != arm {
				t.Errorf("output cache-refs = %q (%v)", outputs[OutputCacheRefs], err)
			}
			if outputs[OutputCacheWrite] != map[bool]string{true: "true", false: "false"}[c.wantWrite] {
				t.Errorf("output cache-write = %q, want %v", outputs[OutputCacheWrite], c.wantWrite)
			}
			if !strings.Contains(w.stdout.String(), "Registry cache: this job reads") {
				t.Errorf("the log does not say what the job does with the cache:\n%s", w.stdout.String())
			}
		})
	}
}

func TestMainRefusesABadCacheRef(t *testing.T) {
	w := newWorld(t)
	w.env["INPUT_CACHE-REF"] = "registry.example/app:latest"
	w.env["INPUT_CACHE-WRITE"] = "always"
	err := Main(context.Background(), w.github(), w.deps())
	for _, s := range []string{`input "cache-ref"`, `input "cache-write"`, "has a tag", `"always"`} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("Main's error lacks %s: %v", s, err)
		}
	}
}

func TestMainWithoutCacheRefExportsNoCache(t *testing.T) {
	w, ctx := startedWorld(t)
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatal(err)
	}
	outputs := readEnvFile(t, w.env[ci.EnvGitHubOutput])
	env := readEnvFile(t, w.env[ci.EnvGitHubEnv])
	if _, ok := outputs[OutputCacheFrom]; ok {
		t.Error("cache-from output without cache-ref")
	}
	for name := range env {
		if strings.HasPrefix(name, "BUILDKIT_CACHE_") {
			t.Errorf("%s exported without cache-ref", name)
		}
	}
}
