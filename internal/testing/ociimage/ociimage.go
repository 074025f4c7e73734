// Package ociimage is test and demo tooling, not part of the product: it writes container images
// as OCI image-layout tar archives, without a registry, a container engine or any tool outside
// the Go standard library.
//
// The local test cluster cannot pull images (the machine has no registry and no internet), so
// the images it runs are described in Go — a handful of files, directories and symlinks plus an
// entrypoint — and written by this package as a single-layer OCI image layout packed in a tar
// archive, which `ctr images import` (and anything else that reads OCI layouts) accepts.
//
// The output is deterministic: entries are sorted, every timestamp is the Unix epoch, owners
// are root, file modes come from the description rather than from the host, and the gzip
// header carries no name or time. Two writes of the same description give identical bytes, so
// image digests only change when the content does.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationImageName is the index annotation that containerd's importer reads as the image's
// full name (for example docker.io/moby/buildkit:v0.34.2).
const AnnotationImageName = "io.containerd.image.name"

// epoch is the timestamp of every tar entry and of the image config: fixed, so output bytes do
// not depend on when or from which host files an image was written.
var epoch = time.Unix(0, 0).UTC()

// EntryType says what a layer Entry creates.
type EntryType int

const (
	// TypeDir is a directory.
	TypeDir EntryType = iota + 1
	// TypeFile is a regular file whose contents come from Entry.HostPath or Entry.Data.
	TypeFile
	// TypeSymlink is a symbolic link to Entry.Target.
	TypeSymlink
)

