package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/benchtable"
)

// votingDone: see vsDriverDone.
var votingDone bool

// BenchmarkIntegrationVoting builds the voting example (examples/voting: three services, FROM
// golang and FROM debian, with its own docker-bake.hcl) for linux/amd64, pushing to the local
// registry: cold on a fresh builder of ours, then, after a one-line change in the vote service,
// again with (a) our cache volume (a later job's builder on the warm volume the cold job left),
// (b) our registry cache (a fresh builder, cache-from what the cold job exported), (c) the
// driver's long-lived builder, warm from its own cold build; and the type=local cache a CI
// system's cache would carry (export, size, import on a fresh builder). One run of each (n=1):
// a cold build of the three services takes minutes on 2 cores.
func BenchmarkIntegrationVoting(b *testing.B) {
	if testing.Short() {
		b.Skip("integration benchmark")
	}
	if votingDone {
		return
	}
	votingDone = true
	// Two cold bakes of about 6 minutes each on 2 cores, and three rebuilds.
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	e := newBenchEnv(ctx, b)
	const platform = "linux/amd64"
	nonce := fmt.Sprintf("%d", time.Now().UnixNano())
	project := filepath.Join(b.TempDir(), "voting")
	copyTree(b, "../../examples/voting", project)
	localDir := filepath.Join(b.TempDir(), "local-cache")
	cacheRepo := e.c.Info.Registry + "/bench/" + e.ns + "/voting-cache"
	cacheKey := "voting-" + nonce

	// bake builds the three services with the cache values cache gives each, on the builder the
	// environment (a job's exports) or extra (--builder) names, and returns how long it took.
	bake := func(env map[string]string, cache func(service string) (from, to []string), extra ...string) float64 {
		override, err := votingOverride(platform, cache)
		if err != nil {
			b.Fatal(err)
		}
		file := filepath.Join(b.TempDir(), "override.json")
		if err := os.WriteFile(file, override, 0o644); err != nil {
			b.Fatal(err)
		}
		all := map[string]string{"REGISTRY": e.c.Info.Registry + "/bench/" + e.ns, "TAG": nonce}
		for k, v := range env {
			all[k] = v
		}
		args := append([]string{"docker", "buildx", "bake", "--progress", "plain", "--file", filepath.Join(project, "docker-bake.hcl"), "--file", file}, extra...)
		// In the project's directory, as its workflow runs it: the targets' contexts are relative.
		return timed(func() { e.runIn(ctx, b, project, all, args...) }).Seconds()
	}
	none := func(string) ([]string, []string) { return nil, nil }
	registry := func(exports map[string]string, write bool) func(string) ([]string, []string) {
		return func(s string) (from, to []string) {
			if write {
				v, err := serviceCache(exports["BUILDKIT_CACHE_TO_AMD64"], s)
				if err != nil {
					b.Fatal(err)
				}
				return nil, []string{v}
			}
			v, err := serviceCache(exports["BUILDKIT_CACHE_FROM_AMD64"], s)
			if err != nil {
				b.Fatal(err)
			}
			return []string{v}, nil
		}
	}
	local := func(export bool) func(string) ([]string, []string) {
		return func(s string) (from, to []string) {
			dir := filepath.Join(localDir, s)
			if export {
				return nil, []string{"type=local,mode=max,dest=" + dir}
			}
			return []string{"type=local,src=" + dir}, nil
		}
	}
	up := func(id string, extra ...string) (map[string]string, string) {
		state := filepath.Join(b.TempDir(), "state")
		return e.oursUp(ctx, b, id, platform, state, extra...), state
	}
	volume := []string{"--cache", "volume", "--cache-key", cacheKey}

	// The cold job: a fresh volume, so a cold builder; then, on the now warm builder, the exports
	// of the registry cache and the type=local cache (each a bake whose steps are all cached).
	exports, state := up("voting-cold", append(volume, "--cache-ref", cacheRepo, "--cache-write", "true")...)
	cold := bake(exports, none)
	b.Logf("cold bake (ours, new cache volume): %.1fs", cold)
	registryExport := bake(exports, registry(exports, true))
	b.Logf("registry cache export: %.1fs", registryExport)
	localExport := bake(withEnv(exports, localEntitled), local(true))
	localMiB := float64(dirSize(b, localDir)) / (1 << 20)
	b.Logf("type=local cache export: %.1fs, %.1f MiB", localExport, localMiB)
	e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])

	// The driver's long-lived builder, cold on first use.
	driver := "drv-voting"
	e.driverCreate(ctx, b, driver, platform)
	defer e.driverRemove(ctx, b, driver)
	driverCold := bake(nil, none, "--builder", driver)
	b.Logf("cold bake (driver): %.1fs", driverCold)

	// The one-line change, in one service.
	mainGo := filepath.Join(project, "vote", "main.go")
	src, err := os.ReadFile(mainGo)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(mainGo, append(src, []byte("\n// rebuilt by the bench "+nonce+"\n")...), 0o644); err != nil {
		b.Fatal(err)
	}

	// (a) A later job on the cache volume.
	exports, state = up("voting-volume", volume...)
	onVolume := bake(exports, none)
	b.Logf("rebuild on the cache volume: %.1fs", onVolume)
	e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])
	// (b) A later job on a fresh builder, with the registry cache.
	exports, state = up("voting-registry", "--cache-ref", cacheRepo, "--cache-write", "false")
	onRegistry := bake(exports, registry(exports, false))
	b.Logf("rebuild with the registry cache: %.1fs", onRegistry)
	e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])
	// The type=local cache, carried by the client to a fresh builder.
	exports, state = up("voting-local")
	onLocal := bake(withEnv(exports, localEntitled), local(false))
	b.Logf("rebuild from the type=local cache: %.1fs", onLocal)
	e.oursDown(ctx, b, state, exports[EnvBuildxBuilder])
	// (c) The driver's builder, warm.
	driverWarm := bake(nil, none, "--builder", driver)

	tab := benchtable.Table{Ours: "setup-ephemeral-buildkit", Theirs: "kubernetes driver"}
	one := func(v float64) []float64 { return []float64{v} }
	tab.Add(benchtable.Row{Measure: "voting: cold bake, 3 services", Unit: "s", Ours: one(cold), Theirs: one(driverCold),
		Note: "fresh builders (ours: on a new, empty cache volume)"})
	tab.Add(benchtable.Row{Measure: "voting: rebuild (a) our cache volume vs (c) driver warm", Unit: "s", Ours: one(onVolume), Theirs: one(driverWarm),
		Note: fmt.Sprintf("cold/volume = %.2fx %s; volume/driver-warm %s", cold/onVolume, verdict(cold/onVolume, 3, true), verdict(onVolume/driverWarm, 1.2, false))})
	tab.Add(benchtable.Row{Measure: "voting: rebuild (b) our registry cache vs (c) driver warm", Unit: "s", Ours: one(onRegistry), Theirs: one(driverWarm),
		Note: fmt.Sprintf("cold/registry = %.2fx %s", cold/onRegistry, verdict(cold/onRegistry, 2, true))})
	tab.Add(benchtable.Row{Measure: "voting: registry cache export (mode=max, 3 tags)", Unit: "s", Ours: one(registryExport),
		Note: "a bake with every step cached, cache-to only"})
	tab.Add(benchtable.Row{Measure: "voting: type=local cache export (mode=max)", Unit: "s", Ours: one(localExport),
		Note: fmt.Sprintf("%.1f MiB for the CI system's cache to carry", localMiB)})
	tab.Add(benchtable.Row{Measure: "voting: rebuild from type=local on a fresh builder", Unit: "s", Ours: one(onLocal),
		Note: fmt.Sprintf("cold/local = %.2fx (the upload to and download from the CI cache not included)", cold/onLocal)})

	var out strings.Builder
	fmt.Fprintf(&out, "\nvoting example (examples/voting, 3 services), linux/amd64 only, n=1 per variant, pushed to the local registry; rebuild after a one-line change in vote/main.go\n")
	if err := tab.Fprint(&out); err != nil {
		b.Fatal(err)
	}
	fmt.Print(out.String())
}

// localEntitled lets bake write and read the type=local cache's directories on the client,
// which its filesystem entitlements otherwise refuse outside the project (the workflow would pass
// --allow fs=... for its cache directory).
var localEntitled = map[string]string{"BUILDX_BAKE_ENTITLEMENTS_FS": "0"}

// withEnv is env with more's variables added.
func withEnv(env, more map[string]string) map[string]string {
	all := map[string]string{}
	for k, v := range env {
		all[k] = v
	}
	for k, v := range more {
		all[k] = v
	}
	return all
}

// copyTree copies the regular files under from to to.
func copyTree(b *testing.B, from, to string) {
	b.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o644)
	})
	if err != nil {
		b.Fatal(err)
	}
}
