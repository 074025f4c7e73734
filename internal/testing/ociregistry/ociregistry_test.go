package ociregistry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
)

// fakeRegistry keeps blobs and manifests in memory and serves the part of the distribution API
// the client uses; it counts uploads and mounts so tests can see what was sent.
type fakeRegistry struct {
	mu        sync.Mutex
	blobs     map[string][]byte // repo@digest
	manifests map[string][]byte // repo:ref
	types     map[string]string
	uploads   int
	mounts    int
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{blobs: map[string][]byte{}, manifests: map[string][]byte{}, types: map[string]string{}}
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	body, _ := io.ReadAll(r.Body)
	switch {
	case strings.Contains(p, "/blobs/uploads/") && r.Method == http.MethodPost:
		repo := p[:strings.Index(p, "/blobs/uploads/")]
		if m := r.URL.Query().Get("mount"); m != "" {
			if b, ok := f.blobs[r.URL.Query().Get("from")+"@"+m]; ok {
				f.blobs[repo+"@"+m] = b
				f.mounts++
				w.WriteHeader(http.StatusCreated)
				return
			}
		}
		w.Header().Set("Location", "/v2/"+repo+"/blobs/uploads/session?_state=x")
		w.WriteHeader(http.StatusAccepted)
	case strings.Contains(p, "/blobs/uploads/") && r.Method == http.MethodPut:
		repo := p[:strings.Index(p, "/blobs/uploads/")]
		d := r.URL.Query().Get("digest")
		if r.URL.Query().Get("_state") != "x" || digest.FromBytes(body).String() != d {
			http.Error(w, "bad upload", http.StatusBadRequest)
			return
		}
		f.blobs[repo+"@"+d] = body
		f.uploads++
		w.WriteHeader(http.StatusCreated)
	case strings.Contains(p, "/blobs/"):
		i := strings.Index(p, "/blobs/")
		b, ok := f.blobs[p[:i]+"@"+p[i+len("/blobs/"):]]
		if !ok {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		if r.Method == http.MethodGet {
			w.Write(b)
		}
	case strings.Contains(p, "/manifests/"):
		i := strings.Index(p, "/manifests/")
		key := p[:i] + ":" + p[i+len("/manifests/"):]
		if r.Method == http.MethodPut {
			f.manifests[key] = body
			f.types[key] = r.Header.Get("Content-Type")
			w.WriteHeader(http.StatusCreated)
			return
		}
		b, ok := f.manifests[key]
		if !ok {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", f.types[key])
		w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

// twoImages writes a layout with a base image and one on top of it, both for two platforms.
func twoImages(t *testing.T) *ociimage.Layout {
	t.Helper()
	l, err := ociimage.OpenLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var base, top []v1.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		b, err := l.AddEntriesLayer([]ociimage.Entry{ociimage.File("/etc/os", []byte("base "+arch), 0o644)}, "base")
		if err != nil {
			t.Fatal(err)
		}
		tl, err := l.AddEntriesLayer([]ociimage.Entry{ociimage.File("/usr/bin/tool", []byte("tool "+arch), 0o755)}, "tool")
		if err != nil {
			t.Fatal(err)
		}
		bm, err := l.AddImage(ociimage.Image{Architecture: arch}, []ociimage.Layer{b})
		if err != nil {
			t.Fatal(err)
		}
		tm, err := l.AddImage(ociimage.Image{Architecture: arch}, []ociimage.Layer{b, tl})
		if err != nil {
			t.Fatal(err)
		}
		base, top = append(base, bm), append(top, tm)
	}
	for _, im := range []struct {
		ms   []v1.Descriptor
		name string
	}{{base, "docker.io/library/base:1"}, {top, "docker.io/library/top:1"}} {
		ix, err := l.AddIndex(im.ms)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Tag(ix, im.name); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func TestPushLayoutAndReadBack(t *testing.T) {
	reg := newFakeRegistry()
	srv := httptest.NewTLSServer(reg)
	defer srv.Close()
	c := &Client{Base: srv.URL, HTTP: srv.Client()}
	ctx := context.Background()
	l := twoImages(t)

	names, err := c.PushLayout(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, " ") != "docker.io/library/base:1 docker.io/library/top:1" {
		t.Errorf("pushed %v", names)
	}
	// Per platform: the base layer and config, then the top image's config and tool layer; the
	// base layers reach library/top by mounts, not uploads.
	if reg.uploads != 8 || reg.mounts != 2 {
		t.Errorf("%d uploads and %d mounts, want 8 and 2", reg.uploads, reg.mounts)
	}
	for _, repo := range []string{"library/base", "library/top"} {
		imgs, err := c.Platforms(ctx, repo, "1")
		if err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 2 {
			t.Fatalf("%s:1 has %d images, want 2", repo, len(imgs))
		}
		for i, want := range []string{"amd64", "arm64"} {
			if imgs[i].Platform.Architecture != want || imgs[i].Config.Architecture != want {
				t.Errorf("%s image %d: index says %s, config says %s; want %s", repo, i, imgs[i].Platform.Architecture, imgs[i].Config.Architecture, want)
			}
		}
	}

	// A second push sends no blob again.
	uploads := reg.uploads
	if _, err := c.PushLayout(ctx, l); err != nil {
		t.Fatal(err)
	}
	if reg.uploads != uploads {
		t.Errorf("the second push uploaded %d blobs again", reg.uploads-uploads)
	}

	if _, err := c.Platforms(ctx, "library/none", "1"); !IsNotFound(err) {
		t.Errorf("missing repository: error %v, want a 404", err)
	}
}

func TestRepoTag(t *testing.T) {
	for name, want := range map[string]string{
		"docker.io/library/debian:bookworm": "library/debian bookworm",
		"golang:1.26":                       "library/golang 1.26",
		"10.213.0.1:5000/voting/vote:1":     "voting/vote 1",
	} {
		repo, tag, err := RepoTag(name)
		if err != nil || repo+" "+tag != want {
			t.Errorf("RepoTag(%q) = %q %q %v, want %s", name, repo, tag, err, want)
		}
	}
	if _, _, err := RepoTag("debian"); err == nil {
		t.Error("a name without a tag was accepted")
	}
}

func TestCheckPlatforms(t *testing.T) {
	img := func(claim, actual string) PlatformImage {
		var p PlatformImage
		p.Platform.OS, p.Platform.Architecture, _ = strings.Cut(claim, "/")
		p.Config.OS, p.Config.Architecture, _ = strings.Cut(actual, "/")
		return p
	}
	want := []string{"linux/amd64", "linux/arm64"}
	if err := CheckPlatforms([]PlatformImage{img("linux/amd64", "linux/amd64"), img("linux/arm64", "linux/arm64")}, want); err != nil {
		t.Errorf("a good index: %v", err)
	}
	for name, imgs := range map[string][]PlatformImage{
		"missing arm64": {img("linux/amd64", "linux/amd64")},
		"wrong config":  {img("linux/amd64", "linux/amd64"), img("linux/arm64", "linux/amd64")},
		"amd64 twice":   {img("linux/amd64", "linux/amd64"), img("linux/amd64", "linux/amd64"), img("linux/arm64", "linux/arm64")},
	} {
		if err := CheckPlatforms(imgs, want); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
