package localcluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociimage"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociregistry"
)

// The cluster's OCI registry: distribution's registry (hack/tools/registry) as a host process,
// serving TLS on the bridge address, which builder pods and the host both reach. It runs on the
// host rather than in a pod so that it is up before the kubelet (the node's containerd resolves
// every image name to it) and needs no image of its own; Down stops it like every other process
// and its storage goes with the state directory.
const (
	registryName = "registry"
	// RegistryHost is the registry's host:port, the first part of the images pushed to it.
	RegistryHost = nodeAddress + ":5000"
	// BaseImagesDir is the OCI layout, under the images directory, of the base images
	// (hack/cmd/mkimages writes it); the cluster pushes every image named in it to the registry.
	BaseImagesDir = "base"
	// ProductImagesDir is the OCI layout, under the images directory, of the product's images,
	// the CLI image and the CI job image (hack/cmd/mkimages); the cluster pushes them too.
	ProductImagesDir = "product"
	// registryCAValidity matches the cluster's other CAs: a CA is made at every start.
	registryCAValidity = 10 * 24 * time.Hour
)

// registryFiles are the registry's files under the state directory.
type registryFiles struct{ dir string }

func (f registryFiles) config() string  { return filepath.Join(f.dir, "config.yml") }
func (f registryFiles) cert() string    { return filepath.Join(f.dir, "tls.crt") }
func (f registryFiles) key() string     { return filepath.Join(f.dir, "tls.key") }
func (f registryFiles) storage() string { return filepath.Join(f.dir, "data") }
func (f registryFiles) ca() string      { return filepath.Join(f.dir, "ca.crt") }

// containerdHostsFile is the _default host directory's hosts.toml under the state directory,
// matching config_path in containerdConfig.
func containerdHostsFile(stateDir string) string {
	return filepath.Join(stateDir, "containerd", "certs.d", "_default", "hosts.toml")
}

