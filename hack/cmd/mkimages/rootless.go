package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

// RootlessImage is the name of the product's default rootless BuildKit image
// (k8sprov.DefaultRootlessImage): the rootful name with BuildKit's -rootless tag suffix.
const RootlessImage = BuildKitImage + "-rootless"

// rootlessUser is the user the image runs as, as in BuildKit's own rootless image (uid and gid
// 1000, named user, subordinate ids 100000-165535). k8sprov renders the pod for exactly these.
const (
	rootlessHome   = "/home/user"
	rootlessRunDir = "/run/user/1000"
)

// sharedLibrary matches one library line of ldd's output: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
// or the loader's own "/lib64/ld-linux-x86-64.so.2 (0x...)".
var sharedLibrary = regexp.MustCompile(`(?m)^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$`)

// uidmapFiles returns the image entries for Debian's newuidmap and newgidmap (package uidmap)
// from uidmapDir and the shared libraries they load, at the paths they have on the host, so the
// loader finds them as on Debian. rootlesskit runs them to map the subordinate ids into its user
// namespace. They are Debian's, reviewed and patched there, rather than a helper of our own; but
// they are installed with file capabilities (addUidmapCapabilities), not setuid root as Debian
// does: Debian 12's setuid newuidmap writes the map as root, and the kernel then requires
// CAP_SYS_ADMIN, which a container without privileges lacks ("write to uid_map failed:
// Operation not permitted", measured in a pod); with cap_setuid (cap_setgid) it writes as user
// 1000, the owner of rootlesskit's namespace, which needs nothing else.
func uidmapFiles(uidmapDir string) ([]ociimage.Entry, error) {
	var entries []ociimage.Entry
	libs := map[string]bool{}
	for _, name := range []string{"newuidmap", "newgidmap"} {
		p := filepath.Join(uidmapDir, name)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s missing or not a file (hack/install-deps.sh installs Debian's uidmap): %v", p, err)
		}
		entries = append(entries, ociimage.HostFile("/usr/bin/"+name, p, 0o755))
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			return nil, fmt.Errorf("listing the shared libraries of %s with ldd: %w", p, err)
		}
		for _, m := range sharedLibrary.FindAllStringSubmatch(string(out), -1) {
			libs[m[1]] = true
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd named no shared library for %s/newuidmap; expected Debian's dynamically linked build", uidmapDir)
	}
	for _, lib := range slices.Sorted(maps.Keys(libs)) {
		// The host path is also the image path: symlinks (libc.so.6 -> libc-2.36.so on older
		// releases) are followed, so each name the loader asks for is a regular file.
		entries = append(entries, ociimage.HostFile(lib, lib, 0o755))
	}
	return entries, nil
}

// rootlessBuildKitImage describes the rootless BuildKit image, laid out like BuildKit's own
// (Dockerfile, stage rootless): the rootful image's files plus rootlesskit, Debian's
// newuidmap/newgidmap, user 1000 with subordinate ids, and its home, run and tmp directories.
// Its entrypoint is `rootlesskit buildkitd`: rootlesskit creates the user namespace (mapping
// /etc/subuid through newuidmap) and runs buildkitd as root inside it.
func rootlessBuildKitImage(rootful ociimage.Image, binDir, uidmapDir string) (ociimage.Image, error) {
	rk := filepath.Join(binDir, "rootlesskit")
	if st, err := os.Stat(rk); err != nil || !st.Mode().IsRegular() {
		return ociimage.Image{}, fmt.Errorf("%s missing or not a file (run hack/build-tools.sh first): %v", rk, err)
	}
	uidmap, err := uidmapFiles(uidmapDir)
	if err != nil {
		return ociimage.Image{}, err
	}
	// Every entry of the layer is owned by root (ociimage writes no other owner), so the
	// directories user 1000 writes to are world-writable with the sticky bit, like /tmp. The
	// state directory is an emptyDir in the pod anyway (k8sprov's rootlessStateDir).
	userDir := fs.FileMode(0o777) | fs.ModeSticky
	replaced := map[string]bool{"/etc/passwd": true, "/etc/group": true}
	var entries []ociimage.Entry
	for _, e := range rootful.Entries {
		if !replaced[e.Path] {
			entries = append(entries, e)
		}
	}
	entries = append(entries, uidmap...)
	entries = append(entries,
		ociimage.HostFile("/usr/bin/rootlesskit", rk, 0o755),
		ociimage.File("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"+
			"user:x:1000:1000:user:"+rootlessHome+":/bin/sh\n"+
			"nobody:x:65534:65534:nobody:/:/bin/false\n"), 0o644),
		ociimage.File("/etc/group", []byte("root:x:0:root\nuser:x:1000:\nnogroup:x:65534:\n"), 0o644),
		ociimage.File("/etc/subuid", []byte("user:100000:65536\n"), 0o644),
		ociimage.File("/etc/subgid", []byte("user:100000:65536\n"), 0o644),
		ociimage.Dir(rootlessHome, userDir),
		ociimage.Dir(rootlessHome+"/.local", userDir),
		ociimage.Dir(rootlessHome+"/.local/share", userDir),
		ociimage.Dir(rootlessHome+"/.local/share/buildkit", userDir),
		ociimage.Dir(rootlessHome+"/.local/tmp", userDir),
		ociimage.Dir("/run/user", 0o755),
		ociimage.Dir(rootlessRunDir, userDir),
	)
	return ociimage.Image{
		Name:         RootlessImage,
		OS:           rootful.OS,
		Architecture: rootful.Architecture,
		Entrypoint:   []string{"rootlesskit", "buildkitd"},
		// Numeric, as in BuildKit's image: Kubernetes' runAsNonRoot cannot check a user name.
		User:       "1000:1000",
		WorkingDir: rootlessHome,
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"HOME=" + rootlessHome,
			"USER=user",
			"XDG_RUNTIME_DIR=" + rootlessRunDir,
			"TMPDIR=" + rootlessHome + "/.local/tmp",
		},
		Labels: map[string]string{
			"org.opencontainers.image.version": buildKitVersion,
			"org.opencontainers.image.description": "Rootless BuildKit " + buildKitVersion +
				" (rootlesskit from the Go module proxy, Debian's newuidmap/newgidmap) built by" +
				" setup-ephemeral-buildkit's hack/build-tools.sh and hack/cmd/mkimages;" +
				" stands in for the official -rootless image where no registry can be reached",
		},
		Entries: entries,
	}, nil
}

