package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

// fakeBin writes stand-ins for the binaries build-tools.sh produces.
func fakeBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"buildkitd", "buildctl", "runc-static"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("fake "+f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func needBusybox(t *testing.T) string {
	t.Helper()
	const bb = "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skip("no /bin/busybox (hack/install-deps.sh installs busybox-static)")
	}
	return bb
}

// layerEntries returns the layer of a single-image OCI archive as name -> header.
func layerEntries(t *testing.T, archive string) (map[string]*tar.Header, v1.Image) {
	t.Helper()
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		blobs[hdr.Name] = b
	}
	var index v1.Index
	var manifest v1.Manifest
	var config v1.Image
	mustJSON(t, blobs["index.json"], &index)
	mustJSON(t, blobs["blobs/sha256/"+index.Manifests[0].Digest.Encoded()], &manifest)
	mustJSON(t, blobs["blobs/sha256/"+manifest.Config.Digest.Encoded()], &config)
	h, err := ociimage.LayerHeaders(bytes.NewReader(blobs["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()]))
	if err != nil {
		t.Fatal(err)
	}
	return absolute(h), config
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %q: %v", b, err)
	}
}

func TestBuildKitImageLayout(t *testing.T) {
	bb := needBusybox(t)
	img, err := buildKitImage(fakeBin(t), bb)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "buildkit.tar")
	if err := writeImage(out, img, "test"); err != nil {
		t.Fatal(err)
	}
	entries, config := layerEntries(t, out)

	for p, typ := range map[string]byte{
		"/usr/bin/buildkitd":     tar.TypeReg,
		"/usr/bin/buildctl":      tar.TypeReg,
		"/usr/bin/runc":          tar.TypeReg,
		"/usr/bin/buildkit-runc": tar.TypeSymlink,
		"/bin/busybox":           tar.TypeReg,
		"/bin/sh":                tar.TypeSymlink,
		"/usr/bin/awk":           tar.TypeSymlink,
		"/usr/bin/[":             tar.TypeSymlink,
		"/tmp":                   tar.TypeDir,
		"/var/lib/buildkit":      tar.TypeDir,
		"/run/buildkit":          tar.TypeDir,
		"/etc/buildkit":          tar.TypeDir,
		"/root":                  tar.TypeDir,
		"/etc/passwd":            tar.TypeReg,
		"/etc/group":             tar.TypeReg,
		"/etc/nsswitch.conf":     tar.TypeReg,
	} {
		hdr, ok := entries[p]
		if !ok {
			t.Errorf("%s missing from the BuildKit image", p)
			continue
		}
		if hdr.Typeflag != typ {
			t.Errorf("%s: type %q, want %q", p, hdr.Typeflag, typ)
		}
	}
	if m := entries["/tmp"].Mode; m != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", m)
	}
	for _, a := range busyboxApplets {
		found := false
		for _, dir := range []string{"/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/"} {
			if hdr, ok := entries[dir+a]; ok && hdr.Linkname == "/bin/busybox" {
				found = true
			}
		}
		if !found {
			t.Errorf("applet %s not linked to /bin/busybox", a)
		}
	}
	if got := config.Config.Entrypoint; len(got) != 1 || got[0] != "buildkitd" {
		t.Errorf("entrypoint %q", got)
	}
	if config.OS != "linux" || config.Architecture != "amd64" {
		t.Errorf("platform %s/%s", config.OS, config.Architecture)
	}
}

func TestBuildKitImageNeedsBinaries(t *testing.T) {
	bb := needBusybox(t)
	_, err := buildKitImage(t.TempDir(), bb)
	if err == nil || !strings.Contains(err.Error(), "build-tools.sh") {
		t.Fatalf("error %v, want one that points at build-tools.sh", err)
	}
}

