package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Config says where the cluster's binaries, images and state live.
type Config struct {
	// BinDir holds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, etcd.
	BinDir string
	// ImagesDir holds OCI archives (*.tar) imported into containerd before the kubelet starts.
	ImagesDir string
	// StateDir holds certificates, data, logs and the host record. It must be on a file system
	// overlayfs can use (not overlayfs itself, not tmpfs for large builds).
	StateDir string
	// Log receives one line per phase; nil discards.
	Log io.Writer
	// StartTimeout bounds the whole start-up; zero means two minutes.
	StartTimeout time.Duration
}

// NodeName is the name of the cluster's only node.
const NodeName = "sebk-node"

// Info is what a client needs to use a running cluster; Up writes it to <state>/cluster.json.
type Info struct {
	Server        string `json:"server"`
	CAFile        string `json:"caFile"`
	AdminCertFile string `json:"adminCertFile"`
	AdminKeyFile  string `json:"adminKeyFile"`
	Kubeconfig    string `json:"kubeconfig"`
	NodeName      string `json:"nodeName"`
	NodeIP        string `json:"nodeIP"`
	// ArchNodeLabels maps an architecture (amd64, arm64) to the node label (key=value) that
	// selects the node able to run it.
	ArchNodeLabels map[string]string `json:"archNodeLabels"`
	// Images are the image names imported into the node's containerd, by archive name.
	Images map[string]string `json:"images"`
	// Registry is the cluster's OCI registry as host:port (RegistryHost), reachable from the host
	// and from pods; RegistryCAFile is the CA its TLS certificate is checked against.
	Registry       string `json:"registry"`
	RegistryCAFile string `json:"registryCAFile"`
	// BaseImages are the images pushed to the registry at start-up (Docker Hub names such as
	// docker.io/library/golang:1.26, stored under library/golang:1.26), then the product's
	// (ghcr.io/org/setup-ephemeral-buildkit:v1, stored under org/setup-ephemeral-buildkit:v1).
	BaseImages []string `json:"baseImages"`
	// BuildkitdConfigFile is a buildkitd.toml (BuildkitdConfig) for the product's
	// buildkitd-config input: builders trust the registry and use it as their Docker Hub mirror.
	BuildkitdConfigFile string `json:"buildkitdConfigFile"`
	// AuditLogFile is the API server's audit log (JSON lines, auditPolicy): every request a
	// ServiceAccount makes, at the server, so a benchmark counts a job's requests by verb and
	// resource however its client is built (internal/testing/auditlog reads it).
	AuditLogFile string `json:"auditLogFile"`
	// StorageClass is the StorageClass of the cluster's dynamic volume provisioner
	// (StorageClassName): claims of it get a directory on the node.
	StorageClass string `json:"storageClass"`
}

// Cluster is a running local cluster.
type Cluster struct {
	StateDir string
	Info     Info
}

// Load describes the running cluster whose state is in stateDir.
func Load(stateDir string) (*Cluster, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, "cluster.json"))
	if err != nil {
		return nil, fmt.Errorf("no local cluster in %s (start one with `make cluster-up`): %w", stateDir, err)
	}
	c := &Cluster{StateDir: stateDir}
	if err := json.Unmarshal(data, &c.Info); err != nil {
		return nil, fmt.Errorf("parsing %s/cluster.json: %w", stateDir, err)
	}
	return c, nil
}

// AdminConfig returns a rest.Config for a cluster administrator (system:masters).
func (c *Cluster) AdminConfig() *rest.Config {
	return &rest.Config{
		Host: c.Info.Server,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   c.Info.CAFile,
			CertFile: c.Info.AdminCertFile,
			KeyFile:  c.Info.AdminKeyFile,
		},
		QPS:   100,
		Burst: 200,
	}
}

// ServiceAccountConfig returns a rest.Config that authenticates as the given ServiceAccount with
// a fresh token bound to no pod (as a kubeconfig outside the cluster holds it), so tests exercise
// exactly the rights a Role grants.
func (c *Cluster) ServiceAccountConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	return c.serviceAccountConfig(ctx, namespace, name, nil)
}

