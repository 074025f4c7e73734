package main

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

// fakeBase writes a base layout whose Debian image (per productArchs) is one small layer with
// the TLS roots and a shell, as debootstrap's would have them.
func fakeBase(t *testing.T, out string) {
	t.Helper()
	l, err := ociimage.OpenLayout(filepath.Join(out, "base"))
	if err != nil {
		t.Fatal(err)
	}
	var manifests []v1.Descriptor
	for _, a := range productArchs {
		layer, err := l.AddEntriesLayer([]ociimage.Entry{
			ociimage.File(caBundle, []byte("roots of "+a.arch), 0o644),
			ociimage.File("/bin/bash", []byte("bash"), 0o755),
		}, "debootstrap")
		if err != nil {
			t.Fatal(err)
		}
		m, err := l.AddImage(ociimage.Image{Architecture: a.arch, Variant: a.variant}, []ociimage.Layer{layer})
		if err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, m)
	}
	index, err := l.AddIndex(manifests)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Tag(index, debianNames...); err != nil {
		t.Fatal(err)
	}
}

func productBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, a := range productArchs {
		for _, f := range []string{"docker-linux-" + a.arch, "docker-buildx-linux-" + a.arch} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("fake "+f), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func readJSON(t *testing.T, l *ociimage.Layout, d v1.Descriptor, v any) {
	t.Helper()
	if err := readJSONBlob(l, d.Digest, v); err != nil {
		t.Fatal(err)
	}
}

// layerFiles lists a layer blob's entries by absolute path.
func layerFiles(t *testing.T, l *ociimage.Layout, d v1.Descriptor) map[string]*tar.Header {
	t.Helper()
	f, err := l.OpenBlob(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := ociimage.LayerHeaders(f)
	if err != nil {
		t.Fatal(err)
	}
	return absolute(h)
}

// absolute keys headers by absolute path ("/etc", not "etc/").
func absolute(h map[string]*tar.Header) map[string]*tar.Header {
	files := make(map[string]*tar.Header, len(h))
	for name, hdr := range h {
		files["/"+strings.TrimSuffix(name, "/")] = hdr
	}
	return files
}

// TestProductImages writes the CLI and job images as `make images` does (the real binary, built
// for both platforms) and checks what a cluster and a GitLab job rely on: both names are indexes
// for linux/amd64 and linux/arm64; the CLI image runs the binary as 65532 with the TLS roots and
// nothing else; the job image is Debian's layer plus the three programs; a second write gives the
// same digests.
func TestProductImages(t *testing.T) {
	root, err := moduleRoot("go")
	if err != nil {
		t.Fatal(err)
	}
	digests := func() map[string]string {
		out := t.TempDir()
		fakeBase(t, out)
		cfg := config{binDir: productBin(t), outDir: out, goCmd: "go"}
		p := productConfig{registry: "10.213.0.1:5000/org", tags: []string{"v9.8.7", "v9"}, version: "v9.8.7", commit: "abc", outDir: filepath.Join(out, "product")}
		if err := buildProductImages(cfg, root, "src", p); err != nil {
			t.Fatal(err)
		}
		l, err := ociimage.OpenLayout(p.outDir)
		if err != nil {
			t.Fatal(err)
		}
		base, err := ociimage.OpenLayout(filepath.Join(out, "base"))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, repo := range []string{CLIRepository, JobRepository} {
			for _, tag := range p.tags {
				name := p.registry + "/" + repo + ":" + tag
				d, ok, err := l.Named(name)
				if err != nil || !ok {
					t.Fatalf("%s not in the layout (%v)", name, err)
				}
				got[name] = d.Digest.String()
				var index v1.Index
				readJSON(t, l, d, &index)
				if len(index.Manifests) != len(productArchs) {
					t.Fatalf("%s: %d manifests, want %d", name, len(index.Manifests), len(productArchs))
				}
				for i, m := range index.Manifests {
					if m.Platform.OS != "linux" || m.Platform.Architecture != productArchs[i].arch {
						t.Errorf("%s: manifest %d is for %+v", name, i, m.Platform)
					}
					var manifest v1.Manifest
					readJSON(t, l, m, &manifest)
					var config v1.Image
					readJSON(t, l, manifest.Config, &config)
					top := layerFiles(t, l, manifest.Layers[len(manifest.Layers)-1])
					if h := top["/usr/local/bin/setup-ephemeral-buildkit"]; h == nil || h.Mode&0o111 == 0 {
						t.Errorf("%s %s: no executable /usr/local/bin/setup-ephemeral-buildkit", name, m.Platform.Architecture)
					}
					switch repo {
					case CLIRepository:
						if config.Config.User != "65532:65532" || len(manifest.Layers) != 1 {
							t.Errorf("CLI image %s: user %q, %d layers; want 65532:65532 and one layer", m.Platform.Architecture, config.Config.User, len(manifest.Layers))
						}
						if top[caBundle] == nil {
							t.Errorf("CLI image %s has no %s", m.Platform.Architecture, caBundle)
						}
						for f, h := range top {
							if h.Typeflag == tar.TypeReg && f != "/usr/local/bin/setup-ephemeral-buildkit" && f != caBundle && !strings.HasPrefix(f, "/etc/") {
								t.Errorf("CLI image %s holds %s: want the binary, the TLS roots and /etc's user database only", m.Platform.Architecture, f)
							}
						}
					case JobRepository:
						deb, err := debianLayer(base, m.Platform.Architecture)
						if err != nil {
							t.Fatal(err)
						}
						if len(manifest.Layers) != 2 || manifest.Layers[0].Digest != deb.Desc.Digest {
							t.Errorf("job image %s layers %v, want Debian's %s and one more", m.Platform.Architecture, manifest.Layers, deb.Desc.Digest)
						}
						for _, f := range []string{"/usr/local/bin/docker", "/usr/local/lib/docker/cli-plugins/docker-buildx"} {
							if top[f] == nil {
								t.Errorf("job image %s lacks %s", m.Platform.Architecture, f)
							}
						}
					}
				}
			}
		}
		return got
	}
	first, second := digests(), digests()
	data, _ := json.MarshalIndent(first, "", "  ")
	t.Logf("digests: %s", data)
	for name, d := range first {
		if second[name] != d {
			t.Errorf("%s: %s, then %s: not reproducible", name, d, second[name])
		}
	}
}

func TestCheckProductConfig(t *testing.T) {
	ok := productConfig{registry: "ghcr.io/org", tags: []string{"v1.2.3", "v1"}, version: "v1.2.3"}
	if err := checkProductConfig(ok); err != nil {
		t.Errorf("%+v: %v", ok, err)
	}
	local := ok
	local.registry = "10.213.0.1:5000/org"
	if err := checkProductConfig(local); err != nil {
		t.Errorf("%+v: %v", local, err)
	}
	for _, tc := range []struct {
		change func(*productConfig)
		want   string
	}{
		{func(p *productConfig) { p.registry = "" }, `-registry ""`},
		{func(p *productConfig) { p.registry = "ghcr.io/org/" }, `-registry "ghcr.io/org/"`},
		{func(p *productConfig) { p.tags = nil }, "-tags is empty"},
		{func(p *productConfig) { p.tags = []string{"v1", "no/slash"} }, `"no/slash" is not an image tag`},
		{func(p *productConfig) { p.version = "" }, "-version is empty"},
	} {
		p := ok
		p.tags = append([]string(nil), ok.tags...)
		tc.change(&p)
		if err := checkProductConfig(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", p, err, tc.want)
		}
	}
}

func TestDefaultTagIsTheChartsAppVersion(t *testing.T) {
	root, err := moduleRoot("go")
	if err != nil {
		t.Fatal(err)
	}
	tag, err := defaultTag(root)
	if err != nil {
		t.Fatal(err)
	}
	deploy, err := os.ReadFile(filepath.Join(root, "deploy", "janitor-cronjob.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "image: " + DefaultProductRegistry + "/" + CLIRepository + ":" + tag + "\n"; !strings.Contains(string(deploy), want) {
		t.Errorf("deploy/janitor-cronjob.yaml does not run %q: the images make images writes would not be the ones it runs", strings.TrimSpace(want))
	}
}