func TestWriteImageReusesUnchangedInputs(t *testing.T) {
	dir := t.TempDir()
	pause := filepath.Join(dir, "pause")
	if err := os.WriteFile(pause, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "pause.tar")
	img := pauseImage(pause)
	if err := writeImage(out, img, "src"); err != nil {
		t.Fatal(err)
	}
	// Make the archive recognisable: if writeImage rewrote it, the marker would be gone.
	marker := []byte("untouched")
	if err := os.WriteFile(out, marker, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeImage(out, img, "src"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); !bytes.Equal(b, marker) {
		t.Fatal("unchanged inputs rewrote the archive")
	}

	// A changed host file, then changed sources, must each rewrite it.
	if err := os.WriteFile(pause, []byte("v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct{ what, src string }{{"host file", "src"}, {"sources", "src2"}} {
		if err := writeImage(out, img, step.src); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(out); bytes.Equal(b, marker) {
			t.Fatalf("a changed %s did not rewrite the archive", step.what)
		}
		if err := os.WriteFile(out, marker, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRootlessBuildKitImageLayout(t *testing.T) {
	bb := needBusybox(t)
	if _, err := os.Stat("/usr/bin/newuidmap"); err != nil {
		t.Skip("no /usr/bin/newuidmap (hack/install-deps.sh installs Debian's uidmap)")
	}
	bin := fakeBin(t)
	if err := os.WriteFile(filepath.Join(bin, "rootlesskit"), []byte("fake rootlesskit"), 0o755); err != nil {
		t.Fatal(err)
	}
	rootful, err := buildKitImage(bin, bb)
	if err != nil {
		t.Fatal(err)
	}
	img, err := rootlessBuildKitImage(rootful, bin, "/usr/bin")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "buildkit-rootless.tar")
	if err := writeImageThen(out, img, "test", addUidmapCapabilities); err != nil {
		t.Fatal(err)
	}
	entries, config := layerEntries(t, out)

	if img.Name != "docker.io/moby/buildkit:v0.34.2-rootless" {
		t.Errorf("name %s, want the rootful name with -rootless", img.Name)
	}
	for p, want := range map[string][]byte{
		// setcap cap_setuid=ep, cap_setgid=ep: revision 2 with the effective flag, one capability.
		"/usr/bin/newuidmap": {0x01, 0, 0, 0x02, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"/usr/bin/newgidmap": {0x01, 0, 0, 0x02, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
	} {
		hdr, ok := entries[p]
		if !ok {
			t.Fatalf("%s missing", p)
		}
		// rootlesskit runs it as user 1000 to write the subordinate ids: file capabilities,
		// not setuid root (see uidmapFiles).
		if hdr.Mode != 0o755 {
			t.Errorf("%s: mode %o, want 755", p, hdr.Mode)
		}
		if got := hdr.PAXRecords["SCHILY.xattr.security.capability"]; got != string(want) {
			t.Errorf("%s: security.capability %x, want %x", p, got, want)
		}
	}
	// The rewritten archive is consistent: the config's diff ID is the layer's.
	if len(config.RootFS.DiffIDs) != 1 {
		t.Errorf("diff IDs %v", config.RootFS.DiffIDs)
	}
	// Debian's newuidmap is dynamically linked: the loader and libc must come along.
	var loader, libc bool
	for p, hdr := range entries {
		loader = loader || strings.Contains(p, "/ld-linux") && hdr.Typeflag == tar.TypeReg
		libc = libc || strings.HasSuffix(p, "/libc.so.6") && hdr.Typeflag == tar.TypeReg
	}
	if !loader || !libc {
		t.Errorf("loader present %v, libc.so.6 present %v; want both for Debian's newuidmap", loader, libc)
	}
	for p, want := range map[string]string{
		"/etc/subuid": "user:100000:65536\n",
		"/etc/subgid": "user:100000:65536\n",
	} {
		if _, ok := entries[p]; !ok {
			t.Errorf("%s missing (want %q)", p, want)
		}
	}
	for _, p := range []string{"/usr/bin/rootlesskit", "/usr/bin/buildkitd", "/usr/bin/runc", "/bin/sh"} {
		if _, ok := entries[p]; !ok {
			t.Errorf("%s missing", p)
		}
	}
	for _, p := range []string{"/home/user/.local/share/buildkit", "/home/user/.local/tmp", "/run/user/1000"} {
		if hdr, ok := entries[p]; !ok || hdr.Mode != 0o1777 {
			t.Errorf("%s: present %v, want a directory user 1000 can write (1777)", p, ok)
		}
	}
	if got := config.Config.Entrypoint; !slices.Equal(got, []string{"rootlesskit", "buildkitd"}) {
		t.Errorf("entrypoint %q, want rootlesskit buildkitd", got)
	}
	if config.Config.User != "1000:1000" {
		t.Errorf("user %q, want 1000:1000 (numeric, for runAsNonRoot)", config.Config.User)
	}
}

// Two work trees of one commit (helpers' trees share CACHE_DIR) must agree on the stamps, or each
// would rebuild the base images the other just wrote; a change to a source must not agree.
func TestHashSourcesIgnoresWhereTheTreeIs(t *testing.T) {
	write := func(root, body string) {
		t.Helper()
		dir := filepath.Join(root, "hack", "x")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "a.go"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	one, two := filepath.Join(t.TempDir(), "one"), filepath.Join(t.TempDir(), "two")
	write(one, "package x")
	write(two, "package x")
	h1, err1 := hashSources(one, []string{"hack/x"})
	h2, err2 := hashSources(two, []string{"hack/x"})
	if err1 != nil || err2 != nil || h1 != h2 {
		t.Fatalf("same sources in two trees hash to %q (%v) and %q (%v)", h1, err1, h2, err2)
	}
	write(two, "package x // changed")
	if h3, _ := hashSources(two, []string{"hack/x"}); h3 == h1 {
		t.Error("a changed source kept its hash")
	}
}
