package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

// The base images' pinned inputs. A change to any of them (or to this program, the ociimage
// package or the rootfs script) rebuilds the base images; nothing else does.
const (
	debianSuite = "bookworm"
	// debianMirror is the Debian archive this machine's apt uses (/etc/apt/sources.list.d/).
	debianMirror = "http://deb.debian.org/debian"
	// debianInclude are packages beyond debootstrap's minbase: TLS roots, as in Debian's images.
	debianInclude = "ca-certificates"
	// goVersion is the Go toolchain of the golang image, Go's own build for each architecture as
	// the Go module proxy serves it (golang.org/toolchain).
	goVersion    = "1.26.8"
	rootfsScript = "hack/images/debian/rootfs.sh"
)

// baseArchs are the platforms of every base image.
var baseArchs = []struct{ arch, variant string }{{"amd64", ""}, {"arm64", "v8"}}

// The names the base images carry: Docker Hub's, so that users' Dockerfiles (FROM golang:1.26,
// FROM debian:bookworm-slim) resolve unchanged through the builders' registry mirror.
var (
	debianNames = []string{
		"docker.io/library/debian:" + debianSuite,
		"docker.io/library/debian:" + debianSuite + "-slim",
		"docker.io/library/debian:12",
	}
	golangNames = []string{
		"docker.io/library/golang:" + goVersion,
		"docker.io/library/golang:" + goVersion + "-" + debianSuite,
		"docker.io/library/golang:" + minorOf(goVersion),
		"docker.io/library/golang:" + minorOf(goVersion) + "-" + debianSuite,
	}
)

func minorOf(v string) string {
	parts := strings.SplitN(v, ".", 3)
	return parts[0] + "." + parts[1]
}

// buildBaseImages writes the Debian and Go base images, for every platform of baseArchs, into the
// OCI layout outDir/base, unless the stamp there says the same inputs already did.
func buildBaseImages(cfg config, root, srcHash string) error {
	dir := filepath.Join(cfg.outDir, localcluster.BaseImagesDir)
	toolchains := map[string]toolchain{}
	for _, a := range baseArchs {
		tc, err := downloadToolchain(cfg.goCmd, a.arch)
		if err != nil {
			return err
		}
		toolchains[a.arch] = tc
	}
	stamp, err := baseStamp(root, srcHash, toolchains)
	if err != nil {
		return err
	}
	stampFile := filepath.Join(dir, "stamp")
	if old, err := os.ReadFile(stampFile); err == nil && string(old) == stamp {
		fmt.Printf("mkimages: base images: reused %s (inputs unchanged)\n", dir)
		return nil
	}
	start := time.Now()
	// A half-written layout from an earlier failure is not trusted: start again.
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing the old base images %s: %w", dir, err)
	}
	layout, err := ociimage.OpenLayout(dir)
	if err != nil {
		return err
	}
	var debian, golang []v1.Descriptor
	for _, a := range baseArchs {
		deb, gol, err := basePlatform(cfg, root, layout, a.arch, a.variant, toolchains[a.arch])
		if err != nil {
			return err
		}
		debian, golang = append(debian, deb), append(golang, gol)
	}
	for _, im := range []struct {
		manifests []v1.Descriptor
		names     []string
	}{{debian, debianNames}, {golang, golangNames}} {
		index, err := layout.AddIndex(im.manifests)
		if err != nil {
			return err
		}
		if err := layout.Tag(index, im.names...); err != nil {
			return err
		}
		fmt.Printf("mkimages: %s: index %s\n", strings.Join(im.names, ", "), index.Digest)
	}
	if err := os.WriteFile(stampFile, []byte(stamp), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", stampFile, err)
	}
	fmt.Printf("mkimages: base images written to %s in %.1fs\n", dir, time.Since(start).Seconds())
	return nil
}