// registryConfig is distribution's configuration: filesystem storage in the state directory,
// TLS on the bridge address, deletes allowed (tests clean up after themselves), no debug server.
func registryConfig(f registryFiles) string {
	r := strings.NewReplacer("$ADDR", RegistryHost, "$DATA", f.storage(), "$CERT", f.cert(), "$KEY", f.key())
	return r.Replace(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $DATA
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ADDR
  tls:
    certificate: $CERT
    key: $KEY
  draintimeout: 1s
`)
}

// registry is the cluster's OCI registry (see RegistryHost): its server certificate issued by a
// CA of this cluster's own (made at every start, like its other CAs), its storage in
// <state>/registry, the base images of the images directory pushed once it answers, and the
// node's containerd pointed at it.
type registry struct {
	files registryFiles
}

func (r *registry) Name() string { return registryName }

func (r *registry) Start(ctx context.Context, s *session) error {
	ca, err := newCertAuthorityNamed("setup-ephemeral-buildkit local registry CA", time.Now(), registryCAValidity)
	if err != nil {
		return err
	}
	r.files = registryFiles{dir: s.dir("registry")}
	if err := r.writeFiles(ca); err != nil {
		return err
	}
	if err := writeFile(containerdHostsFile(s.cfg.StateDir), containerdHosts(r.files.ca())); err != nil {
		return err
	}
	// No OpenTelemetry exporter: distribution would post traces to localhost:4318 every 10 s.
	p, err := startProcess(s.rec, s.dir("logs"), registryName, s.bin(registryName), []string{"serve", r.files.config()}, []string{"OTEL_TRACES_EXPORTER=none"})
	if p != nil {
		s.procs[registryName] = p
	}
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if err := p.waitHealthy(ctx, httpCheck(client, "https://"+RegistryHost+"/v2/")); err != nil {
		return err
	}
	names, err := pushBaseImages(ctx, client, filepath.Join(s.cfg.ImagesDir, BaseImagesDir))
	if err != nil {
		return err
	}
	// The product's images, under the names a release gives them (ghcr.io/org/...): the node
	// resolves every name through this registry, so the shipped manifests run them as they are.
	product, err := pushBaseImages(ctx, client, filepath.Join(s.cfg.ImagesDir, ProductImagesDir))
	if err != nil {
		return err
	}
	names = append(names, product...)
	conf := s.dir("buildkitd.toml")
	if err := writeFile(conf, BuildkitdConfig(r.files.ca())); err != nil {
		return err
	}
	s.info.Registry, s.info.RegistryCAFile, s.info.BaseImages, s.info.BuildkitdConfigFile = RegistryHost, r.files.ca(), names, conf
	return nil
}

// writeFiles writes the registry's server certificate and key (issued by ca for the bridge
// address and loopback), ca's certificate and the configuration.
func (r *registry) writeFiles(ca *certAuthority) error {
	if err := os.MkdirAll(r.files.storage(), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", r.files.storage(), err)
	}
	certPEM, keyPEM, err := ca.issue(certRequest{
		commonName: "setup-ephemeral-buildkit local registry",
		dnsNames:   []string{"localhost"},
		ips:        []net.IP{net.ParseIP(nodeAddress), net.ParseIP("127.0.0.1")},
		server:     true,
	}, time.Now())
	if err != nil {
		return err
	}
	for path, data := range map[string][]byte{
		r.files.cert(): certPEM, r.files.key(): keyPEM, r.files.ca(): ca.certPEM(),
		r.files.config(): []byte(registryConfig(r.files)),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	return nil
}

// pushBaseImages pushes every image of the OCI layout layoutDir (hack/cmd/mkimages writes the
// base and the product images there) to the registry and returns their names. A missing layout
// pushes nothing.
func pushBaseImages(ctx context.Context, client *http.Client, layoutDir string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(layoutDir, "index.json")); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	layout, err := ociimage.OpenLayout(layoutDir)
	if err != nil {
		return nil, err
	}
	c := &ociregistry.Client{Base: "https://" + RegistryHost, HTTP: client}
	names, err := c.PushLayout(ctx, layout)
	if err != nil {
		return nil, fmt.Errorf("pushing the images of %s to the registry: %w", layoutDir, err)
	}
	return names, nil
}

// containerdHosts is the node's containerd registry configuration (config_path), written as
// certs.d/_default/hosts.toml: every image name, whatever registry it names, resolves to the
// cluster's registry, so a pull either finds the image there or fails on this machine. Nothing
// is looked up through the host's resolver or sent anywhere else.
//
// The registry is both the one [host] entry and the server: containerd 1.6 rejects a hosts.toml
// without a [host] table (and then silently falls back to the image's own registry, over the
// host's DNS), and without server it would try the image's own registry after the entries.
func containerdHosts(caFile string) string {
	return fmt.Sprintf(`# Every registry name resolves to the local cluster's registry (containerd's _default host
# directory): an image that is not there fails to pull here, and nothing leaves the machine.
server = "https://%[1]s"
ca = %[2]q
capabilities = ["pull", "resolve"]

[host."https://%[1]s"]
  ca = %[2]q
  capabilities = ["pull", "resolve"]
`, RegistryHost, caFile)
}

// BuildkitdConfig is the buildkitd.toml a job passes as the product's buildkitd-config input to
// use the cluster's registry: trust it through its CA (caFile, on the host: the product ships it
// to the builders), and resolve Docker Hub names (FROM golang, FROM debian) through it as a
// mirror, which is where the base images are.
func BuildkitdConfig(caFile string) string {
	return fmt.Sprintf(`# The local cluster's registry: TLS with the cluster's own CA. setup-ephemeral-buildkit ships
# the file to the builders, as it does any ca or keypair file a buildkitd-config names.
[registry.%q]
  ca = [%q]

# Docker Hub names resolve through the local registry, which holds the base images. A name it
# lacks falls back to Docker Hub, which builder pods cannot reach (no DNS, no route): it fails here.
[registry."docker.io"]
  mirrors = [%q]
`, RegistryHost, caFile, RegistryHost)
}
