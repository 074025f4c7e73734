package ociimage

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layout is an OCI image-layout directory: content-addressed blobs under blobs/sha256/ and an
// index.json naming the images in it. Unlike the archives Write produces (one single-layer,
// single-platform image for `ctr images import`), a Layout holds multi-layer, multi-platform
// images that share blobs (a Go image on top of a Debian image stores Debian's layer once), and
// it is what a registry push reads.
//
// Blobs are written to a temporary file and renamed into place, so a blob that exists is
// complete. index.json is rewritten atomically by Tag.
type Layout struct {
	dir string
}

// OpenLayout opens the layout at dir, creating the directory, oci-layout and blobs/sha256/ when
// they are missing.
func OpenLayout(dir string) (*Layout, error) {
	if err := os.MkdirAll(filepath.Join(dir, v1.ImageBlobsDir, digest.SHA256.String()), 0o755); err != nil {
		return nil, fmt.Errorf("creating OCI layout %s: %w", dir, err)
	}
	l := &Layout{dir: dir}
	layoutJSON, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return nil, fmt.Errorf("encoding oci-layout: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, v1.ImageLayoutFile), layoutJSON); err != nil {
		return nil, err
	}
	return l, nil
}

// Dir is the layout's directory.
func (l *Layout) Dir() string { return l.dir }

// BlobPath is the file that holds the blob d.
func (l *Layout) BlobPath(d digest.Digest) string {
	return filepath.Join(l.dir, filepath.FromSlash(blobPath(d)))
}

// ReadBlob returns the blob d, checking its digest.
func (l *Layout) ReadBlob(d digest.Digest) ([]byte, error) {
	data, err := os.ReadFile(l.BlobPath(d))
	if err != nil {
		return nil, fmt.Errorf("reading blob %s of OCI layout %s: %w", d, l.dir, err)
	}
	if got := digest.FromBytes(data); got != d {
		return nil, fmt.Errorf("blob %s of OCI layout %s is damaged: its content hashes to %s", d, l.dir, got)
	}
	return data, nil
}

// OpenBlob opens the blob d for reading (large layers are not read into memory).
func (l *Layout) OpenBlob(d digest.Digest) (*os.File, error) {
	f, err := os.Open(l.BlobPath(d))
	if err != nil {
		return nil, fmt.Errorf("opening blob %s of OCI layout %s: %w", d, l.dir, err)
	}
	return f, nil
}

// LayerHeaders reads a gzip-compressed layer's tar headers, by name as written in the tar
// ("usr/bin/", "etc/passwd"): for tests that check what a layer holds.
func LayerHeaders(r io.Reader) (map[string]*tar.Header, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	headers := map[string]*tar.Header{}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return headers, nil
		}
		if err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		headers[hdr.Name] = hdr
	}
}

// putBlob stores data and returns its descriptor with the given media type.
func (l *Layout) putBlob(mediaType string, data []byte) (v1.Descriptor, error) {
	desc := v1.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := writeFileAtomic(l.BlobPath(desc.Digest), data); err != nil {
		return v1.Descriptor{}, err
	}
	return desc, nil
}

// putJSON encodes v and stores it as a blob of the given media type.
func (l *Layout) putJSON(mediaType string, v any) (v1.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("encoding %s: %w", mediaType, err)
	}
	return l.putBlob(mediaType, data)
}

// Layer is a layer blob stored in a Layout.
type Layer struct {
	// Desc is the descriptor of the compressed blob, as a manifest lists it.
	Desc v1.Descriptor
	// DiffID is the digest of the uncompressed tar, as the image config lists it.
	DiffID digest.Digest
	// CreatedBy says, in the image's history, what made the layer.
	CreatedBy string
}

// AddEntriesLayer stores a layer holding entries (the same description Write takes) and
// returns it.
func (l *Layout) AddEntriesLayer(entries []Entry, createdBy string) (Layer, error) {
	norm, err := normalize(entries)
	if err != nil {
		return Layer{}, err
	}
	return l.addLayer(createdBy, func(w io.Writer) (digest.Digest, error) { return writeLayer(w, norm) })
}

