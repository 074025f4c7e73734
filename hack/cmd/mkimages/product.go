package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociregistry"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

// The product's images, the ones a release publishes (.github/workflows/release.yml):
//
//   - CLIImage: the static setup-ephemeral-buildkit binary, non-root, the TLS roots and nothing
//     else. The janitor CronJob (deploy/, the chart) runs it.
//   - JobImage: the CI job image for GitLab's Kubernetes executor and container jobs:
//     setup-ephemeral-buildkit, the docker CLI and the buildx plugin on Debian (a shell, TLS roots,
//     coreutils). The GitLab component (templates/buildkit.yml) pins it.
//
// Both are image indexes for productArchs, named <registry>/<repository>:<tag>.
const (
	CLIRepository = "setup-ephemeral-buildkit"
	JobRepository = "setup-ephemeral-buildkit-job"
	// DefaultProductRegistry is where a release of this repository publishes its images.
	DefaultProductRegistry = "ghcr.io/org"
	cliPackage             = modulePath + "/cmd/setup-ephemeral-buildkit"
	// nonRoot is the CLI image's user: distroless's nonroot, which deploy/janitor-cronjob.yaml
	// and the chart run the janitor as (runAsUser/runAsGroup 65532).
	nonRoot = 65532
	// caBundle is where Debian (and Go's crypto/x509) keep the TLS roots.
	caBundle  = "/etc/ssl/certs/ca-certificates.crt"
	chartFile = "deploy/chart/setup-ephemeral-buildkit/Chart.yaml"
)

// productArchs are the platforms of the product images: the base images' (the job image's shell
// comes from the Debian one).
var productArchs = baseArchs

type productConfig struct {
	// registry is the names' first part (ghcr.io/org); tags the tags each image gets.
	registry string
	tags     []string
	// version and commit are stamped into the binary (internal/version).
	version, commit string
	// outDir is the OCI layout the images go to.
	outDir string
	// push sends them to their registry afterwards (pushProductImages).
	push bool
}

// defaultTag is the chart's appVersion: the tag deploy/, the chart and the component name
// between releases (v1), or a release commit's own version after hack/release/stamp.sh. Images
// tagged with it run the shipped manifests as they are.
func defaultTag(root string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, chartFile))
	if err != nil {
		return "", fmt.Errorf("reading the chart's appVersion: %w", err)
	}
	m := regexp.MustCompile(`(?m)^appVersion: "?([^"\s]+)"?\s*$`).FindSubmatch(data)
	if m == nil {
		return "", fmt.Errorf("%s has no appVersion", chartFile)
	}
	return string(m[1]), nil
}

