package k8sprov

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/pelletier/go-toml/v2"
)

// buildkitd.toml names files by path: a registry's CA certificates (`ca = [...]`) and client key
// pairs (`[[registry."host".keypair]] key = ..., cert = ...`). Those paths are on the machine
// where the job runs, the same file a user points buildkitd at on a workstation, and nothing of
// them exists in a builder pod. BundleBuildkitdConfig reads every such file where the job runs,
// the Secret carries it to the builders (filesDir in the config volume), and the config shipped
// to them names the files there.

const (
	// filesDir is where the config volume holds the files buildkitd.toml names.
	filesSubdir = "files"
	filesDir    = configDir + "/" + filesSubdir
	// secretKeyFilePrefix starts the Secret's key of each such file.
	secretKeyFilePrefix = "file-"
	// maxBuildkitdFilesSize keeps the Secret (config, certificates and these files) below the
	// API's 1 MiB object limit. CA bundles and key pairs are a few KiB each.
	maxBuildkitdFilesSize = 512 << 10
)

// AcceptedBuildkitdFiles describes what buildkitd-config may name.
const AcceptedBuildkitdFiles = "registry ca and keypair files that are readable where the job runs (relative paths are relative to the config file's directory); they are shipped to the builders, at most 512 KiB in all"

// BuildkitdBundle is a buildkitd.toml whose file paths point into the builder's config volume,
// and the files they name, keyed by their name there.
type BuildkitdBundle struct {
	Config string
	Files  map[string][]byte
}

// BundleBuildkitdConfig reads the files that content names (registry CAs and key pairs) with
// read, relative paths resolved against baseDir, and returns the config rewritten to name them
// where builders find them. A config that names no file comes back unchanged; one that is not
// valid TOML too (validation reports it with its position). Every unreadable file is reported,
// each as an *InputError for buildkitd-config naming the registry and the key.
func BundleBuildkitdConfig(content, baseDir string, read func(string) ([]byte, error)) (BuildkitdBundle, error) {
	var document map[string]any
	if err := toml.Unmarshal([]byte(content), &document); err != nil {
		return BuildkitdBundle{Config: content}, nil
	}
	registries, _ := document["registry"].(map[string]any)
	b := &bundler{baseDir: baseDir, read: read, files: map[string][]byte{}, keyOf: map[string]string{}}
	hosts := make([]string, 0, len(registries))
	for host := range registries {
		hosts = append(hosts, host)
	}
	slices.Sort(hosts)
	for _, host := range hosts {
		section, ok := registries[host].(map[string]any)
		if !ok {
			continue
		}
		if cas, ok := section["ca"].([]any); ok {
			for i, ca := range cas {
				cas[i] = b.ship(host, "ca", ca)
			}
		}
		if pairs, ok := section["keypair"].([]any); ok {
			for _, p := range pairs {
				if pair, ok := p.(map[string]any); ok {
					for _, field := range []string{"key", "cert"} {
						if v, ok := pair[field]; ok {
							pair[field] = b.ship(host, "keypair."+field, v)
						}
					}
				}
			}
		}
	}
	if len(b.errs) > 0 {
		return BuildkitdBundle{}, errors.Join(b.errs...)
	}
	if len(b.files) == 0 {
		return BuildkitdBundle{Config: content}, nil
	}
	if b.size > maxBuildkitdFilesSize {
		return BuildkitdBundle{}, &InputError{Input: InputBuildkitdConfig, Value: fmt.Sprintf("%d files", len(b.files)),
			Err: fmt.Errorf("the files it names are %d bytes in all", b.size), Accepted: AcceptedBuildkitdFiles}
	}
	out, err := toml.Marshal(document)
	if err != nil {
		return BuildkitdBundle{}, fmt.Errorf("writing buildkitd.toml with the builders' paths: %w", err)
	}
	return BuildkitdBundle{Config: "# Written by setup-ephemeral-buildkit: the files this config names are in " + filesDir + ".\n" + string(out), Files: b.files}, nil
}

// bundler collects the files of one config: each path once, under a key the Secret accepts.
type bundler struct {
	baseDir string
	read    func(string) ([]byte, error)
	files   map[string][]byte
	keyOf   map[string]string // path -> key
	size    int
	errs    []error
}

// ship reads the file that value names (registry host, field key) and returns its path in the
// builder; a value that is not a string is left for buildkitd to refuse.
func (b *bundler) ship(host, field string, value any) any {
	p, ok := value.(string)
	if !ok || p == "" {
		return value
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(b.baseDir, p)
	}
	key, seen := b.keyOf[p]
	if !seen {
		data, err := b.read(p)
		if err != nil {
			b.errs = append(b.errs, &InputError{Input: InputBuildkitdConfig, Value: fmt.Sprintf("[registry.%q] %s = %q", host, field, value),
				Err: err, Accepted: AcceptedBuildkitdFiles})
			return value
		}
		base := secretKeySafe.ReplaceAllString(filepath.Base(p), "_")
		if len(base) > 64 { // a Secret's key is at most 253 characters
			base = base[len(base)-64:]
		}
		key = fmt.Sprintf("%s%d-%s", secretKeyFilePrefix, len(b.keyOf), base)
		b.keyOf[p] = key
		b.files[key] = data
		b.size += len(data)
	}
	return filesDir + "/" + key
}

// secretKeySafe matches what a Secret's key may not contain.
var secretKeySafe = regexp.MustCompile(`[^-._a-zA-Z0-9]`)
