package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

const (
	// BuildKitImage is the name of the product's default BuildKit image. The archive built here
	// carries the same name so that the product's defaults work unchanged against the local
	// cluster; it holds buildkitd and buildctl of the same version, built from the module proxy.
	BuildKitImage   = "docker.io/moby/buildkit:v0.34.2"
	buildKitVersion = "v0.34.2"
	// PauseImage is the sandbox image the local cluster's containerd is configured with.
	PauseImage = "localhost/setup-ephemeral-buildkit/pause:local"

	modulePath = "github.com/org/setup-ephemeral-buildkit"
	pausePkg   = modulePath + "/hack/images/pause"
)

// sourceDirs are the directories, relative to the module root, whose Go files decide what the
// archives contain: a change to any of them must rebuild the images.
var sourceDirs = []string{"hack/cmd/mkimages", "internal/testing/ociimage", "hack/images/pause"}

// baseSources are the Go sources (directories or files) that decide what the base images
// contain. Narrower than sourceDirs on purpose: the base images cost minutes of debootstrap and
// qemu, and a new image elsewhere in this program must not rebuild them.
var baseSources = []string{"hack/cmd/mkimages/base.go", "internal/testing/ociimage"}

// busyboxApplets are the applets linked to /bin/busybox in the BuildKit image: what exec
// probes, preStop hooks and people debugging a builder pod reach for. Each goes where busybox
// itself would install it (busybox --list-full), as in the Alpine-based official image.
var busyboxApplets = []string{
	"sh", "cat", "ls", "sleep", "grep", "awk", "sed", "ps", "head", "tail", "wc", "echo", "test",
	"[", "env", "mkdir", "rm", "cp", "mv", "ln", "find", "xargs", "tr", "cut", "date", "kill",
	"netstat", "nc", "wget", "tar", "gzip", "id", "chmod", "true", "false", "printf", "expr",
	"seq", "sort", "uniq",
	// Beyond the minimum: small, commonly needed in a debugging shell.
	"basename", "dirname", "pwd", "stat", "touch", "tee", "du", "df", "uname", "hostname",
	"which", "readlink", "realpath", "timeout", "pidof", "killall", "sha256sum", "gunzip",
	"zcat", "mount", "umount", "ip", "chown", "mktemp", "nproc", "free", "uptime", "dd", "od",
	"whoami", "less", "vi", "diff", "base64", "xz", "unxz", "top",
}

type config struct {
	binDir, outDir, busybox, goCmd string
	// uidmapDir holds Debian's newuidmap and newgidmap for the rootless image.
	uidmapDir string
	// baseImages also writes the Debian and Go base images (buildBaseImages).
	baseImages bool
	// productImages also writes the product's images (buildProductImages), described by product.
	productImages bool
	product       productConfig
}

func run(cfg config) error {
	root, err := moduleRoot(cfg.goCmd)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.outDir, 0o755); err != nil {
		return fmt.Errorf("creating output directory: %w", err)
	}
	// Two runs at once (two terminals, two work trees sharing CACHE_DIR) would remove and write
	// the same layout under each other; the second waits for the first.
	lock, err := os.OpenFile(filepath.Join(cfg.outDir, ".mkimages.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("opening the lock of %s: %w", cfg.outDir, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", cfg.outDir, err)
	}
	srcHash, err := hashSources(root, sourceDirs)
	if err != nil {
		return err
	}
	pause, err := buildPause(cfg, root, srcHash)
	if err != nil {
		return err
	}
	bk, err := buildKitImage(cfg.binDir, cfg.busybox)
	if err != nil {
		return err
	}
	rootless, err := rootlessBuildKitImage(bk, cfg.binDir, cfg.uidmapDir)
	if err != nil {
		return err
	}
	for _, im := range []struct {
		file   string
		img    ociimage.Image
		finish func(string) error
	}{
		{"pause.tar", pauseImage(pause), nil},
		{"buildkit.tar", bk, nil},
		{"buildkit-rootless.tar", rootless, addUidmapCapabilities},
	} {
		if err := writeImageThen(filepath.Join(cfg.outDir, im.file), im.img, srcHash, im.finish); err != nil {
			return err
		}
	}
	if cfg.baseImages {
		baseHash, err := hashSources(root, baseSources)
		if err != nil {
			return err
		}
		if err := buildBaseImages(cfg, root, baseHash); err != nil {
			return err
		}
	}
	if !cfg.productImages {
		return nil
	}
	p := cfg.product
	if len(p.tags) == 0 {
		tag, err := defaultTag(root)
		if err != nil {
			return err
		}
		p.tags = []string{tag}
	}
	if p.outDir == "" {
		p.outDir = filepath.Join(cfg.outDir, localcluster.ProductImagesDir)
	}
	if err := buildProductImages(cfg, root, srcHash, p); err != nil {
		return err
	}
	if p.push {
		return pushProductImages(context.Background(), p.outDir, p.registry, os.Getenv)
	}
	return nil
}

