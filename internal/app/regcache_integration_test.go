package app

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociregistry"
)

// TestIntegrationRegistryCacheAcrossBuilders runs two jobs one after the other, each with fresh
// builders for both platforms: the first (cache-write true) builds and exports its cache to the
// local registry through BUILDKIT_CACHE_TO_<ARCH>; the second (cache-write auto, which a shell
// never writes with) imports it through BUILDKIT_CACHE_FROM_<ARCH>, and its RUN step is CACHED
// on both platforms — it never runs. The builders trust the registry through buildkitd-config,
// as a user's builders trust a private one.
func TestIntegrationRegistryCacheAcrossBuilders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	w := newCLIWorld(ctx, t, "regcache-")
	repo := w.c.Info.Registry + "/itest/" + w.ns + "/cache"
	buildContext := t.TempDir()
	// A RUN step that would leave a different file every time it runs: a cached one does not.
	dockerfile := "FROM debian:bookworm-slim\nRUN sleep 2 && date +%s%N > /built-at && uname -m > /arch\n"
	if err := os.WriteFile(filepath.Join(buildContext, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}

	job := func(id, write string) (map[string]string, map[string]string) {
		t.Helper()
		w.stdout.Reset()
		w.stderr.Reset()
		up := append([]string{"up", "--owner-pod", "runner", "--platforms", "linux/amd64,linux/arm64", "--node-selector", w.selectors,
			"--job-id", id, "--buildkitd-config", w.c.Info.BuildkitdConfigFile, "--cache-ref", repo, "--cache-write", write}, w.common...)
		if err := Run(ctx, up, w.deps); err != nil {
			t.Fatalf("up %s: %v\n%s", id, err, w.stderr.String())
		}
		exports := parseExports(t, w.stdout.String())
		logs := map[string]string{}
		for _, arch := range []string{"amd64", "arm64"} {
			from, to := exports["BUILDKIT_CACHE_FROM_"+strings.ToUpper(arch)], exports["BUILDKIT_CACHE_TO_"+strings.ToUpper(arch)]
			if from != "type=registry,ref="+repo+":cache-"+arch {
				t.Fatalf("%s: BUILDKIT_CACHE_FROM_%s = %q", id, strings.ToUpper(arch), from)
			}
			args := []string{"buildx", "build", "--progress", "plain", "--platform", "linux/" + arch, "--cache-from", from}
			if to != "" {
				args = append(args, "--cache-to", to)
			}
			cmd := exec.CommandContext(ctx, "docker", append(args, buildContext)...)
			cmd.Env = w.processEnv
			for k, v := range exports {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			started := time.Now()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: docker %v: %v\n%s", id, args, err, out)
			}
			t.Logf("MEASURE %s linux/%s build (cache-to %v): %.1fs", id, arch, to != "", time.Since(started).Seconds())
			logs[arch] = string(out)
		}
		if err := Run(ctx, []string{"down", "--state-dir", w.stateDir}, w.deps); err != nil {
			t.Fatalf("down %s: %v\n%s", id, err, w.stderr.String())
		}
		waitNoBuilders(ctx, t, w.admin, w.ns)
		return exports, logs
	}

	first, firstLogs := job("writer", "true")
	if first["BUILDKIT_CACHE_TO_AMD64"] == "" {
		t.Fatalf("the writing job has no cache-to: %v", first)
	}
	runStep := regexp.MustCompile(`(?m)^#(\d+) \[[^\]]*2/2\] RUN sleep 2`)
	for arch, log := range firstLogs {
		m := runStep.FindStringSubmatch(log)
		if m == nil || strings.Contains(log, "#"+m[1]+" CACHED") || !strings.Contains(log, "exporting cache to registry") {
			t.Errorf("first job, %s: want the RUN step run and the cache exported:\n%s", arch, log)
		}
	}
	reg, err := ociregistry.NewClient(w.c.Info.Registry, w.c.Info.RegistryCAFile)
	if err != nil {
		t.Fatal(err)
	}
	repoPath := strings.TrimPrefix(repo, w.c.Info.Registry+"/")
	for _, arch := range []string{"amd64", "arm64"} {
		if _, _, err := reg.Manifest(ctx, repoPath, "cache-"+arch); err != nil {
			t.Errorf("the registry has no cache-%s: %v", arch, err)
		}
	}

	second, secondLogs := job("reader", "auto")
	if second["BUILDKIT_CACHE_TO_AMD64"] != "" || second["BUILDKIT_CACHE_TO_ARM64"] != "" {
		t.Errorf("a shell job with cache-write auto writes the cache: %v", second)
	}
	if !strings.Contains(w.stderr.String(), "Registry cache: this job reads "+repo) {
		t.Errorf("up does not say what it does with the cache:\n%s", w.stderr.String())
	}
	for arch, log := range secondLogs {
		m := runStep.FindStringSubmatch(log)
		if m == nil || !strings.Contains(log, fmt.Sprintf("#%s CACHED", m[1])) {
			t.Errorf("second job, %s: the RUN step is not CACHED from the registry:\n%s", arch, log)
		}
		if !strings.Contains(log, "importing cache manifest from "+repo+":cache-"+arch) {
			t.Errorf("second job, %s: no cache import from %s:cache-%s:\n%s", arch, repo, arch, log)
		}
	}
}
