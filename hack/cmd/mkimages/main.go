// Command mkimages writes the OCI image archives the local test cluster imports into its
// containerd: pause.tar (the pod sandbox image), buildkit.tar (BuildKit, standing in for
// docker.io/moby/buildkit, which cannot be pulled on a machine without internet) and
// buildkit-rootless.tar (its -rootless variant: rootlesskit and Debian's newuidmap/newgidmap).
//
// Usage:
//
//	go run ./hack/cmd/mkimages -bin "$CACHE_DIR/bin" -out "$CACHE_DIR/images"
//
// -bin holds buildkitd, buildctl, runc-static and rootlesskit as hack/build-tools.sh leaves them. The pause
// program is built from hack/images/pause. Each archive has a stamp beside it (the hash of
// every input); when it matches, the archive is reused, so a second run writes nothing.
//
// With -base (the default) it also writes the base images the local registry serves to builds:
// Debian (debootstrap from Debian's packages, hack/images/debian/rootfs.sh; arm64 finished under
// qemu-user-static) and Go (Go's toolchain per architecture from the module proxy, on that
// Debian), each an image index for linux/amd64 and linux/arm64, into the OCI layout <out>/base,
// named as on Docker Hub (docker.io/library/debian:bookworm, docker.io/library/golang:1.26, ...).
// It is cached the same way, by a stamp of its inputs. It needs root and debootstrap.
//
// With -product (the default) it writes the product's images, the ones a release publishes
// (product.go): the CLI image the janitor runs and the CI job image, each an image index for
// linux/amd64 and linux/arm64, named <registry>/setup-ephemeral-buildkit[-job]:<tag>, into the
// OCI layout -product-out (default <out>/product). The job image is built on the Debian base
// image's layer, so the base images must exist. The local cluster pushes them to its registry,
// which the node resolves every name through: the shipped ghcr.io/org/... names run there as is.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.binDir, "bin", "", "directory with buildkitd, buildctl and runc-static (required)")
	flag.StringVar(&cfg.outDir, "out", "", "directory to write pause.tar and buildkit.tar to (required)")
	flag.StringVar(&cfg.busybox, "busybox", "/bin/busybox", "static busybox for the BuildKit image's shell (Debian's busybox-static)")
	flag.StringVar(&cfg.uidmapDir, "uidmap", "/usr/bin", "directory with Debian's newuidmap and newgidmap (package uidmap) for the rootless BuildKit image")
	flag.StringVar(&cfg.goCmd, "go", "go", "Go command used to build the pause program and download Go toolchains")
	flag.BoolVar(&cfg.baseImages, "base", true, "also write the Debian and Go base images (linux/amd64, linux/arm64) to the OCI layout <out>/base")
	flag.BoolVar(&cfg.productImages, "product", true, "also write the product images (the CLI image, the CI job image) to the OCI layout -product-out")
	flag.StringVar(&cfg.product.registry, "registry", DefaultProductRegistry, "registry and namespace of the product images' names")
	tags := flag.String("tags", "", "space-separated tags of the product images (default: the chart's appVersion)")
	flag.StringVar(&cfg.product.version, "version", "dev", "version stamped into the images' setup-ephemeral-buildkit (--version)")
	flag.StringVar(&cfg.product.commit, "commit", "", "commit stamped into the images' setup-ephemeral-buildkit (--version)")
	flag.StringVar(&cfg.product.outDir, "product-out", "", "OCI layout of the product images (default <out>/product)")
	flag.BoolVar(&cfg.product.push, "push", false, "push the product images to their registry (-registry's host), with REGISTRY_USER and REGISTRY_PASSWORD when it asks for credentials")
	flag.Parse()
	cfg.product.tags = strings.Fields(*tags)
	if cfg.binDir == "" || cfg.outDir == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "mkimages:", err)
		os.Exit(1)
	}
}