// addLayer streams the gzip-compressed layer that write produces into a blob. write returns the
// layer's diff ID.
func (l *Layout) addLayer(createdBy string, write func(io.Writer) (digest.Digest, error)) (Layer, error) {
	tmp, err := os.CreateTemp(filepath.Join(l.dir, v1.ImageBlobsDir), ".layer.tmp*")
	if err != nil {
		return Layer{}, fmt.Errorf("creating a temporary layer file in %s: %w", l.dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	digester := digest.SHA256.Digester()
	counter := &countingWriter{w: io.MultiWriter(tmp, digester.Hash())}
	diffID, err := write(counter)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return Layer{}, fmt.Errorf("writing layer (%s): %w", createdBy, err)
	}
	desc := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digester.Digest(), Size: counter.n}
	if err := os.Rename(tmp.Name(), l.BlobPath(desc.Digest)); err != nil {
		return Layer{}, fmt.Errorf("storing layer (%s): %w", createdBy, err)
	}
	return Layer{Desc: desc, DiffID: diffID, CreatedBy: createdBy}, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// AddImage stores the config and manifest of one platform's image made of layers (bottom
// first) and returns the manifest's descriptor, carrying the platform, for an index. img gives
// the platform and the runtime settings; its Name and Entries are not used.
func (l *Layout) AddImage(img Image, layers []Layer) (v1.Descriptor, error) {
	if len(layers) == 0 {
		return v1.Descriptor{}, errors.New("adding an image without layers")
	}
	platform := imagePlatform(img)
	config := imageConfig(img, platform, layers)
	descs := make([]v1.Descriptor, 0, len(layers))
	for _, layer := range layers {
		descs = append(descs, layer.Desc)
	}
	configDesc, err := l.putJSON(v1.MediaTypeImageConfig, config)
	if err != nil {
		return v1.Descriptor{}, err
	}
	manifest, err := l.putJSON(v1.MediaTypeImageManifest, v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    descs,
	})
	if err != nil {
		return v1.Descriptor{}, err
	}
	manifest.Platform = &platform
	return manifest, nil
}

// imageConfig is the config of an image of layers (bottom first): img's runtime settings, the
// platform, the layers' diff IDs and a history entry per layer, all with fixed timestamps.
func imageConfig(img Image, platform v1.Platform, layers []Layer) v1.Image {
	created := epoch
	config := v1.Image{
		Created:  &created,
		Platform: platform,
		Config: v1.ImageConfig{
			User:       img.User,
			Env:        img.Env,
			Entrypoint: img.Entrypoint,
			Cmd:        img.Cmd,
			WorkingDir: img.WorkingDir,
			Labels:     img.Labels,
			StopSignal: img.StopSignal,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	for _, layer := range layers {
		config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, layer.DiffID)
		config.History = append(config.History, v1.History{Created: &created, CreatedBy: layer.CreatedBy})
	}
	return config
}

// imagePlatform is img's platform with the defaults filled in.
func imagePlatform(img Image) v1.Platform {
	p := v1.Platform{OS: img.OS, Architecture: img.Architecture, Variant: img.Variant}
	if p.OS == "" {
		p.OS = "linux"
	}
	if p.Architecture == "" {
		p.Architecture = "amd64"
	}
	return p
}

// AddIndex stores an image index of manifests (one per platform, as AddImage returns them) and
// returns its descriptor.
func (l *Layout) AddIndex(manifests []v1.Descriptor) (v1.Descriptor, error) {
	if len(manifests) == 0 {
		return v1.Descriptor{}, errors.New("adding an image index without manifests")
	}
	return l.putJSON(v1.MediaTypeImageIndex, v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex,
		Manifests: manifests,
	})
}

// Tag names desc in index.json under each of names (fully qualified references with a tag,
// such as docker.io/library/debian:bookworm), replacing what those names pointed to before.
func (l *Layout) Tag(desc v1.Descriptor, names ...string) error {
	index, err := l.Index()
	if err != nil {
		return err
	}
	for _, name := range names {
		tag, err := tagOf(name)
		if err != nil {
			return err
		}
		index.Manifests = slices.DeleteFunc(index.Manifests, func(d v1.Descriptor) bool {
			return d.Annotations[AnnotationImageName] == name
		})
		named := desc
		named.Platform = nil
		named.Annotations = map[string]string{AnnotationImageName: name, v1.AnnotationRefName: tag}
		index.Manifests = append(index.Manifests, named)
	}
	slices.SortFunc(index.Manifests, func(a, b v1.Descriptor) int {
		return strings.Compare(a.Annotations[AnnotationImageName], b.Annotations[AnnotationImageName])
	})
	data, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("encoding index.json of %s: %w", l.dir, err)
	}
	return writeFileAtomic(filepath.Join(l.dir, v1.ImageIndexFile), data)
}

// Index returns the layout's index.json; a layout without one has an empty index.
func (l *Layout) Index() (v1.Index, error) {
	index := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex}
	data, err := os.ReadFile(filepath.Join(l.dir, v1.ImageIndexFile))
	if errors.Is(err, os.ErrNotExist) {
		return index, nil
	}
	if err != nil {
		return index, fmt.Errorf("reading index.json of %s: %w", l.dir, err)
	}
	if err := json.Unmarshal(data, &index); err != nil {
		return index, fmt.Errorf("decoding index.json of %s: %w", l.dir, err)
	}
	return index, nil
}

// Named returns the descriptor index.json names name, and whether there is one.
func (l *Layout) Named(name string) (v1.Descriptor, bool, error) {
	index, err := l.Index()
	if err != nil {
		return v1.Descriptor{}, false, err
	}
	for _, d := range index.Manifests {
		if d.Annotations[AnnotationImageName] == name {
			return d, true, nil
		}
	}
	return v1.Descriptor{}, false, nil
}

// writeFileAtomic writes data to name through a temporary file in the same directory.
func writeFileAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("creating a temporary file for %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp.Name(), name, err)
	}
	return nil
}