// checkProductConfig validates what the flags gave.
func checkProductConfig(p productConfig) error {
	if p.registry == "" || strings.HasSuffix(p.registry, "/") || strings.ContainsAny(p.registry, ":@ ") && !regexp.MustCompile(`^[a-z0-9.-]+:[0-9]+(/[a-z0-9._/-]+)?$`).MatchString(p.registry) {
		return fmt.Errorf("-registry %q: want a registry and namespace such as ghcr.io/org or 10.213.0.1:5000/org", p.registry)
	}
	if len(p.tags) == 0 {
		return errors.New("-tags is empty: want one or more tags such as v1.2.3 v1")
	}
	for _, tag := range p.tags {
		if !regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`).MatchString(tag) {
			return fmt.Errorf("-tags: %q is not an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*)", tag)
		}
	}
	if p.version == "" {
		return errors.New("-version is empty: want the release version stamped into the binary, such as v1.2.3")
	}
	return nil
}

// productNames are the names of the image of repository under every tag.
func productNames(p productConfig, repository string) []string {
	var names []string
	for _, tag := range p.tags {
		names = append(names, p.registry+"/"+repository+":"+tag)
	}
	return names
}

// buildProductImages writes the CLI and job images into the OCI layout p.outDir, unless its stamp
// says the same inputs did already. The Debian layers come from the base images (baseDir).
func buildProductImages(cfg config, root, srcHash string, p productConfig) error {
	if err := checkProductConfig(p); err != nil {
		return err
	}
	base, err := ociimage.OpenLayout(filepath.Join(cfg.outDir, localcluster.BaseImagesDir))
	if err != nil {
		return err
	}
	inputs, err := productInputs(cfg, root, p, base)
	if err != nil {
		return err
	}
	stamp, err := productStamp(srcHash, p, inputs)
	if err != nil {
		return err
	}
	stampFile := filepath.Join(p.outDir, "stamp")
	if old, err := os.ReadFile(stampFile); err == nil && string(old) == stamp {
		fmt.Printf("mkimages: product images: reused %s (inputs unchanged)\n", p.outDir)
		return nil
	}
	start := time.Now()
	if err := os.RemoveAll(p.outDir); err != nil {
		return fmt.Errorf("removing the old product images %s: %w", p.outDir, err)
	}
	layout, err := ociimage.OpenLayout(p.outDir)
	if err != nil {
		return err
	}
	var cliManifests, jobManifests []v1.Descriptor
	for _, in := range inputs {
		cli, job, err := writeArchImages(layout, base, in, p.version)
		if err != nil {
			return err
		}
		cliManifests, jobManifests = append(cliManifests, cli), append(jobManifests, job)
	}
	for _, im := range []struct {
		manifests  []v1.Descriptor
		repository string
	}{{cliManifests, CLIRepository}, {jobManifests, JobRepository}} {
		index, err := layout.AddIndex(im.manifests)
		if err != nil {
			return err
		}
		names := productNames(p, im.repository)
		if err := layout.Tag(index, names...); err != nil {
			return err
		}
		fmt.Printf("mkimages: %s: index %s\n", strings.Join(names, ", "), index.Digest)
	}
	if err := os.WriteFile(stampFile, []byte(stamp), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", stampFile, err)
	}
	fmt.Printf("mkimages: product images written to %s in %.1fs\n", p.outDir, time.Since(start).Seconds())
	return nil
}

// archInputs are what one architecture's product images are made of.
type archInputs struct {
	arch, variant       string
	cli, docker, buildx string
	debian              ociimage.Layer
}

// productInputs builds the CLI for each product architecture and finds the docker CLI, the buildx
// plugin and Debian's layer for it.
func productInputs(cfg config, root string, p productConfig, base *ociimage.Layout) ([]archInputs, error) {
	var inputs []archInputs
	for _, a := range productArchs {
		cli, err := buildCLI(cfg, root, a.arch, p)
		if err != nil {
			return nil, err
		}
		in := archInputs{arch: a.arch, variant: a.variant, cli: cli,
			docker: filepath.Join(cfg.binDir, "docker-linux-"+a.arch), buildx: filepath.Join(cfg.binDir, "docker-buildx-linux-"+a.arch)}
		for _, f := range []string{in.docker, in.buildx} {
			if st, err := os.Stat(f); err != nil || !st.Mode().IsRegular() {
				return nil, fmt.Errorf("%s missing or not a file (TOOLS=\"dockercli buildx\" hack/build-tools.sh builds it): %v", f, err)
			}
		}
		if in.debian, err = debianLayer(base, a.arch); err != nil {
			return nil, err
		}
		inputs = append(inputs, in)
	}
	return inputs, nil
}

// productStamp hashes everything the product images are made of: a stamp equal to the last
// write's means nothing changed.
func productStamp(srcHash string, p productConfig, inputs []archInputs) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, "sources", srcHash, p.registry, p.tags, productArchs)
	for _, in := range inputs {
		fmt.Fprintln(h, in.arch, in.debian.Desc.Digest)
		for _, f := range []string{in.cli, in.docker, in.buildx} {
			if err := hashFile(h, "", f); err != nil {
				return "", err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeArchImages adds one architecture's CLI and job images to layout and returns their
// manifests.
func writeArchImages(layout, base *ociimage.Layout, in archInputs, version string) (cli, job v1.Descriptor, err error) {
	// The same TLS roots as the job image's: Debian's ca-certificates.
	ca := filepath.Join(filepath.Dir(in.cli), "ca-certificates.crt")
	if err := extractFromLayer(base.BlobPath(in.debian.Desc.Digest), strings.TrimPrefix(caBundle, "/"), ca); err != nil {
		return v1.Descriptor{}, v1.Descriptor{}, err
	}
	cliLayer, err := layout.AddEntriesLayer(cliEntries(in.cli, ca), "setup-ephemeral-buildkit "+version+" (static), TLS roots")
	if err != nil {
		return v1.Descriptor{}, v1.Descriptor{}, err
	}
	cli, err = layout.AddImage(cliImage(in.arch, in.variant, version), []ociimage.Layer{cliLayer})
	if err != nil {
		return v1.Descriptor{}, v1.Descriptor{}, err
	}
	if err := copyBlob(base, layout, in.debian.Desc.Digest); err != nil {
		return v1.Descriptor{}, v1.Descriptor{}, err
	}
	jobLayer, err := layout.AddEntriesLayer(jobEntries(in.cli, in.docker, in.buildx), "setup-ephemeral-buildkit "+version+", docker CLI, buildx plugin")
	if err != nil {
		return v1.Descriptor{}, v1.Descriptor{}, err
	}
	job, err = layout.AddImage(jobImage(in.arch, in.variant, version), []ociimage.Layer{in.debian, jobLayer})
	if err != nil {
		return v1.Descriptor{}, v1.Descriptor{}, err
	}
	fmt.Printf("mkimages: linux/%s: CLI image %s (%.1f MiB), job image %s (+%.1f MiB on Debian's %.1f MiB)\n", in.arch,
		cli.Digest, mib(cliLayer.Desc.Size), job.Digest, mib(jobLayer.Desc.Size), mib(in.debian.Desc.Size))
	return cli, job, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func cliImage(arch, variant, ver string) ociimage.Image {
	return ociimage.Image{
		Architecture: arch, Variant: variant,
		Entrypoint: []string{"/usr/local/bin/setup-ephemeral-buildkit"},
		User:       fmt.Sprintf("%d:%d", nonRoot, nonRoot),
		// Nothing in the image is the user's: HOME is the only writable place there is.
		Env: []string{imagePath, "HOME=/tmp"},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "setup-ephemeral-buildkit",
			"org.opencontainers.image.version":     ver,
			"org.opencontainers.image.description": "setup-ephemeral-buildkit " + ver + ", static, non-root: the CLI the janitor CronJob runs (tested with BuildKit " + version.BuildKit + ")",
		},
	}
}

// cliEntries are the CLI image's files: the binary, the TLS roots (the janitor asks GitHub's and
// GitLab's APIs), a user database naming the non-root user, and a /tmp.
func cliEntries(cli, ca string) []ociimage.Entry {
	return []ociimage.Entry{
		ociimage.HostFile("/usr/local/bin/setup-ephemeral-buildkit", cli, 0o755),
		ociimage.HostFile(caBundle, ca, 0o644),
		ociimage.File("/etc/passwd", []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/tmp:/sbin/nologin\n", nonRoot, nonRoot)), 0o644),
		ociimage.File("/etc/group", []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonRoot)), 0o644),
		ociimage.File("/etc/nsswitch.conf", []byte("passwd: files\ngroup: files\nhosts: files dns\n"), 0o644),
		ociimage.Dir("/tmp", 0o777|fs.ModeSticky),
	}
}

func jobImage(arch, variant, ver string) ociimage.Image {
	return ociimage.Image{
		Architecture: arch, Variant: variant,
		Cmd: []string{"bash"},
		Env: []string{imagePath},
		Labels: map[string]string{
			"org.opencontainers.image.title":   "setup-ephemeral-buildkit-job",
			"org.opencontainers.image.version": ver,
			"org.opencontainers.image.description": "CI job image of setup-ephemeral-buildkit " + ver +
				": the CLI, the docker CLI and its buildx plugin on Debian " + debianSuite + " (for GitLab's Kubernetes executor and container jobs)",
		},
	}
}

// jobEntries are what the job image adds to Debian: the three programs a job that uses the
// component runs. buildx goes where docker looks for system-wide plugins, so a job's own
// DOCKER_CONFIG (docker login) does not hide it.
func jobEntries(cli, docker, buildx string) []ociimage.Entry {
	return []ociimage.Entry{
		ociimage.HostFile("/usr/local/bin/setup-ephemeral-buildkit", cli, 0o755),
		ociimage.HostFile("/usr/local/bin/docker", docker, 0o755),
		ociimage.HostFile("/usr/local/lib/docker/cli-plugins/docker-buildx", buildx, 0o755),
	}
}

// buildCLI builds the static binary for linux/arch, stamped with p's version and commit, the way
// make dist does, and returns its path.
func buildCLI(cfg config, root, arch string, p productConfig) (string, error) {
	bin := filepath.Join(cfg.outDir, ".build", "product-"+arch, "setup-ephemeral-buildkit")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command(cfg.goCmd, "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= "+version.LDFlags(p.version, p.commit), "-o", bin, cliPackage)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building setup-ephemeral-buildkit for linux/%s (%s): %w", arch, strings.Join(cmd.Args, " "), err)
	}
	return bin, nil
}

// debianLayer returns the layer of the base layout's Debian image for linux/arch.
func debianLayer(base *ociimage.Layout, arch string) (ociimage.Layer, error) {
	name := debianNames[0]
	desc, ok, err := base.Named(name)
	if err != nil {
		return ociimage.Layer{}, err
	}
	if !ok {
		return ociimage.Layer{}, fmt.Errorf("the base images in %s have no %s (mkimages writes them without -base=false)", base.Dir(), name)
	}
	var index v1.Index
	if err := readJSONBlob(base, desc.Digest, &index); err != nil {
		return ociimage.Layer{}, err
	}
	for _, m := range index.Manifests {
		if m.Platform == nil || m.Platform.Architecture != arch {
			continue
		}
		var manifest v1.Manifest
		if err := readJSONBlob(base, m.Digest, &manifest); err != nil {
			return ociimage.Layer{}, err
		}
		var config v1.Image
		if err := readJSONBlob(base, manifest.Config.Digest, &config); err != nil {
			return ociimage.Layer{}, err
		}
		if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 {
			return ociimage.Layer{}, fmt.Errorf("%s linux/%s has %d layers, want the one debootstrap layer", name, arch, len(manifest.Layers))
		}
		return ociimage.Layer{Desc: manifest.Layers[0], DiffID: config.RootFS.DiffIDs[0], CreatedBy: config.History[0].CreatedBy}, nil
	}
	return ociimage.Layer{}, fmt.Errorf("%s has no linux/%s image", name, arch)
}

func readJSONBlob(l *ociimage.Layout, d digest.Digest, v any) error {
	data, err := l.ReadBlob(d)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding blob %s of %s: %w", d, l.Dir(), err)
	}
	return nil
}

// copyBlob puts blob d of from into to: a hard link when both are on one file system.
func copyBlob(from, to *ociimage.Layout, d digest.Digest) error {
	src, dst := from.BlobPath(d), to.BlobPath(d)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := from.OpenBlob(d)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst + ".tmp")
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying blob %s: %w", d, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(dst+".tmp", dst)
}

// extractFromLayer writes the file name (relative, as in the tar) of the gzip-compressed layer
// blob to dst.
func extractFromLayer(blob, name, dst string) error {
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("reading layer %s: %w", blob, err)
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("layer %s has no %s", blob, name)
		}
		if err != nil {
			return fmt.Errorf("reading layer %s: %w", blob, err)
		}
		if strings.TrimPrefix(hdr.Name, "./") != name {
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("%s in layer %s is not a regular file", name, blob)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	}
}

// pushProductImages pushes every image of the layout dir to the registry its names start with
// (the host of registry), signing in with REGISTRY_USER and REGISTRY_PASSWORD when the registry
// asks for credentials, as the release workflow gives them.
func pushProductImages(ctx context.Context, dir, registry string, getenv func(string) string) error {
	host, _, _ := strings.Cut(registry, "/")
	layout, err := ociimage.OpenLayout(dir)
	if err != nil {
		return err
	}
	base := "https://" + host
	c := &ociregistry.Client{Base: base, HTTP: &http.Client{Timeout: 10 * time.Minute, Transport: &ociregistry.TokenAuth{
		Base: base, Username: getenv("REGISTRY_USER"), Password: getenv("REGISTRY_PASSWORD"),
	}}}
	start := time.Now()
	names, err := c.PushLayout(ctx, layout)
	if err != nil {
		return fmt.Errorf("pushing the product images of %s to %s: %w", dir, host, err)
	}
	fmt.Printf("mkimages: pushed %s in %.1fs\n", strings.Join(names, ", "), time.Since(start).Seconds())
	return nil
}
