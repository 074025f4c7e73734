package localcluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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
	// StartTimeout bounds each component's start-up; zero means two minutes.
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
	// docker.io/library/golang:1.26, stored under library/golang:1.26).
	BaseImages []string `json:"baseImages"`
	// BuildkitdConfigFile is a buildkitd.toml (BuildkitdConfig) for the product's
	// buildkitd-config input: builders trust the registry and use it as their Docker Hub mirror.
	BuildkitdConfigFile string `json:"buildkitdConfigFile"`
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
// a fresh bound token, so tests exercise exactly the rights a Role grants.
func (c *Cluster) ServiceAccountConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	admin, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	expiry := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
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

// Up starts the cluster. It first undoes whatever a previous run left in cfg.StateDir, and on
// any failure it undoes its own partial start before returning the error.
func Up(ctx context.Context, cfg Config) (c *Cluster, err error) {
	log := logger{cfg.Log}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if err := Down(cfg.StateDir, cfg.Log); err != nil {
		return nil, fmt.Errorf("cleaning up a previous run: %w", err)
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, bin)); err != nil {
			return nil, fmt.Errorf("binary %s missing in %s (build it with `make tools`): %w", bin, cfg.BinDir, err)
		}
	}
	for _, tool := range []string{"containerd", "ctr", "ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found on PATH (install the Debian packages with `make deps`): %w", tool, err)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return nil, fmt.Errorf("CNI plugins missing in /usr/lib/cni (install containernetworking-plugins with `make deps`): %w", err)
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
	started := time.Now()
	phase := func(name string) func() {
		t := time.Now()
		return func() { log.printf("  %-28s %6.2fs", name, time.Since(t).Seconds()) }
	}

	done := phase("host preparation")
	if err := saveSysctls(rec); err != nil {
		return nil, err
	}
	if err := recordMissingPaths(rec); err != nil {
		return nil, err
	}
	if err := recordNetns(rec); err != nil {
		return nil, err
	}
	if err := registerBinfmt(rec); err != nil {
		return nil, err
	}
	if err := createBridge(rec, bridgeName, nodeAddress+"/24"); err != nil {
		return nil, err
	}
	if err := isolateBridge(rec, bridgeName); err != nil {
		return nil, err
	}
	pki := pkiFiles{Dir: filepath.Join(cfg.StateDir, "pki")}
	if err := writePKI(pki, NodeName, net.ParseIP(nodeAddress), time.Now()); err != nil {
		return nil, err
	}
	done()

	logDir := filepath.Join(cfg.StateDir, "logs")
	bin := func(name string) string { return filepath.Join(cfg.BinDir, name) }
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort, cmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	server := fmt.Sprintf("https://%s:%d", nodeAddress, apiPort)

	startCtx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()

	done = phase("etcd")
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	etcd, err := startProcess(rec, logDir, "etcd", bin("etcd"), []string{
		"--name=local", "--data-dir=" + filepath.Join(cfg.StateDir, "etcd"),
		"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=local=http://127.0.0.1:%d", etcdPeer),
		"--listen-metrics-urls=", "--unsafe-no-fsync", "--log-level=warn",
	}, nil)
	if err != nil {
		return nil, err
	}
	if err := etcd.waitHealthy(startCtx, httpCheck(http.DefaultClient, etcdURL+"/health")); err != nil {
		return nil, err
	}
	done()

	done = phase("kube-apiserver")
	admin, err := tls.LoadX509KeyPair(pki.Cert("admin"), pki.Key("admin"))
	if err != nil {
		return nil, fmt.Errorf("loading admin certificate: %w", err)
	}
	caPool, err := loadCertPool(pki.CA())
	if err != nil {
		return nil, err
	}
	adminHTTP := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool, Certificates: []tls.Certificate{admin}}}}
	apiserver, err := startProcess(rec, logDir, "kube-apiserver", bin("kube-apiserver"), []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + nodeAddress, fmt.Sprintf("--secure-port=%d", apiPort),
		"--advertise-address=" + nodeAddress,
		"--service-cluster-ip-range=" + serviceSubnet,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy",
		// buildkitd needs a privileged pod to set up cgroups for RUN steps.
		"--allow-privileged=true",
		"--client-ca-file=" + pki.CA(),
		"--tls-cert-file=" + pki.Cert("apiserver"), "--tls-private-key-file=" + pki.Key("apiserver"),
		"--kubelet-client-certificate=" + pki.Cert("apiserver-kubelet-client"),
		"--kubelet-client-key=" + pki.Key("apiserver-kubelet-client"),
		"--kubelet-certificate-authority=" + pki.CA(),
		// Otherwise the API server resolves the node's hostname through the machine's DNS.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.path("sa.pub"),
		"--service-account-signing-key-file=" + pki.Key("sa"),
		"--cert-dir=" + filepath.Join(cfg.StateDir, "apiserver"),
		"--profiling=false", "--v=1",
	}, nil)
	if err != nil {
		return nil, err
	}
	if err := apiserver.waitHealthy(startCtx, httpCheck(adminHTTP, server+"/readyz")); err != nil {
		return nil, err
	}
	done()

	for _, identity := range []string{"admin", "controller-manager", "scheduler", "kubelet-client"} {
		if err := writeFile(filepath.Join(cfg.StateDir, identity+".kubeconfig"),
			kubeconfig(server, pki.CA(), pki.Cert(identity), pki.Key(identity), identity)); err != nil {
			return nil, err
		}
	}
	kc := func(identity string) string { return filepath.Join(cfg.StateDir, identity+".kubeconfig") }

	done = phase("controller-manager+scheduler")
	insecureHTTP := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // #nosec: self-signed health endpoints on loopback
	cm, err := startProcess(rec, logDir, "kube-controller-manager", bin("kube-controller-manager"), []string{
		"--kubeconfig=" + kc("controller-manager"),
		"--authentication-kubeconfig=" + kc("controller-manager"),
		"--authorization-kubeconfig=" + kc("controller-manager"),
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", cmPort),
		"--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller," +
			"node-lifecycle-controller,root-ca-certificate-publisher-controller,deployment-controller,replicaset-controller," +
			"pod-garbage-collector-controller,ttl-after-finished-controller,job-controller,cronjob-controller",
		"--service-account-private-key-file=" + pki.Key("sa"),
		"--root-ca-file=" + pki.CA(),
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--cert-dir=" + filepath.Join(cfg.StateDir, "controller-manager"),
		"--profiling=false", "--v=1",
	}, nil)
	if err != nil {
		return nil, err
	}
	scheduler, err := startProcess(rec, logDir, "kube-scheduler", bin("kube-scheduler"), []string{
		"--kubeconfig=" + kc("scheduler"),
		"--authentication-kubeconfig=" + kc("scheduler"),
		"--authorization-kubeconfig=" + kc("scheduler"),
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", schedPort),
		"--leader-elect=false",
		"--cert-dir=" + filepath.Join(cfg.StateDir, "scheduler"),
		"--profiling=false", "--v=1",
	}, nil)
	if err != nil {
		return nil, err
	}
	if err := cm.waitHealthy(startCtx, httpCheck(insecureHTTP, fmt.Sprintf("https://127.0.0.1:%d/healthz", cmPort))); err != nil {
		return nil, err
	}
	if err := scheduler.waitHealthy(startCtx, httpCheck(insecureHTTP, fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort))); err != nil {
		return nil, err
	}
	done()

	done = phase("containerd+images")
	containerdAddress := filepath.Join(cfg.StateDir, "containerd", "containerd.sock")
	if err := rec.update(func(r *hostRecord) { r.ContainerdAddress = containerdAddress }); err != nil {
		return nil, err
	}
	cniConfDir := filepath.Join(cfg.StateDir, "cni", "net.d")
	if err := writeFile(filepath.Join(cniConfDir, "10-"+cniNetwork+".conflist"), cniConfig(cfg.StateDir)); err != nil {
		return nil, err
	}
	images, err := imageArchives(cfg.ImagesDir)
	if err != nil {
		return nil, err
	}
	sandboxImage, ok := images["pause"]
	if !ok {
		return nil, fmt.Errorf("no pause.tar in %s (build the images with `make images`)", cfg.ImagesDir)
	}
	containerdConf := filepath.Join(cfg.StateDir, "containerd", "config.toml")
	if err := writeFile(containerdConf, containerdConfig(cfg.StateDir, containerdAddress, sandboxImage, cniConfDir)); err != nil {
		return nil, err
	}
	containerdBin, _ := exec.LookPath("containerd")
	containerd, err := startProcess(rec, logDir, "containerd", containerdBin, []string{"--config", containerdConf}, nil)
	if err != nil {
		return nil, err
	}
	if err := containerd.waitHealthy(startCtx, func(ctx context.Context) error {
		return exec.CommandContext(ctx, "ctr", "--address", containerdAddress, "version").Run()
	}); err != nil {
		return nil, err
	}
	if err := importImages(startCtx, containerdAddress, cfg.ImagesDir, images); err != nil {
		return nil, err
	}
	done()

	done = phase("kubelet")
	healthz, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	kubeletConf := filepath.Join(cfg.StateDir, "kubelet", "config.yaml")
	if err := writeFile(kubeletConf, kubeletConfig(cfg.StateDir, pki, containerdAddress, healthz[0])); err != nil {
		return nil, err
	}
	archLabels := map[string]string{"amd64": ArchLabelPrefix + "amd64=native", "arm64": ArchLabelPrefix + "arm64=emulated"}
	kubelet, err := startProcess(rec, logDir, "kubelet", bin("kubelet"), []string{
		"--config=" + kubeletConf,
		"--kubeconfig=" + kc("kubelet-client"),
		"--hostname-override=" + NodeName,
		"--node-ip=" + nodeAddress,
		"--root-dir=" + filepath.Join(cfg.StateDir, "kubelet", "root"),
		"--cert-dir=" + filepath.Join(cfg.StateDir, "kubelet", "pki"),
		"--node-labels=" + archLabels["amd64"] + "," + archLabels["arm64"],
		"--v=1",
	}, nil)
	if err != nil {
		return nil, err
	}
	if err := kubelet.waitHealthy(startCtx, httpCheck(http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/healthz", healthz[0]))); err != nil {
		return nil, err
	}

	c = &Cluster{StateDir: cfg.StateDir, Info: Info{
		Server: server, CAFile: pki.CA(), AdminCertFile: pki.Cert("admin"), AdminKeyFile: pki.Key("admin"),
		Kubeconfig: kc("admin"), NodeName: NodeName, NodeIP: nodeAddress, ArchNodeLabels: archLabels, Images: images,
	}}
	client, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	if err := kubelet.waitHealthy(startCtx, func(ctx context.Context) error { return nodeReady(ctx, client) }); err != nil {
		return nil, err
	}
	done()
	done = phase("default serviceaccount")
	if err := cm.waitHealthy(startCtx, func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return nil, err
	}
	done()
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
