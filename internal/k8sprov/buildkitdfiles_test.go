package k8sprov

import (
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// files is a job's filesystem for BundleBuildkitdConfig.
type files map[string]string

func (f files) read(path string) ([]byte, error) {
	if data, ok := f[path]; ok {
		return []byte(data), nil
	}
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

func TestBundleBuildkitdConfigShipsRegistryFiles(t *testing.T) {
	config := `debug = true
[registry."registry.example.com"]
  ca = ["/etc/ssl/private-ca.pem", "certs/extra ca.pem"]
  [[registry."registry.example.com".keypair]]
    key = "/etc/ssl/client.key"
    cert = "/etc/ssl/client.pem"
[registry."mirror.example.com"]
  ca = ["/etc/ssl/private-ca.pem"]
[registry."docker.io"]
  mirrors = ["mirror.example.com"]
`
	job := files{
		"/etc/ssl/private-ca.pem":       "CA",
		"/work/repo/certs/extra ca.pem": "EXTRA",
		"/etc/ssl/client.key":           "KEY",
		"/etc/ssl/client.pem":           "CERT",
	}
	bundle, err := BundleBuildkitdConfig(config, "/work/repo", job.read)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Debug    bool
		Registry map[string]struct {
			Mirrors []string
			CA      []string
			KeyPair []struct{ Key, Cert string }
		}
	}
	if err := toml.Unmarshal([]byte(bundle.Config), &got); err != nil {
		t.Fatalf("the rewritten config is not TOML: %v\n%s", err, bundle.Config)
	}
	// Every path names a file of the bundle, whose content is the job's file; each file once.
	content := func(p string) string {
		t.Helper()
		name, ok := strings.CutPrefix(p, filesDir+"/")
		if !ok {
			t.Errorf("path %q is not in %s", p, filesDir)
		}
		return string(bundle.Files[name])
	}
	example := got.Registry["registry.example.com"]
	if len(example.CA) != 2 || content(example.CA[0]) != "CA" || content(example.CA[1]) != "EXTRA" {
		t.Errorf("registry.example.com ca = %q", example.CA)
	}
	if len(example.KeyPair) != 1 || content(example.KeyPair[0].Key) != "KEY" || content(example.KeyPair[0].Cert) != "CERT" {
		t.Errorf("registry.example.com keypair = %+v", example.KeyPair)
	}
	if mirror := got.Registry["mirror.example.com"]; len(mirror.CA) != 1 || mirror.CA[0] != example.CA[0] {
		t.Errorf("the CA both registries name is not shipped once: %q vs %q", mirror.CA, example.CA)
	}
	if !got.Debug || len(got.Registry["docker.io"].Mirrors) != 1 {
		t.Errorf("settings other than paths changed: %+v", got)
	}
	if len(bundle.Files) != 4 {
		t.Errorf("files %v, want 4", bundle.Files)
	}
	for name := range bundle.Files {
		if secretKeySafe.MatchString(name) || !strings.HasPrefix(name, secretKeyFilePrefix) {
			t.Errorf("file name %q is not a Secret key of ours", name)
		}
	}
}

func TestBundleBuildkitdConfigWithoutFilesIsUnchanged(t *testing.T) {
	for _, config := range []string{
		"[registry.\"docker.io\"]\n  mirrors = [\"mirror.example.com\"]\n",
		"not [valid toml",
		"",
	} {
		bundle, err := BundleBuildkitdConfig(config, "/", files{}.read)
		if err != nil || bundle.Config != config || len(bundle.Files) != 0 {
			t.Errorf("BundleBuildkitdConfig(%q) = %+v, %v; want it unchanged", config, bundle, err)
		}
	}
}

func TestBundleBuildkitdConfigNamesEveryUnreadableFile(t *testing.T) {
	config := `[registry."a.example.com"]
  ca = ["/missing/ca.pem"]
[registry."b.example.com"]
  [[registry."b.example.com".keypair]]
    key = "client.key"
    cert = "/present.pem"
`
	_, err := BundleBuildkitdConfig(config, "/cfg", files{"/present.pem": "x"}.read)
	var inputErrs []*InputError
	for _, e := range Flatten(err) {
		var ie *InputError
		if !errors.As(e, &ie) || ie.Input != InputBuildkitdConfig || ie.Accepted != AcceptedBuildkitdFiles || !errors.Is(ie, fs.ErrNotExist) {
			t.Errorf("error %v is not an InputError for %s wrapping the read error", e, InputBuildkitdConfig)
			continue
		}
		inputErrs = append(inputErrs, ie)
	}
	if len(inputErrs) != 2 {
		t.Fatalf("got %d errors, want one per unreadable file: %v", len(inputErrs), err)
	}
	for i, want := range []string{`[registry."a.example.com"] ca = "/missing/ca.pem"`, `[registry."b.example.com"] keypair.key = "client.key"`} {
		if inputErrs[i].Value != want {
			t.Errorf("error %d names %q, want %q", i, inputErrs[i].Value, want)
		}
	}
	if !strings.Contains(err.Error(), "/cfg/client.key") {
		t.Errorf("the error does not say where the relative path was looked for: %v", err)
	}
}

func TestBundleBuildkitdConfigRefusesTooMuch(t *testing.T) {
	big := strings.Repeat("x", maxBuildkitdFilesSize/2+1)
	config := "[registry.\"r\"]\n  ca = [\"/a\", \"/b\"]\n"
	_, err := BundleBuildkitdConfig(config, "/", files{"/a": big, "/b": big}.read)
	var ie *InputError
	if !errors.As(err, &ie) || ie.Input != InputBuildkitdConfig || !strings.Contains(err.Error(), "bytes in all") {
		t.Fatalf("err = %v, want the files' size refused", err)
	}
}