// PodServiceAccountConfig returns a rest.Config that authenticates as pod's ServiceAccount with a
// fresh token bound to pod, as the kubelet mounts into it: the API server names the pod in the
// requests' userInfo.extra (which the admission policy uses), and the token dies with the pod.
func (c *Cluster) PodServiceAccountConfig(ctx context.Context, pod *corev1.Pod) (*rest.Config, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return c.serviceAccountConfig(ctx, pod.Namespace, sa, pod)
}

func (c *Cluster) serviceAccountConfig(ctx context.Context, namespace, name string, bound *corev1.Pod) (*rest.Config, error) {
	admin, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	expiry := int64(3600)
	spec := authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}
	if bound != nil {
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: bound.Name, UID: bound.UID}
	}
	tr, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting a token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	return &rest.Config{
		Host:            c.Info.Server,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: c.Info.CAFile},
		QPS:             100,
		Burst:           200,
	}, nil
}

type logger struct{ w io.Writer }

func (l logger) printf(format string, args ...any) {
	if l.w != nil {
		fmt.Fprintf(l.w, format+"\n", args...)
	}
}

// Up starts the cluster: the parts of startOrder one after the other, each healthy before the
// next starts. It first undoes whatever a previous run left in cfg.StateDir, and on any failure
// it undoes its own partial start (Down, from the host record) before returning the error.
func Up(ctx context.Context, cfg Config) (c *Cluster, err error) {
	log := logger{cfg.Log}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if err := Down(cfg.StateDir, cfg.Log); err != nil {
		return nil, fmt.Errorf("cleaning up a previous run: %w", err)
	}
	if err := checkPrerequisites(cfg.BinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	rec, err := loadHostRecord(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			log.printf("start failed; rolling back: %v", err)
			if downErr := Down(cfg.StateDir, cfg.Log); downErr != nil {
				err = errors.Join(err, fmt.Errorf("rolling back: %w", downErr))
			}
		}
	}()
	startCtx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	s := newSession(cfg, rec)
	started := time.Now()
	for _, part := range startOrder() {
		t := time.Now()
		if err := part.Start(startCtx, s); err != nil {
			return nil, fmt.Errorf("starting %s: %w", part.Name(), err)
		}
		log.printf("  %-28s %6.2fs", part.Name(), time.Since(t).Seconds())
	}
	c = &Cluster{StateDir: cfg.StateDir, Info: s.info}
	data, err := json.MarshalIndent(c.Info, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding cluster info: %w", err)
	}
	if err := writeFile(filepath.Join(cfg.StateDir, "cluster.json"), string(data)); err != nil {
		return nil, err
	}
	log.printf("  %-28s %6.2fs", "total", time.Since(started).Seconds())
	return c, nil
}

// checkPrerequisites fails before any host change when a binary or tool the parts need is missing.
func checkPrerequisites(binDir string) error {
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", registryName, storageName} {
		if _, err := os.Stat(filepath.Join(binDir, bin)); err != nil {
			return fmt.Errorf("binary %s missing in %s (build it with `make tools`): %w", bin, binDir, err)
		}
	}
	for _, tool := range []string{"containerd", "ctr", "ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found on PATH (install the Debian packages with `make deps`): %w", tool, err)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return fmt.Errorf("CNI plugins missing in /usr/lib/cni (install containernetworking-plugins with `make deps`): %w", err)
	}
	return nil
}

// nodeReady succeeds once the node reports Ready and carries no NoSchedule taint.
func nodeReady(ctx context.Context, client kubernetes.Interface) error {
	node, err := client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ready := false
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			ready = cond.Status == corev1.ConditionTrue
			if !ready {
				return fmt.Errorf("node %s not ready: %s", NodeName, cond.Message)
			}
		}
	}
	if !ready {
		return fmt.Errorf("node %s has no Ready condition yet", NodeName)
	}
	for _, taint := range node.Spec.Taints {
		if taint.Effect == corev1.TaintEffectNoSchedule || taint.Effect == corev1.TaintEffectNoExecute {
			return fmt.Errorf("node %s still tainted %s", NodeName, taint.ToString())
		}
	}
	return nil
}

func httpCheck(client *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	}
}

// freePorts asks the kernel for n free loopback ports by listening on :0.
func freePorts(n int) ([]int, error) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
