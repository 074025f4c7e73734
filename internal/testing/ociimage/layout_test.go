package ociimage

import (
	"archive/tar"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// testTree makes a small root file system: a file with a second hard link, a symlink, a
// setuid file and, when running as root, a file of another owner.
func testTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, data string, mode fs.FileMode) {
		p := filepath.Join(root, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("usr/bin/perl", "#!perl", 0o755)
	write("usr/bin/su", "su", 0o755|fs.ModeSetuid)
	write("etc/shadow", "root:*:", 0o640)
	if err := os.Link(filepath.Join(root, "usr/bin/perl"), filepath.Join(root, "usr/bin/perl5")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("perl", filepath.Join(root, "usr/bin/perl-link")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Join(root, "etc/shadow"), 0, 42); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// layerHeaders reads a layer blob's tar headers by name.
func layerHeaders(t *testing.T, l *Layout, layer Layer) map[string]*tar.Header {
	t.Helper()
	f, err := l.OpenBlob(layer.Desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := LayerHeaders(f)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestAddTreeLayer(t *testing.T) {
	root := testTree(t)
	l, err := OpenLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	layer, err := l.AddTreeLayer(Tree{Root: root, KeepOwners: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	h := layerHeaders(t, l, layer)
	if hdr := h["usr/bin/perl5"]; hdr == nil || hdr.Typeflag != tar.TypeLink || hdr.Linkname != "usr/bin/perl" {
		t.Errorf("perl5 is not a hard link to usr/bin/perl: %+v", hdr)
	}
	if hdr := h["usr/bin/perl-link"]; hdr == nil || hdr.Typeflag != tar.TypeSymlink || hdr.Linkname != "perl" {
		t.Errorf("perl-link is not a symlink to perl: %+v", hdr)
	}
	if hdr := h["usr/bin/su"]; hdr == nil || hdr.Mode != 0o4755 {
		t.Errorf("su lost its setuid bit: %+v", hdr)
	}
	if hdr := h["etc/"]; hdr == nil || hdr.Typeflag != tar.TypeDir {
		t.Errorf("etc/ is not a directory: %+v", hdr)
	}
	if hdr := h["etc/shadow"]; os.Geteuid() == 0 && (hdr == nil || hdr.Gid != 42 || hdr.Gname != "") {
		t.Errorf("etc/shadow lost its group: %+v", hdr)
	}
	for name, hdr := range h {
		if !hdr.ModTime.Equal(epoch) {
			t.Errorf("%s: mtime %v, want the epoch", name, hdr.ModTime)
		}
	}

	// The same tree gives the same blob, whenever and wherever it is packed.
	if err := os.Chtimes(filepath.Join(root, "etc/shadow"), epoch.AddDate(30, 0, 0), epoch.AddDate(30, 0, 0)); err != nil {
		t.Fatal(err)
	}
	again, err := l.AddTreeLayer(Tree{Root: root, KeepOwners: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if again.Desc.Digest != layer.Desc.Digest || again.DiffID != layer.DiffID {
		t.Errorf("packing the same tree twice gave %s and %s", layer.Desc.Digest, again.Desc.Digest)
	}
}

func TestAddTreeLayerPrefixModeSkip(t *testing.T) {
	root := testTree(t)
	l, err := OpenLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	layer, err := l.AddTreeLayer(Tree{
		Root: root, Prefix: "/usr/local/go",
		Mode: func(rel string, host fs.FileMode) fs.FileMode { return 0o700 },
		Skip: func(rel string) bool { return rel == "etc" },
	}, "test")
	if err != nil {
		t.Fatal(err)
	}
	h := layerHeaders(t, l, layer)
	for _, want := range []string{"usr/", "usr/local/", "usr/local/go/", "usr/local/go/usr/bin/perl"} {
		if h[want] == nil {
			t.Errorf("%s missing; have %v", want, keys(h))
		}
	}
	if h["usr/local/go/etc/"] != nil || h["usr/local/go/etc/shadow"] != nil {
		t.Error("the skipped etc/ was packed")
	}
	if hdr := h["usr/local/go/usr/bin/su"]; hdr == nil || hdr.Mode != 0o700 || hdr.Uid != 0 {
		t.Errorf("Mode was not applied or owner kept: %+v", hdr)
	}
}

func TestAddTreeLayerRefusesDevices(t *testing.T) {
	root := t.TempDir()
	if err := os.Symlink("/dev/null", filepath.Join(root, "null")); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A symlink to a device is fine; a FIFO is not.
	if _, err := l.AddTreeLayer(Tree{Root: root}, "test"); err != nil {
		t.Fatalf("symlink to a device: %v", err)
	}
	fifo := filepath.Join(root, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("cannot make a FIFO here: %v", err)
	}
	if _, err := l.AddTreeLayer(Tree{Root: root}, "test"); err == nil {
		t.Fatal("a FIFO was packed into a layer")
	}
}

func keys(m map[string]*tar.Header) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestLayoutMultiPlatformIndex(t *testing.T) {
	l, err := OpenLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var manifests []v1.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		layer, err := l.AddEntriesLayer([]Entry{File("/etc/arch", []byte(arch), 0o644)}, "arch file")
		if err != nil {
			t.Fatal(err)
		}
		m, err := l.AddImage(Image{Architecture: arch, Env: []string{"A=1"}}, []Layer{layer, layer})
		if err != nil {
			t.Fatal(err)
		}
		if m.Platform == nil || m.Platform.Architecture != arch {
			t.Fatalf("manifest descriptor platform %+v, want %s", m.Platform, arch)
		}
		manifests = append(manifests, m)
	}
	index, err := l.AddIndex(manifests)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Tag(index, "docker.io/library/x:1", "docker.io/library/x:latest"); err != nil {
		t.Fatal(err)
	}
	if err := l.Tag(index, "docker.io/library/x:1"); err != nil { // again: replaced, not doubled
		t.Fatal(err)
	}
	ix, err := l.Index()
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Manifests) != 2 {
		t.Fatalf("index.json has %d entries, want 2: %+v", len(ix.Manifests), ix.Manifests)
	}
	d, ok, err := l.Named("docker.io/library/x:latest")
	if err != nil || !ok || d.Digest != index.Digest || d.Annotations[v1.AnnotationRefName] != "latest" {
		t.Fatalf("Named(x:latest) = %+v %v %v", d, ok, err)
	}
	data, err := l.ReadBlob(index.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var stored v1.Index
	if err := json.Unmarshal(data, &stored); err != nil {
		t.Fatal(err)
	}
	for i, m := range stored.Manifests {
		mdata, err := l.ReadBlob(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		var manifest v1.Manifest
		if err := json.Unmarshal(mdata, &manifest); err != nil {
			t.Fatal(err)
		}
		cdata, err := l.ReadBlob(manifest.Config.Digest)
		if err != nil {
			t.Fatal(err)
		}
		var config v1.Image
		if err := json.Unmarshal(cdata, &config); err != nil {
			t.Fatal(err)
		}
		if config.Architecture != m.Platform.Architecture || len(config.RootFS.DiffIDs) != 2 || len(config.History) != 2 {
			t.Errorf("manifest %d: config %+v does not match %+v", i, config, m.Platform)
		}
	}
	if err := l.Tag(index, "x:1"); err == nil {
		t.Error("a name without a registry host was accepted")
	}
}
