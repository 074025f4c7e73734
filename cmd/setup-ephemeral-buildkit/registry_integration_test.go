package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociregistry"
)

// TestIntegrationActionBakePushesToRegistry runs a job that sets up builders trusting the local
// registry through the buildkitd-config input (its CA, and the registry as Docker Hub mirror) and
// bakes three services of the voting app's shape (FROM golang build stage with a Go build cache
// mount, FROM debian runtime stage with a RUN step) for both platforms, pushing them. The registry
// must then hold, for each service, an index with linux/amd64 and linux/arm64 whose configs say
// those architectures. A second build, from a base image that exists nowhere, must fail with
// BuildKit's own error in the job log.
func TestIntegrationActionBakePushesToRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w := newJobWorld(ctx, t)
	tag := strings.TrimPrefix(w.ns, "e2e-")
	missing := w.cluster.Info.Registry + "/e2e/no-such-base:" + tag
	run := w.startAct(ctx, t, w.vars(map[string]string{
		"E2E_BUILDKITD_CONFIG": w.cluster.Info.BuildkitdConfigFile,
		"E2E_BAKE":             "true",
		"E2E_REGISTRY":         w.cluster.Info.Registry,
		"E2E_TAG":              tag,
		"E2E_MISSING_BASE":     missing,
		"E2E_TIMEOUT":          "4m",
	}))
	if err := run.wait(ctx, t); err != nil {
		t.Fatalf("the job failed: %v", err)
	}
	log := run.output.String()

	c, err := ociregistry.NewClient(w.cluster.Info.Registry, w.cluster.Info.RegistryCAFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, service := range []string{"vote", "worker", "result"} {
		imgs, err := c.Platforms(ctx, "e2e/"+service, tag)
		if err != nil {
			t.Errorf("%s: %v", service, err)
			continue
		}
		if err := ociregistry.CheckPlatforms(imgs, []string{"linux/amd64", "linux/arm64"}); err != nil {
			t.Errorf("%s:%s in the registry: %v", service, tag, err)
		}
		for _, img := range imgs {
			// The debian runtime stage: its layers come first, then the build-info copy and the
			// RUN step's layer.
			if len(img.Manifest.Layers) < 3 {
				t.Errorf("%s %s: %d layers, want the debian base's and the two of its own", service, img.Platform.Architecture, len(img.Manifest.Layers))
			}
		}
	}

	// BuildKit's error for the missing base, as the job log shows it.
	for _, want := range []string{
		"Build from a base image that exists nowhere",
		fmt.Sprintf("failed to resolve source metadata for %s", missing),
		"not found",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the job log lacks %q", want)
		}
	}

	w.waitBuildersGone(ctx, t)
	w.checkNothingLeft(t)
}