// basePlatform adds one platform's Debian and Go images to layout and returns their manifests.
func basePlatform(cfg config, root string, layout *ociimage.Layout, arch, variant string, tc toolchain) (debian, golang v1.Descriptor, err error) {
	start := time.Now()
	rootfs := filepath.Join(cfg.outDir, ".build", "rootfs-"+arch)
	cmd := exec.Command(filepath.Join(root, rootfsScript), arch, rootfs)
	cmd.Env = append(os.Environ(), "SUITE="+debianSuite, "MIRROR="+debianMirror, "INCLUDE="+debianInclude)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return debian, golang, fmt.Errorf("making the Debian %s root file system for %s (%s): %w", debianSuite, arch, rootfsScript, err)
	}
	defer os.RemoveAll(rootfs)
	debLayer, err := layout.AddTreeLayer(ociimage.Tree{Root: rootfs, KeepOwners: true},
		fmt.Sprintf("debootstrap --variant=minbase --include=%s %s %s (%s)", debianInclude, debianSuite, debianMirror, rootfsScript))
	if err != nil {
		return debian, golang, err
	}
	const path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	labels := map[string]string{
		"org.opencontainers.image.description": "Debian " + debianSuite + " (minbase) made offline by setup-ephemeral-buildkit's " + rootfsScript +
			" for the local test cluster; stands in for Docker Hub's debian image",
	}
	debian, err = layout.AddImage(ociimage.Image{
		Architecture: arch, Variant: variant, Env: []string{path}, Cmd: []string{"bash"}, Labels: labels,
	}, []ociimage.Layer{debLayer})
	if err != nil {
		return debian, golang, err
	}
	fmt.Printf("mkimages: debian:%s linux/%s: %s (layer %.1f MiB) in %.1fs\n", debianSuite, arch, debian.Digest,
		float64(debLayer.Desc.Size)/(1<<20), time.Since(start).Seconds())

	start = time.Now()
	goLayer, err := layout.AddTreeLayer(ociimage.Tree{Root: tc.Dir, Prefix: "/usr/local/go", Mode: toolchainMode},
		"golang.org/toolchain@"+toolchainVersion(arch)+" from the Go module proxy")
	if err != nil {
		return debian, golang, err
	}
	// As in Docker Hub's golang image: a GOPATH everybody may write to.
	gopath, err := layout.AddEntriesLayer([]ociimage.Entry{
		ociimage.Dir("/go", 0o777|fs.ModeSticky),
		ociimage.Dir("/go/bin", 0o777|fs.ModeSticky),
		ociimage.Dir("/go/src", 0o777|fs.ModeSticky),
	}, "GOPATH /go")
	if err != nil {
		return debian, golang, err
	}
	golang, err = layout.AddImage(ociimage.Image{
		Architecture: arch, Variant: variant, Cmd: []string{"bash"}, WorkingDir: "/go",
		Env: []string{
			"PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"GOLANG_VERSION=" + goVersion, "GOPATH=/go", "GOTOOLCHAIN=local",
		},
		Labels: map[string]string{
			"org.opencontainers.image.description": "Go " + goVersion + " on Debian " + debianSuite +
				", Go's own build from the Go module proxy; stands in for Docker Hub's golang image",
		},
	}, []ociimage.Layer{debLayer, goLayer, gopath})
	if err != nil {
		return debian, golang, err
	}
	fmt.Printf("mkimages: golang:%s linux/%s: %s (Go layer %.1f MiB) in %.1fs\n", goVersion, arch, golang.Digest,
		float64(goLayer.Desc.Size)/(1<<20), time.Since(start).Seconds())
	return debian, golang, nil
}

func toolchainVersion(arch string) string { return "v0.0.1-go" + goVersion + ".linux-" + arch }

// toolchainMode gives the toolchain's files their modes: the module zip (and so the module
// cache) records none, and Go's own toolchain switch marks bin/ and pkg/tool/ executable too.
func toolchainMode(rel string, host fs.FileMode) fs.FileMode {
	if host.IsDir() || strings.HasPrefix(rel, "bin/") || strings.HasPrefix(rel, "pkg/tool/") {
		return 0o755
	}
	return 0o644
}

// toolchain is a Go toolchain in the module cache: its directory and its module hash.
type toolchain struct{ Dir, Sum string }

// downloadToolchain fetches Go's toolchain for linux/arch from the Go module proxy into the
// module cache and returns its directory there.
func downloadToolchain(goCmd, arch string) (toolchain, error) {
	mod := "golang.org/toolchain@" + toolchainVersion(arch)
	cmd := exec.Command(goCmd, "mod", "download", "-json", mod)
	// Outside any module, so that nothing is added to one.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return toolchain{}, fmt.Errorf("downloading %s (go mod download): %w: %s", mod, err, strings.TrimSpace(stderr.String()))
	}
	var tc toolchain
	if err := json.Unmarshal(out, &tc); err != nil || tc.Dir == "" || tc.Sum == "" {
		return toolchain{}, fmt.Errorf("downloading %s: unexpected answer from go mod download: %q (%v)", mod, out, err)
	}
	return tc, nil
}

// baseStamp hashes every input of the base images: their sources (baseSources),
// the rootfs script, the pinned constants and the toolchains' module hashes (checked by the go
// command against the checksum database when it downloaded them).
func baseStamp(root, srcHash string, toolchains map[string]toolchain) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, "sources", srcHash)
	if err := hashFile(h, root, rootfsScript); err != nil {
		return "", err
	}
	fmt.Fprintln(h, debianSuite, debianMirror, debianInclude, goVersion, baseArchs, debianNames, golangNames)
	for _, a := range baseArchs {
		fmt.Fprintln(h, a.arch, toolchains[a.arch].Sum)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