// moduleRoot returns the directory of this repository's go.mod, so that mkimages works from
// any directory inside the repository.
func moduleRoot(goCmd string) (string, error) {
	out, err := exec.Command(goCmd, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root with `%s env GOMOD`: %w", goCmd, err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the %s module (run mkimages from the repository)", modulePath)
	}
	root := filepath.Dir(gomod)
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", gomod, err)
	}
	if !bytes.HasPrefix(data, []byte("module "+modulePath+"\n")) && !bytes.Contains(data, []byte("\nmodule "+modulePath+"\n")) {
		return "", fmt.Errorf("%s is not the %s module (run mkimages from the repository)", gomod, modulePath)
	}
	return root, nil
}

// hashSources hashes the Go toolchain, the versions of the image-spec modules the archives
// are encoded with, and the non-test Go files of paths (directories, or single .go files).
func hashSources(root string, paths []string) (string, error) {
	h := sha256.New()
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Fprintln(h, "go", bi.GoVersion)
		for _, d := range bi.Deps {
			if strings.HasPrefix(d.Path, "github.com/opencontainers/") {
				fmt.Fprintln(h, d.Path, d.Version, d.Sum)
			}
		}
	}
	for _, p := range paths {
		files := []string{filepath.Join(root, p)}
		if strings.HasSuffix(p, ".go") {
			if _, err := os.Stat(files[0]); err != nil {
				return "", fmt.Errorf("hashing sources: %w", err)
			}
		} else {
			var err error
			if files, err = filepath.Glob(filepath.Join(root, p, "*.go")); err != nil {
				return "", fmt.Errorf("listing %s: %w", p, err)
			}
			if len(files) == 0 {
				return "", fmt.Errorf("no Go files in %s", filepath.Join(root, p))
			}
		}
		slices.Sort(files)
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			rel, err := filepath.Rel(root, f)
			if err != nil {
				return "", fmt.Errorf("hashing sources: %w", err)
			}
			if err := hashFile(h, root, rel); err != nil {
				return "", err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(w io.Writer, root, name string) error {
	f, err := os.Open(filepath.Join(root, name))
	if err != nil {
		return fmt.Errorf("hashing input %s: %w", name, err)
	}
	defer f.Close()
	// The name as given, relative to root: two work trees of one commit share a stamp.
	fmt.Fprintf(w, "== %s\n", name)
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("hashing input %s: %w", name, err)
	}
	return nil
}

// buildPause builds the pause program into outDir/.build/pause unless the binary there was
// built from the same sources, and returns its path.
func buildPause(cfg config, root, srcHash string) (string, error) {
	dir := filepath.Join(cfg.outDir, ".build")
	bin := filepath.Join(dir, "pause")
	stampFile := bin + ".stamp"
	if stamp, err := os.ReadFile(stampFile); err == nil && string(stamp) == srcHash {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	start := time.Now()
	// Static (no cgo) because the image has no libc; -buildvcs=false and -trimpath because the
	// binary, and so the image digest, must not change with the commit or the checkout path.
	cmd := exec.Command(cfg.goCmd, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, pausePkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building the pause program (%s): %w", strings.Join(cmd.Args, " "), err)
	}
	if err := os.WriteFile(stampFile, []byte(srcHash), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", stampFile, err)
	}
	fmt.Printf("mkimages: built pause program in %.1fs\n", time.Since(start).Seconds())
	return bin, nil
}

func pauseImage(pauseBin string) ociimage.Image {
	return ociimage.Image{
		Name: PauseImage,
		OS:   "linux",
		// The cluster runs on this amd64 machine; the pause program is built for it.
		Architecture: "amd64",
		Entrypoint:   []string{"/pause"},
		Labels: map[string]string{
			"org.opencontainers.image.description": "Pod sandbox for the setup-ephemeral-buildkit local test cluster",
		},
		Entries: []ociimage.Entry{ociimage.HostFile("/pause", pauseBin, 0o755)},
	}
}

// buildKitImage describes the BuildKit image, laid out like the official one: the BuildKit
// binaries and runc in /usr/bin, a static busybox for a shell, and the state directories. Unlike
// the official one it carries nothing of the local cluster's: builders trust the local registry
// the way a user's builders trust a private one, through the buildkitd-config input.
func buildKitImage(binDir, busybox string) (ociimage.Image, error) {
	for _, f := range []string{"buildkitd", "buildctl", "runc-static"} {
		p := filepath.Join(binDir, f)
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return ociimage.Image{}, fmt.Errorf("%s missing or not a file (run hack/build-tools.sh first): %v", p, err)
		}
	}
	applets, err := appletPaths(busybox)
	if err != nil {
		return ociimage.Image{}, err
	}
	entries := []ociimage.Entry{
		ociimage.HostFile("/usr/bin/buildkitd", filepath.Join(binDir, "buildkitd"), 0o755),
		ociimage.HostFile("/usr/bin/buildctl", filepath.Join(binDir, "buildctl"), 0o755),
		// runc must be static and built with seccomp (see hack/build-tools.sh). buildkitd looks
		// for buildkit-runc before runc, as the official image names it.
		ociimage.HostFile("/usr/bin/runc", filepath.Join(binDir, "runc-static"), 0o755),
		ociimage.Symlink("/usr/bin/buildkit-runc", "runc"),
		ociimage.HostFile("/bin/busybox", busybox, 0o755),

		ociimage.Dir("/bin", 0o755),
		ociimage.Dir("/sbin", 0o755),
		ociimage.Dir("/usr/bin", 0o755),
		ociimage.Dir("/usr/sbin", 0o755),
		ociimage.Dir("/usr/local/bin", 0o755),
		ociimage.Dir("/usr/local/sbin", 0o755),
		ociimage.Dir("/tmp", 0o777|fs.ModeSticky),
		ociimage.Dir("/var/lib/buildkit", 0o755),
		ociimage.Dir("/run/buildkit", 0o755),
		ociimage.Dir("/etc/buildkit", 0o755),
		ociimage.Dir("/root", 0o700),
		// Mount points runc would otherwise have to create.
		ociimage.Dir("/proc", 0o555),
		ociimage.Dir("/sys", 0o555),
		ociimage.Dir("/dev", 0o755),

		ociimage.File("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"), 0o644),
		ociimage.File("/etc/group", []byte("root:x:0:root\nnogroup:x:65534:\n"), 0o644),
		// Go's resolver reads nsswitch.conf; without it the order of files and dns is a guess.
		ociimage.File("/etc/nsswitch.conf", []byte("passwd: files\ngroup: files\nhosts: files dns\n"), 0o644),
	}
	for _, p := range applets {
		entries = append(entries, ociimage.Symlink(p, "/bin/busybox"))
	}
	return ociimage.Image{
		Name:         BuildKitImage,
		OS:           "linux",
		Architecture: "amd64",
		Entrypoint:   []string{"buildkitd"},
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			// As in the official image: buildkitd moves itself into a child cgroup so that
			// its build containers can use cgroup v2 controllers.
			"BUILDKIT_SETUP_CGROUPV2_ROOT=1",
		},
		Labels: map[string]string{
			"org.opencontainers.image.version": buildKitVersion,
			"org.opencontainers.image.description": "BuildKit " + buildKitVersion +
				" built from the Go module proxy by setup-ephemeral-buildkit's hack/build-tools.sh;" +
				" stands in for the official image where no registry can be reached",
		},
		Entries: entries,
	}, nil
}

