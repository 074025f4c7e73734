package localcluster

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// imageArchives maps each <name>.tar in dir to the image name inside it.
func imageArchives(dir string) (map[string]string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.tar"))
	if err != nil || len(paths) == 0 {
		return nil, fmt.Errorf("no image archives in %s (build them with `make images`)", dir)
	}
	images := map[string]string{}
	for _, p := range paths {
		name, err := imageNameInArchive(p)
		if err != nil {
			return nil, err
		}
		images[strings.TrimSuffix(filepath.Base(p), ".tar")] = name
	}
	return images, nil
}

func importImages(ctx context.Context, address, dir string, images map[string]string) error {
	var names []string
	for archive := range images {
		names = append(names, archive)
	}
	sort.Strings(names)
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, archive := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(dir, archive+".tar")
			out, err := exec.CommandContext(ctx, "ctr", "--address", address, "-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs", path).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("importing %s: %w: %s", path, err, out)
				return
			}
			// Pinned images are never garbage-collected by the kubelet; they cannot be pulled again.
			out, err = exec.CommandContext(ctx, "ctr", "--address", address, "-n", "k8s.io", "images", "label", images[archive], "io.cri-containerd.pinned=pinned").CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("pinning %s: %w: %s", images[archive], err, out)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// imageNameInArchive reads the image name from an OCI layout archive's index.json annotation.
func imageNameInArchive(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("opening image archive: %w", err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s has no index.json", path)
		}
		if err != nil {
			return "", fmt.Errorf("reading %s: %w", path, err)
		}
		if strings.TrimPrefix(hdr.Name, "./") != "index.json" {
			continue
		}
		var index struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&index); err != nil {
			return "", fmt.Errorf("parsing index.json of %s: %w", path, err)
		}
		for _, m := range index.Manifests {
			if name := m.Annotations["io.containerd.image.name"]; name != "" {
				return name, nil
			}
		}
		return "", fmt.Errorf("index.json of %s names no image (io.containerd.image.name)", path)
	}
}