func (t EntryType) String() string {
	switch t {
	case TypeDir:
		return "directory"
	case TypeFile:
		return "file"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("EntryType(%d)", int(t))
}

// Entry is one file system object in the image's layer. Owners are always root (uid and gid 0).
type Entry struct {
	// Path is the absolute, clean path inside the image, such as /usr/bin/buildkitd.
	Path string
	// Type says what the entry is.
	Type EntryType
	// Mode holds the permission bits plus optionally fs.ModeSetuid, fs.ModeSetgid and
	// fs.ModeSticky. Zero means 0755 for directories and 0644 for files; symlinks are always
	// 0777. The host file's own mode is never used, so the output does not depend on the umask
	// or on how the host file was created.
	Mode fs.FileMode
	// HostPath, for a file, is the host file whose contents are copied. It must be a regular
	// file (symlinks to one are followed).
	HostPath string
	// Data, for a file without HostPath, is the file's contents.
	Data []byte
	// Target is a symlink's target, relative or absolute.
	Target string
}

// Dir returns a directory entry.
func Dir(p string, mode fs.FileMode) Entry { return Entry{Path: p, Type: TypeDir, Mode: mode} }

// HostFile returns a file entry copied from the host file hostPath.
func HostFile(p, hostPath string, mode fs.FileMode) Entry {
	return Entry{Path: p, Type: TypeFile, HostPath: hostPath, Mode: mode}
}

// File returns a file entry with the given contents.
func File(p string, data []byte, mode fs.FileMode) Entry {
	return Entry{Path: p, Type: TypeFile, Data: data, Mode: mode}
}

// Symlink returns a symbolic link at p pointing to target.
func Symlink(p, target string) Entry { return Entry{Path: p, Type: TypeSymlink, Target: target} }

// Image describes an image to write.
type Image struct {
	// Name is the fully qualified reference with a tag, such as docker.io/moby/buildkit:v0.34.2.
	// It must include the registry host, because the CRI looks images up by their normalized,
	// fully qualified name, which is what containerd's importer stores verbatim.
	Name string
	// OS and Architecture are the image platform; empty means linux and amd64.
	OS           string
	Architecture string
	// Variant is the optional CPU variant (for example v8 for arm64).
	Variant string

	Entrypoint []string
	Cmd        []string
	// Env holds KEY=value pairs.
	Env        []string
	WorkingDir string
	// User is the optional user (name or uid[:gid]) the container runs as.
	User string
	// Labels are image config labels.
	Labels map[string]string
	// StopSignal is the optional signal that stops the container, such as SIGTERM.
	StopSignal string

	// Entries are the contents of the image's single layer. Missing parent directories are
	// added with mode 0755. The order does not matter: the layer is always sorted by path.
	Entries []Entry
}

// Result tells what was written.
type Result struct {
	// Manifest is the descriptor of the image manifest as listed in index.json.
	Manifest v1.Descriptor
	// Config is the descriptor of the image config; its digest is the image ID.
	Config v1.Descriptor
	// Layer is the descriptor of the gzip-compressed layer.
	Layer v1.Descriptor
	// DiffID is the digest of the uncompressed layer.
	DiffID digest.Digest
}

// WriteFile writes the image as an OCI layout archive to the file at name, replacing it
// atomically: a reader never sees a partial archive, and a failed write leaves the old file.
func WriteFile(name string, img Image) (Result, error) {
	dir := filepath.Dir(name)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return Result{}, fmt.Errorf("creating temporary file for %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename

	res, err := Write(tmp, img)
	if err != nil {
		tmp.Close()
		return Result{}, fmt.Errorf("writing %s: %w", name, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return Result{}, fmt.Errorf("setting mode of %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return Result{}, fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return Result{}, fmt.Errorf("renaming %s to %s: %w", tmp.Name(), name, err)
	}
	return res, nil
}

// Write writes the image as an OCI image-layout tar archive to w: the files oci-layout and
// index.json and the layer, config and manifest blobs under blobs/sha256/.
func Write(w io.Writer, img Image) (Result, error) {
	tag, err := tagOf(img.Name)
	if err != nil {
		return Result{}, err
	}
	entries, err := normalize(img.Entries)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", img.Name, err)
	}

	// The layer is built in memory first: the outer tar header needs the blob's size before its
	// contents. Images here are tens of megabytes, which is fine on the machines this runs on.
	var layer bytes.Buffer
	diffID, err := writeLayer(&layer, entries)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: writing layer: %w", img.Name, err)
	}
	layerDesc := v1.Descriptor{
		MediaType: v1.MediaTypeImageLayerGzip,
		Digest:    digest.FromBytes(layer.Bytes()),
		Size:      int64(layer.Len()),
	}

	platform := imagePlatform(img)
	configJSON, err := configBlob(img, platform, diffID)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: encoding config: %w", img.Name, err)
	}
	configDesc := v1.Descriptor{
		MediaType: v1.MediaTypeImageConfig,
		Digest:    digest.FromBytes(configJSON),
		Size:      int64(len(configJSON)),
	}
	manifestJSON, err := json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []v1.Descriptor{layerDesc},
	})
	if err != nil {
		return Result{}, fmt.Errorf("image %s: encoding manifest: %w", img.Name, err)
	}
	manifestDesc := v1.Descriptor{
		MediaType: v1.MediaTypeImageManifest,
		Digest:    digest.FromBytes(manifestJSON),
		Size:      int64(len(manifestJSON)),
		Platform:  &platform,
		// containerd's importer names the image after io.containerd.image.name; the OCI
		// ref.name carries the tag alone, as `docker save` and BuildKit's OCI exporter write it.
		Annotations: map[string]string{
			AnnotationImageName:  img.Name,
			v1.AnnotationRefName: tag,
		},
	}
	indexJSON, err := json.Marshal(v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{manifestDesc},
	})
	if err != nil {
		return Result{}, fmt.Errorf("image %s: encoding index: %w", img.Name, err)
	}
	layoutJSON, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return Result{}, fmt.Errorf("image %s: encoding oci-layout: %w", img.Name, err)
	}
	if err := writeArchive(w, []archiveFile{
		{v1.ImageLayoutFile, layoutJSON},
		{blobPath(layerDesc.Digest), layer.Bytes()},
		{blobPath(configDesc.Digest), configJSON},
		{blobPath(manifestDesc.Digest), manifestJSON},
		// index.json last: a reader that streams the archive has every blob by the time it
		// learns what the image is.
		{v1.ImageIndexFile, indexJSON},
	}); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", img.Name, err)
	}
	return Result{Manifest: manifestDesc, Config: configDesc, Layer: layerDesc, DiffID: diffID}, nil
}

// configBlob encodes the image config: the runtime settings of img, its platform and its one
// layer, with fixed timestamps.
func configBlob(img Image, platform v1.Platform, diffID digest.Digest) ([]byte, error) {
	return json.Marshal(imageConfig(img, platform, []Layer{{
		DiffID: diffID, CreatedBy: "github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage",
	}}))
}

