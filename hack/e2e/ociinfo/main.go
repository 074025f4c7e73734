// Command ociinfo prints, for each OCI image archive given (docker buildx build --output
// type=oci), the platform of its image and the content of one file in the image's last layer:
//
//	ociinfo -file build-info.txt app-linux-amd64.tar app-linux-arm64.tar
//
// make demo uses it to show what each platform's RUN step recorded, without jq or a registry.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	file := flag.String("file", "build-info.txt", "file to print from the image's last layer")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: ociinfo [-file PATH] ARCHIVE...")
		os.Exit(2)
	}
	failed := false
	for _, archive := range flag.Args() {
		platform, content, err := inspect(archive, *file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ociinfo: %s: %v\n", archive, err)
			failed = true
			continue
		}
		fmt.Printf("%-24s %-12s %s\n", filepath.Base(archive), platform, strings.TrimSpace(content))
	}
	if failed {
		os.Exit(1)
	}
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

type manifest struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"`
	Config    descriptor   `json:"config"`
	Layers    []descriptor `json:"layers"`
}

// inspect follows index.json to the image manifest (skipping attestation manifests), and returns
// the image config's platform and the file from the last layer.
func inspect(archive, file string) (string, string, error) {
	blobs, err := readArchive(archive)
	if err != nil {
		return "", "", err
	}
	var index manifest
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) == 0 {
		return "", "", fmt.Errorf("index.json: no manifests (%v)", err)
	}
	var m manifest
	digest := index.Manifests[0].Digest
	for range 3 { // index.json -> (image index ->) image manifest
		if err := json.Unmarshal(blobs[blobPath(digest)], &m); err != nil {
			return "", "", fmt.Errorf("blob %s: %w", digest, err)
		}
		if len(m.Manifests) == 0 {
			break
		}
		digest = ""
		for _, d := range m.Manifests {
			if d.Platform != nil && d.Platform.Architecture != "unknown" {
				digest = d.Digest
				break
			}
		}
		if digest == "" {
			return "", "", errors.New("no image manifest for a platform")
		}
		m = manifest{}
	}
	var config struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	}
	if err := json.Unmarshal(blobs[blobPath(m.Config.Digest)], &config); err != nil {
		return "", "", fmt.Errorf("config: %w", err)
	}
	if len(m.Layers) == 0 {
		return "", "", errors.New("image has no layers")
	}
	content, err := fileInLayer(blobs[blobPath(m.Layers[len(m.Layers)-1].Digest)], file)
	return config.OS + "/" + config.Architecture, content, err
}

func blobPath(digest string) string { return "blobs/" + strings.Replace(digest, ":", "/", 1) }

// readArchive reads every regular file of a tar archive into memory (the archives are small).
func readArchive(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			files[strings.TrimPrefix(h.Name, "./")] = data
		}
	}
}

// fileInLayer returns one file of a gzip-compressed (or plain) layer tar.
func fileInLayer(layer []byte, name string) (string, error) {
	var r io.Reader = bytes.NewReader(layer)
	if gz, err := gzip.NewReader(bytes.NewReader(layer)); err == nil {
		r = gz
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s not in the last layer", name)
		}
		if err != nil {
			return "", err
		}
		if strings.TrimPrefix(h.Name, "./") == strings.TrimPrefix(name, "/") {
			data, err := io.ReadAll(tr)
			return string(data), err
		}
	}
}
