package main

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"

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
// from uidmapDir: the two setuid-root programs and the shared libraries they load, at the paths
// they have on the host, so the loader finds them as on Debian. They are the only setuid
// programs in the image; rootlesskit runs them to map the subordinate ids into its user
// namespace. They are Debian's, reviewed and patched there, rather than a helper of our own.
func uidmapFiles(uidmapDir string) ([]ociimage.Entry, error) {
	var entries []ociimage.Entry
	libs := map[string]bool{}
	for _, name := range []string{"newuidmap", "newgidmap"} {
		p := filepath.Join(uidmapDir, name)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s missing or not a file (hack/install-deps.sh installs Debian's uidmap): %v", p, err)
		}
		// 04755 as Debian installs them: setuid root, so that user 1000 may write its
		// subordinate ids (/etc/subuid) into the uid_map of rootlesskit's user namespace.
		entries = append(entries, ociimage.HostFile("/usr/bin/"+name, p, 0o755|fs.ModeSetuid))
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
