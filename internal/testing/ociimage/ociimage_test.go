package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// testImage returns an image with every kind of entry, one file read from the host.
func testImage(t *testing.T) Image {
	t.Helper()
	host := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(host, []byte("#!/bin/sh\necho tool\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Image{
		Name:       "docker.io/example/tool:v1.2.3",
		Entrypoint: []string{"/usr/bin/tool"},
		Cmd:        []string{"--help"},
		Env:        []string{"PATH=/usr/bin:/bin"},
		WorkingDir: "/work",
		Entries: []Entry{
			// Deliberately unsorted and with implicit parents (/usr, /usr/bin, /etc).
			Symlink("/bin/sh", "busybox"),
			HostFile("/usr/bin/tool", host, 0o755),
			File("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0),
			Dir("/tmp", 0o777|fs.ModeSticky),
			Dir("/bin", 0),
			File("/bin/busybox", []byte("not really busybox"), 0o755),
			Dir("/work", 0o700),
		},
	}
}

func write(t *testing.T, img Image) ([]byte, Result) {
	t.Helper()
	var buf bytes.Buffer
	res, err := Write(&buf, img)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes(), res
}

func TestWriteIsDeterministic(t *testing.T) {
	img := testImage(t)
	first, res1 := write(t, img)

	// Neither the host file's timestamps nor its mode, nor the order of the entries, nor the
	// passing of time may change the output.
	host := img.Entries[1].HostPath
	if err := os.Chtimes(host, time.Now(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(host, 0o755); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(img.Entries)
	second, res2 := write(t, img)

	if !bytes.Equal(first, second) {
		t.Fatalf("two writes of the same image differ (%d and %d bytes)", len(first), len(second))
	}
	if !reflect.DeepEqual(res1, res2) {
		t.Fatalf("results differ: %+v vs %+v", res1, res2)
	}
}

func TestWriteChangesWithContent(t *testing.T) {
	img := testImage(t)
	_, res1 := write(t, img)
	img.Entries = append(img.Entries, File("/etc/extra", []byte("x"), 0o644))
	_, res2 := write(t, img)
	if res1.Layer.Digest == res2.Layer.Digest || res1.Manifest.Digest == res2.Manifest.Digest {
		t.Fatal("adding a file did not change the layer and manifest digests")
	}
}

// archive is an OCI layout read back from a tar archive.
type archive struct {
	files map[string][]byte
	order []string
}

func readArchive(t *testing.T, data []byte) archive {
	t.Helper()
	a := archive{files: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading archive: %v", err)
		}
		if !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mtime %v, want the epoch", hdr.Name, hdr.ModTime)
		}
		a.order = append(a.order, hdr.Name)
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", hdr.Name, err)
		}
		a.files[hdr.Name] = b
	}
	return a
}

// blob returns the blob a descriptor points at, after checking its size and digest.
func (a archive) blob(t *testing.T, d v1.Descriptor) []byte {
	t.Helper()
	b, ok := a.files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok {
		t.Fatalf("blob %s missing from archive (have %v)", d.Digest, a.order)
	}
	if int64(len(b)) != d.Size {
		t.Fatalf("blob %s: size %d, descriptor says %d", d.Digest, len(b), d.Size)
	}
	if got := digest.FromBytes(b); got != d.Digest {
		t.Fatalf("blob %s: content digest is %s", d.Digest, got)
	}
	return b
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

func TestArchiveStructure(t *testing.T) {
	img := testImage(t)
	data, res := write(t, img)
	a := readArchive(t, data)

	var layout v1.ImageLayout
	unmarshal(t, a.files["oci-layout"], &layout)
	if layout.Version != "1.0.0" {
		t.Errorf("oci-layout version %q", layout.Version)
	}

	var index v1.Index
	unmarshal(t, a.files["index.json"], &index)
	if index.SchemaVersion != 2 || index.MediaType != v1.MediaTypeImageIndex || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s", a.files["index.json"])
	}
	md := index.Manifests[0]
	if md.Digest != res.Manifest.Digest {
		t.Errorf("index manifest digest %s, Write returned %s", md.Digest, res.Manifest.Digest)
	}
	if got := md.Annotations[AnnotationImageName]; got != img.Name {
		t.Errorf("%s = %q, want %q", AnnotationImageName, got, img.Name)
	}
	if got := md.Annotations[v1.AnnotationRefName]; got != "v1.2.3" {
		t.Errorf("%s = %q, want the tag v1.2.3", v1.AnnotationRefName, got)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != "amd64" {
		t.Errorf("index platform %+v, want linux/amd64", md.Platform)
	}

	var manifest v1.Manifest
	unmarshal(t, a.blob(t, md), &manifest)
	if manifest.MediaType != v1.MediaTypeImageManifest || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %+v", manifest)
	}
	if manifest.Layers[0].MediaType != v1.MediaTypeImageLayerGzip {
		t.Errorf("layer media type %s", manifest.Layers[0].MediaType)
	}

	var config v1.Image
	unmarshal(t, a.blob(t, manifest.Config), &config)
	if config.OS != "linux" || config.Architecture != "amd64" {
		t.Errorf("config platform %s/%s", config.OS, config.Architecture)
	}
	if !slices.Equal(config.Config.Entrypoint, img.Entrypoint) || !slices.Equal(config.Config.Cmd, img.Cmd) ||
		!slices.Equal(config.Config.Env, img.Env) || config.Config.WorkingDir != img.WorkingDir {
		t.Errorf("config %+v does not match the image description", config.Config)
	}
	if config.Created == nil || !config.Created.Equal(time.Unix(0, 0)) {
		t.Errorf("config created %v, want the epoch", config.Created)
	}

	compressed := a.blob(t, manifest.Layers[0])
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header carries name %q, mtime %v", zr.Name, zr.ModTime)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("decompressing layer: %v", err)
	}
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest.FromBytes(layer) {
		t.Errorf("diff IDs %v, uncompressed layer digest %s", config.RootFS.DiffIDs, digest.FromBytes(layer))
	}
	if res.DiffID != digest.FromBytes(layer) {
		t.Errorf("Result.DiffID %s, uncompressed layer digest %s", res.DiffID, digest.FromBytes(layer))
	}
	checkLayer(t, layer)
}

