// Command registryinfo shows what a registry holds for images: per image its index and, per
// platform, the manifest, the architecture the image's config says, and its layers' size. It
// fails when an image lacks one of the platforms asked for or a config contradicts its index
// entry. `make demo` uses it on the local cluster's registry.
//
// Usage:
//
//	registryinfo -ca CA.crt [-platforms linux/amd64,linux/arm64] HOST:PORT/REPO:TAG...
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociregistry"
)

func main() {
	caFile := flag.String("ca", "", "CA certificate the registry's TLS certificate is checked against (required)")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "platforms every image must have")
	flag.Parse()
	if *caFile == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(os.Stdout, *caFile, strings.Split(*platforms, ","), flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "registryinfo:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, caFile string, platforms, images []string) error {
	ctx := context.Background()
	for _, image := range images {
		host, rest, ok := strings.Cut(image, "/")
		if !ok {
			return fmt.Errorf("image %q: want HOST:PORT/REPO:TAG", image)
		}
		repo, tag, ok := strings.Cut(rest, ":")
		if !ok {
			return fmt.Errorf("image %q has no tag", image)
		}
		c, err := ociregistry.NewClient(host, caFile)
		if err != nil {
			return err
		}
		mediaType, _, err := c.Manifest(ctx, repo, tag)
		if err != nil {
			return err
		}
		imgs, err := c.Platforms(ctx, repo, tag)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s (%s)\n", image, mediaType)
		for _, img := range imgs {
			var size int64
			for _, l := range img.Manifest.Layers {
				size += l.Size
			}
			fmt.Fprintf(w, "  %-12s config says %s/%s, %d layers, %.1f MiB, config %s\n",
				img.Platform.OS+"/"+img.Platform.Architecture, img.Config.OS, img.Config.Architecture,
				len(img.Manifest.Layers), float64(size)/(1<<20), img.Manifest.Config.Digest.Encoded()[:12])
		}
		if err := ociregistry.CheckPlatforms(imgs, platforms); err != nil {
			return fmt.Errorf("%s: %w", image, err)
		}
	}
	return nil
}