// appletPaths returns the image paths of busyboxApplets, where the busybox binary itself would
// install them, after checking that it has every one.
func appletPaths(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("listing the applets of %s (install Debian's busybox-static): %w", busybox, err)
	}
	where := map[string]string{}
	for _, line := range strings.Fields(string(out)) {
		where[filepath.Base(line)] = "/" + line
	}
	var paths, missing []string
	for _, a := range busyboxApplets {
		p, ok := where[a]
		if !ok {
			missing = append(missing, a)
			continue
		}
		if p != "/bin/busybox" {
			paths = append(paths, p)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s lacks applets %s", busybox, strings.Join(missing, " "))
	}
	return paths, nil
}

// writeImage writes img to file unless the stamp beside it says that the same inputs already
// produced it.
func writeImage(file string, img ociimage.Image, srcHash string) error {
	return writeImageThen(file, img, srcHash, nil)
}

// writeImageThen is writeImage with finish run on the written archive before the stamp is
// written (nil for nothing); its code is part of the sources the stamp hashes.
func writeImageThen(file string, img ociimage.Image, srcHash string, finish func(file string) error) error {
	stamp, err := imageStamp(img, srcHash)
	if err != nil {
		return err
	}
	stampFile := file + ".stamp"
	if old, err := os.ReadFile(stampFile); err == nil && string(old) == stamp {
		if _, err := os.Stat(file); err == nil {
			fmt.Printf("mkimages: %s: reused %s (inputs unchanged)\n", img.Name, file)
			return nil
		}
	}
	start := time.Now()
	// Remove the stamp first: if writing fails half-way, the next run must not trust the file.
	if err := os.Remove(stampFile); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing %s: %w", stampFile, err)
	}
	if _, err := ociimage.WriteFile(file, img); err != nil {
		return fmt.Errorf("writing image %s: %w", img.Name, err)
	}
	if finish != nil {
		if err := finish(file); err != nil {
			return fmt.Errorf("writing image %s: %w", img.Name, err)
		}
	}
	if err := os.WriteFile(stampFile, []byte(stamp), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", stampFile, err)
	}
	st, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("inspecting %s: %w", file, err)
	}
	fmt.Printf("mkimages: %s: wrote %s (%.1f MiB) in %.1fs\n",
		img.Name, file, float64(st.Size())/(1<<20), time.Since(start).Seconds())
	return nil
}

// imageStamp hashes everything an archive depends on: the sources of this program and of the
// ociimage package, the image description, and the contents of every host file in it.
func imageStamp(img ociimage.Image, srcHash string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, "sources", srcHash)
	desc, err := json.Marshal(img)
	if err != nil {
		return "", fmt.Errorf("encoding the description of %s: %w", img.Name, err)
	}
	h.Write(desc)
	for _, e := range img.Entries {
		if e.HostPath != "" {
			if err := hashFile(h, "", e.HostPath); err != nil {
				return "", err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