func checkLayer(t *testing.T, layer []byte) {
	t.Helper()
	type entry struct {
		typ  byte
		mode int64
		link string
		data string
	}
	want := []struct {
		name string
		entry
	}{
		{"bin/", entry{tar.TypeDir, 0o755, "", ""}},
		{"bin/busybox", entry{tar.TypeReg, 0o755, "", "not really busybox"}},
		{"bin/sh", entry{tar.TypeSymlink, 0o777, "busybox", ""}},
		{"etc/", entry{tar.TypeDir, 0o755, "", ""}},
		{"etc/passwd", entry{tar.TypeReg, 0o644, "", "root:x:0:0:root:/root:/bin/sh\n"}},
		{"tmp/", entry{tar.TypeDir, 0o1777, "", ""}},
		{"usr/", entry{tar.TypeDir, 0o755, "", ""}},
		{"usr/bin/", entry{tar.TypeDir, 0o755, "", ""}},
		// The host file is 0600; the description's mode wins.
		{"usr/bin/tool", entry{tar.TypeReg, 0o755, "", "#!/bin/sh\necho tool\n"}},
		{"work/", entry{tar.TypeDir, 0o700, "", ""}},
	}
	tr := tar.NewReader(bytes.NewReader(layer))
	var names []string
	for i := 0; ; i++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading layer: %v", err)
		}
		names = append(names, hdr.Name)
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if i >= len(want) || want[i].name != hdr.Name {
			continue // reported below with the whole list
		}
		got := entry{hdr.Typeflag, hdr.Mode, hdr.Linkname, string(data)}
		if got != want[i].entry {
			t.Errorf("%s: got %+v, want %+v", hdr.Name, got, want[i].entry)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d mtime %v, want root and the epoch", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
	}
	var wantNames []string
	for _, w := range want {
		wantNames = append(wantNames, w.name)
	}
	if !slices.Equal(names, wantNames) {
		t.Errorf("layer entries\n got %v\nwant %v", names, wantNames)
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "image.tar")
	img := testImage(t)
	res, err := WriteFile(name, img)
	if err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	want, wantRes := write(t, img)
	if !bytes.Equal(data, want) || !reflect.DeepEqual(res, wantRes) {
		t.Error("WriteFile wrote something else than Write")
	}
	// A failed write must leave the previous archive and no temporary file behind.
	img.Entries = append(img.Entries, HostFile("/missing", filepath.Join(dir, "does-not-exist"), 0))
	if _, err := WriteFile(name, img); err == nil {
		t.Fatal("WriteFile with a missing host file succeeded")
	}
	after, err := os.ReadFile(name)
	if err != nil || !bytes.Equal(after, want) {
		t.Errorf("failed WriteFile changed the existing archive (err %v)", err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 1 {
		t.Errorf("files left in %s: %v", dir, left)
	}
}

func TestWriteRejects(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		mutate  func(*Image)
		wantErr string
	}{
		{"no tag", func(i *Image) { i.Name = "docker.io/example/tool" }, "no tag"},
		{"port but no tag", func(i *Image) { i.Name = "localhost:5000/tool" }, "no tag"},
		{"not qualified", func(i *Image) { i.Name = "example/tool:v1" }, "not fully qualified"},
		{"bare name", func(i *Image) { i.Name = "tool:v1" }, "not fully qualified"},
		{"digest", func(i *Image) { i.Name = "docker.io/example/tool@sha256:00" }, "digest"},
		{"upper case", func(i *Image) { i.Name = "docker.io/Example/tool:v1" }, "lower case"},
		{"relative path", func(i *Image) { i.Entries = []Entry{Dir("tmp", 0)} }, "absolute"},
		{"unclean path", func(i *Image) { i.Entries = []Entry{Dir("/tmp/", 0)} }, "clean"},
		{"root", func(i *Image) { i.Entries = []Entry{Dir("/", 0)} }, "not /"},
		{"duplicate", func(i *Image) { i.Entries = []Entry{Dir("/a", 0), File("/a", nil, 0)} }, "twice"},
		{"file parent", func(i *Image) { i.Entries = []Entry{File("/a", nil, 0), File("/a/b", nil, 0)} }, "not a directory"},
		{"both sources", func(i *Image) {
			i.Entries = []Entry{{Path: "/a", Type: TypeFile, HostPath: "/etc/hostname", Data: []byte("x")}}
		}, "not both"},
		{"symlink without target", func(i *Image) { i.Entries = []Entry{Symlink("/a", "")} }, "no target"},
		{"unknown type", func(i *Image) { i.Entries = []Entry{{Path: "/a"}} }, "unknown type"},
		{"device mode", func(i *Image) { i.Entries = []Entry{File("/a", nil, fs.ModeDevice|0o644)} }, "mode"},
		{"host dir", func(i *Image) { i.Entries = []Entry{HostFile("/a", dir, 0)} }, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := Image{Name: "docker.io/example/tool:v1"}
			tt.mutate(&img)
			_, err := Write(io.Discard, img)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Write error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestTagOfAccepts(t *testing.T) {
	for name, tag := range map[string]string{
		"docker.io/moby/buildkit:v0.34.2":                   "v0.34.2",
		"localhost/setup-ephemeral-buildkit/pause:local":    "local",
		"localhost:5000/a/b:latest":                         "latest",
		"registry.example.com/deep/path/image:1.0-rc.1_abc": "1.0-rc.1_abc",
	} {
		got, err := tagOf(name)
		if err != nil || got != tag {
			t.Errorf("tagOf(%q) = %q, %v; want %q", name, got, err, tag)
		}
	}
}
