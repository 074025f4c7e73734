package localcluster

import (
	"path/filepath"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func TestContainerdResolvesEveryNameToTheRegistry(t *testing.T) {
	conf := containerdConfig("/s", "/s/c.sock", "pause:local", "/s/cni")
	var parsed struct {
		Plugins map[string]struct {
			Registry struct {
				ConfigPath string `toml:"config_path"`
			} `toml:"registry"`
		} `toml:"plugins"`
	}
	if err := toml.Unmarshal([]byte(conf), &parsed); err != nil {
		t.Fatal(err)
	}
	configPath := parsed.Plugins["io.containerd.grpc.v1.cri"].Registry.ConfigPath
	// containerd (1.6 and later) falls back to <config_path>/_default for any registry host.
	if want := filepath.Join(configPath, "_default", "hosts.toml"); containerdHostsFile("/s") != want {
		t.Fatalf("hosts.toml written to %s, but containerd reads %s", containerdHostsFile("/s"), want)
	}
	type hostConfig struct {
		CA           string   `toml:"ca"`
		Capabilities []string `toml:"capabilities"`
	}
	var hosts struct {
		Server string `toml:"server"`
		hostConfig
		Host map[string]hostConfig `toml:"host"`
	}
	if err := toml.Unmarshal([]byte(containerdHosts("/s/registry/ca.crt")), &hosts); err != nil {
		t.Fatal(err)
	}
	want := "https://" + RegistryHost
	// containerd 1.6 refuses a hosts.toml without a [host] table, and falls back to the image's
	// own registry over the host's DNS: the one entry must be there, and be the server.
	entry, ok := hosts.Host[want]
	if hosts.Server != want || hosts.CA != "/s/registry/ca.crt" || len(hosts.Host) != 1 || !ok || entry.CA != hosts.CA {
		t.Errorf("hosts.toml %+v: want only the local registry, as server and [host], over TLS with its CA", hosts)
	}
}

func TestBuildkitdConfigTrustsAndMirrorsTheRegistry(t *testing.T) {
	var conf struct {
		Registry map[string]struct {
			CA      []string `toml:"ca"`
			Mirrors []string `toml:"mirrors"`
			HTTP    *bool    `toml:"http"`
			Insec   *bool    `toml:"insecure"`
		} `toml:"registry"`
	}
	if err := toml.Unmarshal([]byte(BuildkitdConfig("/state/registry/ca.crt")), &conf); err != nil {
		t.Fatal(err)
	}
	local := conf.Registry[RegistryHost]
	if len(local.CA) != 1 || local.CA[0] != "/state/registry/ca.crt" || local.HTTP != nil || local.Insec != nil {
		t.Errorf("registry %s: %+v; want TLS trusted through the CA only", RegistryHost, local)
	}
	if m := conf.Registry["docker.io"].Mirrors; len(m) != 1 || m[0] != RegistryHost {
		t.Errorf("docker.io mirrors %v, want [%s]", m, RegistryHost)
	}
}