// archiveFile is one file of the outer OCI layout archive.
type archiveFile struct {
	name string
	data []byte
}

// writeArchive writes the blobs/sha256/ directories and then files, in order, as a tar stream.
func writeArchive(w io.Writer, files []archiveFile) error {
	tw := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(dirHeader(d, 0o755)); err != nil {
			return fmt.Errorf("writing archive: %w", err)
		}
	}
	for _, f := range files {
		if err := writeBytes(tw, f.name, f.data, 0o644); err != nil {
			return fmt.Errorf("writing %s to archive: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finishing archive: %w", err)
	}
	return nil
}

// tagOf checks that name is a fully qualified, tagged reference and returns its tag. It
// deliberately accepts only what the cluster needs rather than the whole reference grammar:
// host[:port]/path:tag, no digest.
func tagOf(name string) (string, error) {
	if name == "" {
		return "", errors.New("image name is empty")
	}
	if strings.Contains(name, "@") {
		return "", fmt.Errorf("image name %q: digest references are not supported, use a tag", name)
	}
	slash := strings.LastIndex(name, "/")
	colon := strings.LastIndex(name, ":")
	if colon < slash+1 || colon == len(name)-1 {
		return "", fmt.Errorf("image name %q has no tag (want host/path:tag)", name)
	}
	repo, tag := name[:colon], name[colon+1:]
	host, _, ok := strings.Cut(repo, "/")
	if !ok || (host != "localhost" && !strings.ContainsAny(host, ".:")) {
		return "", fmt.Errorf("image name %q is not fully qualified (want a registry host such as docker.io/ or localhost/ first): the CRI looks images up by fully qualified name", name)
	}
	if repo != strings.ToLower(repo) {
		return "", fmt.Errorf("image name %q: repository must be lower case", name)
	}
	return tag, nil
}

func blobPath(d digest.Digest) string {
	return path.Join(v1.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// normalize validates the entries, adds missing parent directories and sorts them so that
// parents come before children and the order never depends on the caller's.
func normalize(in []Entry) ([]Entry, error) {
	byPath := make(map[string]Entry, len(in))
	for _, e := range in {
		if !path.IsAbs(e.Path) || path.Clean(e.Path) != e.Path || e.Path == "/" {
			return nil, fmt.Errorf("entry %q: path must be absolute, clean and not /", e.Path)
		}
		if _, dup := byPath[e.Path]; dup {
			return nil, fmt.Errorf("entry %q appears twice", e.Path)
		}
		switch e.Type {
		case TypeDir:
			if e.HostPath != "" || e.Data != nil || e.Target != "" {
				return nil, fmt.Errorf("directory %q: HostPath, Data and Target must be empty", e.Path)
			}
		case TypeFile:
			if e.HostPath != "" && e.Data != nil {
				return nil, fmt.Errorf("file %q: set HostPath or Data, not both", e.Path)
			}
			if e.Target != "" {
				return nil, fmt.Errorf("file %q: Target is only for symlinks", e.Path)
			}
		case TypeSymlink:
			if e.Target == "" {
				return nil, fmt.Errorf("symlink %q has no target", e.Path)
			}
			if e.HostPath != "" || e.Data != nil {
				return nil, fmt.Errorf("symlink %q: HostPath and Data must be empty", e.Path)
			}
		default:
			return nil, fmt.Errorf("entry %q: unknown type %v", e.Path, e.Type)
		}
		if e.Mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			return nil, fmt.Errorf("entry %q: mode %v has bits other than permissions, setuid, setgid and sticky", e.Path, e.Mode)
		}
		byPath[e.Path] = e
	}
	for p, e := range byPath {
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			parent, ok := byPath[dir]
			if !ok {
				byPath[dir] = Dir(dir, 0o755)
				continue
			}
			if parent.Type != TypeDir {
				return nil, fmt.Errorf("entry %q: parent %q is a %v, not a directory", e.Path, dir, parent.Type)
			}
		}
	}
	out := make([]Entry, 0, len(byPath))
	for _, e := range byPath {
		out = append(out, e)
	}
	// Compare component by component: a plain string sort would put /bin-x between /bin and
	// /bin/sh. Either order is valid tar, but this one is the conventional one.
	slices.SortFunc(out, func(a, b Entry) int {
		return slices.Compare(strings.Split(a.Path, "/"), strings.Split(b.Path, "/"))
	})
	return out, nil
}

