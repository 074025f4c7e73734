// Package ociregistry is the test rig's small client of the OCI distribution API (the registry
// HTTP API v2): it pushes images from an OCI layout (blob uploads, manifest PUTs) and reads
// manifests, indexes and configs back, so that tests can check what builds pushed. It speaks
// only what the local cluster's registry needs: no authentication, monolithic uploads.
package ociregistry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

// Client talks to one registry.
type Client struct {
	// Base is the registry's base URL, such as https://10.213.0.1:5000.
	Base string
	// HTTP sends the requests; its transport carries the registry's CA.
	HTTP *http.Client
}

// NewClient returns a client of the registry at host (host:port) over TLS, checking its
// certificate against the CA certificates in caFile.
func NewClient(host, caFile string) (*Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the registry's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	return &Client{
		Base: "https://" + host,
		HTTP: &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}, nil
}

// manifestTypes are the media types Client accepts for manifests: OCI's and Docker's, since
// BuildKit pushes either.
var manifestTypes = []string{
	v1.MediaTypeImageIndex, v1.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// Error is a registry's refusal: the request, the HTTP status and what the registry said.
type Error struct {
	Method, URL string
	Status      int
	Body        string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.URL, e.Status, strings.TrimSpace(e.Body))
}

// IsNotFound says whether err is a registry's 404 (no such repository, manifest or blob).
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// RepoTag splits a full image name (docker.io/library/debian:bookworm) into the repository path
// the registry stores it under (library/debian) and its tag.
func RepoTag(name string) (repo, tag string, err error) {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return "", "", fmt.Errorf("image name %q: %w", name, err)
	}
	tagged, ok := named.(reference.Tagged)
	if !ok {
		return "", "", fmt.Errorf("image name %q has no tag", name)
	}
	return reference.Path(named), tagged.Tag(), nil
}

// PushLayout pushes every image named in layout's index.json, under the name's repository path
// and tag, and returns the names pushed. Blobs and manifests the registry has are not sent
// again, and a blob already pushed to another repository is mounted from there.
func (c *Client) PushLayout(ctx context.Context, layout *ociimage.Layout) ([]string, error) {
	index, err := layout.Index()
	if err != nil {
		return nil, err
	}
	p := pusher{c: c, layout: layout, pushed: map[digest.Digest]string{}}
	var names []string
	for _, d := range index.Manifests {
		name := d.Annotations[ociimage.AnnotationImageName]
		if name == "" {
			return names, fmt.Errorf("OCI layout %s: index.json lists %s without a %s annotation", layout.Dir(), d.Digest, ociimage.AnnotationImageName)
		}
		repo, tag, err := RepoTag(name)
		if err != nil {
			return names, err
		}
		if err := p.push(ctx, repo, d); err != nil {
			return names, fmt.Errorf("pushing %s: %w", name, err)
		}
		data, err := layout.ReadBlob(d.Digest)
		if err != nil {
			return names, err
		}
		if err := c.PutManifest(ctx, repo, tag, d.MediaType, data); err != nil {
			return names, fmt.Errorf("tagging %s: %w", name, err)
		}
		names = append(names, name)
	}
	return names, nil
}

type pusher struct {
	c      *Client
	layout *ociimage.Layout
	// pushed maps a blob to a repository that has it, for cross-repository mounts.
	pushed map[digest.Digest]string
}

// push sends what desc refers to (an index's manifests, a manifest's config and layers) and
// then desc itself, by digest.
func (p *pusher) push(ctx context.Context, repo string, desc v1.Descriptor) error {
	data, err := p.layout.ReadBlob(desc.Digest)
	if err != nil {
		return err
	}
	switch desc.MediaType {
	case v1.MediaTypeImageIndex:
		var index v1.Index
		if err := json.Unmarshal(data, &index); err != nil {
			return fmt.Errorf("decoding index %s: %w", desc.Digest, err)
		}
		for _, m := range index.Manifests {
			if err := p.push(ctx, repo, m); err != nil {
				return err
			}
		}
	case v1.MediaTypeImageManifest:
		var manifest v1.Manifest
		if err := json.Unmarshal(data, &manifest); err != nil {
			return fmt.Errorf("decoding manifest %s: %w", desc.Digest, err)
		}
		for _, b := range append([]v1.Descriptor{manifest.Config}, manifest.Layers...) {
			if err := p.pushBlob(ctx, repo, b); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("descriptor %s has media type %q; want an OCI index or manifest", desc.Digest, desc.MediaType)
	}
	return p.c.PutManifest(ctx, repo, desc.Digest.String(), desc.MediaType, data)
}

func (p *pusher) pushBlob(ctx context.Context, repo string, desc v1.Descriptor) error {
	blobURL := p.c.url(repo, "blobs", desc.Digest.String())
	resp, err := p.c.do(ctx, http.MethodHead, blobURL, "", nil, -1, http.StatusOK, http.StatusNotFound)
	if err != nil {
		return err
	}
	if resp == http.StatusOK {
		p.pushed[desc.Digest] = repo
		return nil
	}
	start := p.c.url(repo, "blobs", "uploads") + "/"
	if from, ok := p.pushed[desc.Digest]; ok {
		start += "?" + url.Values{"mount": {desc.Digest.String()}, "from": {from}}.Encode()
	}
	location, status, err := p.c.post(ctx, start)
	if err != nil {
		return err
	}
	if status == http.StatusCreated { // mounted from the other repository
		p.pushed[desc.Digest] = repo
		return nil
	}
	f, err := p.layout.OpenBlob(desc.Digest)
	if err != nil {
		return err
	}
	defer f.Close()
	put, err := uploadURL(p.c.Base, location, desc.Digest)
	if err != nil {
		return err
	}
	if _, err := p.c.do(ctx, http.MethodPut, put, "application/octet-stream", f, desc.Size, http.StatusCreated); err != nil {
		return fmt.Errorf("uploading blob %s (%d bytes): %w", desc.Digest, desc.Size, err)
	}
	p.pushed[desc.Digest] = repo
	return nil
}

// uploadURL resolves the Location of an upload session against base and adds the digest that
// completes it.
func uploadURL(base, location string, d digest.Digest) (string, error) {
	b, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("registry URL %q: %w", base, err)
	}
	loc, err := b.Parse(location)
	if err != nil {
		return "", fmt.Errorf("upload location %q: %w", location, err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	return loc.String(), nil
}

// PutManifest stores a manifest or index under ref (a tag or a digest) in repo.
func (c *Client) PutManifest(ctx context.Context, repo, ref, mediaType string, data []byte) error {
	_, err := c.do(ctx, http.MethodPut, c.url(repo, "manifests", ref), mediaType, bytes.NewReader(data), int64(len(data)), http.StatusCreated)
	return err
}

// Manifest returns the manifest or index ref (a tag or digest) of repo and its media type.
func (c *Client) Manifest(ctx context.Context, repo, ref string) (mediaType string, data []byte, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(repo, "manifests", ref), nil)
	if err != nil {
		return "", nil, err
	}
	req.Header.Set("Accept", strings.Join(manifestTypes, ", "))
	data, header, err := c.read(req)
	if err != nil {
		return "", nil, err
	}
	return header.Get("Content-Type"), data, nil
}

// Blob returns the blob d of repo, checking its digest.
func (c *Client) Blob(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(repo, "blobs", d.String()), nil)
	if err != nil {
		return nil, err
	}
	data, _, err := c.read(req)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(data); got != d {
		return nil, fmt.Errorf("blob %s of %s: the registry sent content hashing to %s", d, repo, got)
	}
	return data, nil
}