// uidmapCapabilities are the file capabilities of newuidmap and newgidmap in the image, as
// `setcap cap_setuid=ep` and `setcap cap_setgid=ep` write them: a security.capability extended
// attribute, VFS_CAP_REVISION_2 with the effective flag, one permitted capability.
var uidmapCapabilities = map[string][]byte{
	"usr/bin/newuidmap": fileCapability(7), // CAP_SETUID
	"usr/bin/newgidmap": fileCapability(6), // CAP_SETGID
}

func fileCapability(capability uint) []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x000001) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	binary.LittleEndian.PutUint32(b[4:], 1<<capability)       // permitted, low word
	return b
}

// addUidmapCapabilities rewrites the single-image OCI archive file with uidmapCapabilities set
// on their files (the ociimage package writes no extended attributes): a new layer, config (its
// diff ID), manifest and index, every other header kept as it was.
func addUidmapCapabilities(file string) error {
	blobs, order, headers, err := readArchive(file)
	if err != nil {
		return err
	}
	var index v1.Index
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		return fmt.Errorf("%s: index.json: want one manifest (%v)", file, err)
	}
	var manifest v1.Manifest
	if err := json.Unmarshal(blobs[blobPath(index.Manifests[0].Digest)], &manifest); err != nil || len(manifest.Layers) != 1 {
		return fmt.Errorf("%s: manifest: want one layer (%v)", file, err)
	}
	var config map[string]any
	if err := json.Unmarshal(blobs[blobPath(manifest.Config.Digest)], &config); err != nil {
		return fmt.Errorf("%s: config: %w", file, err)
	}
	layer, diffID, err := withXattrs(blobs[blobPath(manifest.Layers[0].Digest)], uidmapCapabilities)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	rootfs, _ := config["rootfs"].(map[string]any)
	if rootfs == nil {
		return fmt.Errorf("%s: config has no rootfs", file)
	}
	rootfs["diff_ids"] = []string{diffID.String()}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return err
	}
	manifest.Layers[0].Digest, manifest.Layers[0].Size = digest.FromBytes(layer), int64(len(layer))
	manifest.Config.Digest, manifest.Config.Size = digest.FromBytes(configJSON), int64(len(configJSON))
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	index.Manifests[0].Digest, index.Manifests[0].Size = digest.FromBytes(manifestJSON), int64(len(manifestJSON))
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}
	out := map[string][]byte{"oci-layout": blobs["oci-layout"], "index.json": indexJSON}
	for _, b := range [][]byte{layer, configJSON, manifestJSON} {
		out[blobPath(digest.FromBytes(b))] = b
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	template := headers["index.json"]
	for _, name := range order {
		if _, keep := out[name]; !keep && strings.HasPrefix(name, "blobs/sha256/") {
			continue
		}
		hdr := *headers[name]
		if data, ok := out[name]; ok {
			hdr.Size = int64(len(data))
			delete(out, name)
			if err := writeTarFile(tw, &hdr, data); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(out)) {
		hdr := *template
		hdr.Name, hdr.Size = name, int64(len(out[name]))
		if err := writeTarFile(tw, &hdr, out[name]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	tmp := file + ".caps"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

func blobPath(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }

func writeTarFile(tw *tar.Writer, hdr *tar.Header, data []byte) error {
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// readArchive returns the regular files of the tar archive file by name, the names of all its
// entries in order, and their headers.
func readArchive(file string) (map[string][]byte, []string, map[string]*tar.Header, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	blobs, headers := map[string][]byte{}, map[string]*tar.Header{}
	var order []string
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return blobs, order, headers, nil
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("reading %s: %w", file, err)
		}
		order, headers[hdr.Name] = append(order, hdr.Name), hdr
		if hdr.Typeflag == tar.TypeReg {
			if blobs[hdr.Name], err = io.ReadAll(tr); err != nil {
				return nil, nil, nil, fmt.Errorf("reading %s: %w", file, err)
			}
		}
	}
}

// withXattrs returns the gzip-compressed layer with the security.capability attribute set on
// the files named in caps, and the digest of the uncompressed tar (its diff ID).
func withXattrs(gz []byte, caps map[string][]byte) ([]byte, digest.Digest, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, "", fmt.Errorf("layer: %w", err)
	}
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	diff := digest.Canonical.Digester()
	tw := tar.NewWriter(io.MultiWriter(zw, diff.Hash()))
	tr := tar.NewReader(zr)
	found := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, "", fmt.Errorf("layer: %w", err)
		}
		if c, ok := caps[hdr.Name]; ok {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr.security.capability"] = string(c)
			hdr.Format = tar.FormatPAX
			found++
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, "", err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return nil, "", err
		}
	}
	if found != len(caps) {
		return nil, "", fmt.Errorf("layer: found %d of the files %v", found, slices.Sorted(maps.Keys(caps)))
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return out.Bytes(), diff.Digest(), nil
}