// writeLayer writes the gzip-compressed layer tar to w and returns the digest of the
// uncompressed tar (the layer's diff ID).
func writeLayer(w io.Writer, entries []Entry) (digest.Digest, error) {
	return writeGzipTar(w, func(tw *tar.Writer) error {
		for _, e := range entries {
			if err := writeEntry(tw, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeGzipTar writes the gzip-compressed tar stream that fill writes its entries into to w and
// returns the digest of the uncompressed tar (the layer's diff ID).
func writeGzipTar(w io.Writer, fill func(*tar.Writer) error) (digest.Digest, error) {
	// gzip.NewWriter's header has no name, a zero modification time and OS "unknown": fixed.
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err != nil {
		return "", fmt.Errorf("creating gzip writer: %w", err)
	}
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, h))
	if err := fill(tw); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("finishing layer tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("finishing gzip stream: %w", err)
	}
	return sum(h), nil
}

func sum(h hash.Hash) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
}

func writeEntry(tw *tar.Writer, e Entry) error {
	name := strings.TrimPrefix(e.Path, "/")
	switch e.Type {
	case TypeDir:
		mode := e.Mode
		if mode == 0 {
			mode = 0o755
		}
		if err := tw.WriteHeader(dirHeader(name+"/", tarMode(mode))); err != nil {
			return fmt.Errorf("writing directory %s: %w", e.Path, err)
		}
	case TypeSymlink:
		hdr := baseHeader(name, 0o777)
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Target
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("writing symlink %s: %w", e.Path, err)
		}
	case TypeFile:
		mode := e.Mode
		if mode == 0 {
			mode = 0o644
		}
		if e.HostPath == "" {
			if err := writeBytes(tw, name, e.Data, tarMode(mode)); err != nil {
				return fmt.Errorf("writing file %s: %w", e.Path, err)
			}
			return nil
		}
		return writeHostFile(tw, name, e, tarMode(mode))
	}
	return nil
}

func writeHostFile(tw *tar.Writer, name string, e Entry, mode int64) error {
	f, err := os.Open(e.HostPath)
	if err != nil {
		return fmt.Errorf("file %s: opening host file: %w", e.Path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("file %s: inspecting host file %s: %w", e.Path, e.HostPath, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("file %s: host file %s is not a regular file (%v)", e.Path, e.HostPath, st.Mode().Type())
	}
	hdr := baseHeader(name, mode)
	hdr.Typeflag = tar.TypeReg
	hdr.Size = st.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("file %s: writing header: %w", e.Path, err)
	}
	// CopyN fails on a file that shrank while being read; tar.Writer fails on one that grew
	// (more bytes than the header's size), so a file changing under us never goes unnoticed.
	if _, err := io.CopyN(tw, f, st.Size()); err != nil {
		return fmt.Errorf("file %s: copying host file %s: %w", e.Path, e.HostPath, err)
	}
	return nil
}

func writeBytes(tw *tar.Writer, name string, data []byte, mode int64) error {
	hdr := baseHeader(name, mode)
	hdr.Typeflag = tar.TypeReg
	hdr.Size = int64(len(data))
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func dirHeader(name string, mode int64) *tar.Header {
	hdr := baseHeader(name, mode)
	hdr.Typeflag = tar.TypeDir
	return hdr
}

// baseHeader fixes everything that would otherwise leak the host into the archive: owner,
// owner names and timestamps. PAX is chosen explicitly so that long names and large files are
// encoded the same way every time rather than by whichever format first fits.
func baseHeader(name string, mode int64) *tar.Header {
	return &tar.Header{
		Name:    name,
		Mode:    mode,
		Uid:     0,
		Gid:     0,
		Uname:   "root",
		Gname:   "root",
		ModTime: epoch,
		Format:  tar.FormatPAX,
	}
}

// tarMode converts Go's file mode bits to the Unix mode bits tar stores.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