func (c *Client) url(repo, kind, ref string) string {
	return strings.TrimSuffix(c.Base, "/") + "/v2/" + repo + "/" + kind + "/" + ref
}

// post starts an upload and returns its Location and the status (202 started, 201 mounted).
func (c *Client) post(ctx context.Context, u string) (string, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("POST %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusCreated {
		return "", 0, &Error{Method: http.MethodPost, URL: u, Status: resp.StatusCode, Body: string(body)}
	}
	return resp.Header.Get("Location"), resp.StatusCode, nil
}

// do sends a request with an optional body and returns its status, which must be one of want.
func (c *Client) do(ctx context.Context, method, u, contentType string, body io.Reader, size int64, want ...int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	for _, w := range want {
		if resp.StatusCode == w {
			return w, nil
		}
	}
	return resp.StatusCode, &Error{Method: method, URL: u, Status: resp.StatusCode, Body: string(msg)}
}

// read sends req and returns the body of its 200 answer.
func (c *Client) read(req *http.Request) ([]byte, http.Header, error) {
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: reading the answer: %w", req.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, &Error{Method: http.MethodGet, URL: req.URL.String(), Status: resp.StatusCode, Body: string(data[:min(len(data), 4096)])}
	}
	return data, resp.Header, nil
}

// PlatformImage is one platform's image in an index: the platform the index names and the
// image's own manifest and config.
type PlatformImage struct {
	Platform v1.Platform
	Manifest v1.Manifest
	Config   v1.Image
}

// Platforms reads the index ref (tag or digest) of repo and returns its images, leaving out
// attestation manifests (BuildKit's provenance, platform unknown/unknown).
func (c *Client) Platforms(ctx context.Context, repo, ref string) ([]PlatformImage, error) {
	mediaType, data, err := c.Manifest(ctx, repo, ref)
	if err != nil {
		return nil, err
	}
	var index v1.Index
	if err := json.Unmarshal(data, &index); err != nil {
		return nil, fmt.Errorf("decoding %s:%s: %w", repo, ref, err)
	}
	if len(index.Manifests) == 0 {
		return nil, fmt.Errorf("%s:%s is a %s, not an image index with manifests", repo, ref, mediaType)
	}
	var out []PlatformImage
	for _, d := range index.Manifests {
		if d.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			continue
		}
		img := PlatformImage{}
		if d.Platform != nil {
			img.Platform = *d.Platform
		}
		_, mdata, err := c.Manifest(ctx, repo, d.Digest.String())
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(mdata, &img.Manifest); err != nil {
			return nil, fmt.Errorf("decoding manifest %s of %s: %w", d.Digest, repo, err)
		}
		cdata, err := c.Blob(ctx, repo, img.Manifest.Config.Digest)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(cdata, &img.Config); err != nil {
			return nil, fmt.Errorf("decoding config %s of %s: %w", img.Manifest.Config.Digest, repo, err)
		}
		out = append(out, img)
	}
	return out, nil
}

// CheckPlatforms says what is wrong, if anything, with an index's images for the platforms want
// (os/arch, such as linux/arm64): each must be there exactly once, and each image's config must
// say the architecture and OS its index entry claims.
func CheckPlatforms(imgs []PlatformImage, want []string) error {
	var problems []string
	seen := map[string]int{}
	for _, img := range imgs {
		claimed := img.Platform.OS + "/" + img.Platform.Architecture
		seen[claimed]++
		if actual := img.Config.OS + "/" + img.Config.Architecture; actual != claimed {
			problems = append(problems, fmt.Sprintf("the index lists %s for an image whose config says %s", claimed, actual))
		}
	}
	for _, p := range want {
		if seen[p] != 1 {
			problems = append(problems, fmt.Sprintf("%s appears %d times, want once", p, seen[p]))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
