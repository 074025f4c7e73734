package localcluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// A component is one part of the local cluster, started by Up in the order of startOrder. Start
// returns once the part is healthy, so the next part can rely on it; if any Start fails, Up
// stops everything from the host record (Down), so no part undoes its own partial start.
//
// To add a part, such as an OCI registry on the host or a storage provisioner:
//   - write a small type that owns its flags and configuration, with Name and Start (see etcd);
//   - start its process with s.startProcess: own process group, log in <state>/logs/<name>.log,
//     PID, binary and flags on the host record before Start returns; then wait with
//     p.waitHealthy, which reports an early exit with the tail of the log;
//   - make any other host change only after recording it with s.rec.update, and add a field to
//     hostRecord for it and a step to downSteps that undoes it (a process needs neither: Down
//     stops every recorded process group, latest first);
//   - publish what clients need in s.info (a new Info field lands in cluster.json), and add the
//     part to startOrder after the parts it needs.
//
// A recorded process can be restarted from any process that loads the cluster (see
// Cluster.RestartAPIServer), because its binary and flags are on the record.
type component interface {
	Name() string
	Start(ctx context.Context, s *session) error
}

// startOrder lists the cluster's parts in start-up order: host set-up first (each change on
// record before it is made), then the control plane, then the node.
func startOrder() []component {
	return []component{
		step{"sysctls", func(_ context.Context, s *session) error { return saveSysctls(s.rec) }},
		step{"hard-coded paths", func(_ context.Context, s *session) error { return recordMissingPaths(s.rec) }},
		step{"network namespaces", func(_ context.Context, s *session) error { return recordNetns(s.rec) }},
		step{"binfmt_misc", func(_ context.Context, s *session) error { return registerBinfmt(s.rec) }},
		step{"bridge", func(_ context.Context, s *session) error { return createBridge(s.rec, bridgeName, nodeAddress+"/24") }},
		step{"firewall", func(_ context.Context, s *session) error { return isolateBridge(s.rec, bridgeName) }},
		step{"certificates", func(_ context.Context, s *session) error {
			return writePKI(s.pki, NodeName, net.ParseIP(nodeAddress), time.Now())
		}},
		// Before containerd and the kubelet: the node resolves every image name to it.
		&registry{},
		&etcd{},
		&apiServer{},
		&controllerManager{},
		&scheduler{},
		&containerd{},
		&kubelet{},
		step{"default serviceaccount", waitDefaultServiceAccount},
		// After the node: its helper pods make and remove the volumes' directories there.
		&storageProvisioner{},
	}
}

// step is a part that is one action rather than a process: a host change or a wait.
type step struct {
	name string
	do   func(ctx context.Context, s *session) error
}

func (st step) Name() string                                { return st.name }
func (st step) Start(ctx context.Context, s *session) error { return st.do(ctx, s) }

// session is what the parts of one Up share: the configuration, the host record, the processes
// started so far, and what earlier parts publish for later ones.
type session struct {
	cfg   Config
	rec   *hostRecord
	pki   pkiFiles
	procs map[string]*process
	// info collects what clients need; Up writes it to cluster.json.
	info Info
	// etcdURL is etcd's client URL, for the API server.
	etcdURL string
	// containerdAddress is containerd's socket, for the kubelet.
	containerdAddress string
}

func newSession(cfg Config, rec *hostRecord) *session {
	return &session{cfg: cfg, rec: rec, pki: pkiFiles{Dir: filepath.Join(cfg.StateDir, "pki")}, procs: map[string]*process{}}
}

// bin is the path of a binary built by hack/build-tools.sh (Kubernetes, etcd, the registry).
func (s *session) bin(name string) string { return filepath.Join(s.cfg.BinDir, name) }

// kubeconfig is the path of the kubeconfig file of a client identity (see apiServer.Start).
func (s *session) kubeconfig(identity string) string {
	return filepath.Join(s.cfg.StateDir, identity+".kubeconfig")
}

// dir is a directory of the state directory a part keeps its files in.
func (s *session) dir(elem ...string) string {
	return filepath.Join(append([]string{s.cfg.StateDir}, elem...)...)
}

// startProcess starts a part's process (see startProcess) with its log in <state>/logs and keeps
// it, so later parts can notice when it exits.
func (s *session) startProcess(name, binary string, args []string) (*process, error) {
	p, err := startProcess(s.rec, s.dir("logs"), name, binary, args, nil)
	if p != nil {
		s.procs[name] = p
	}
	return p, err
}

// adminClient is a client of the API server as cluster administrator.
func (s *session) adminClient() (kubernetes.Interface, error) {
	client, err := kubernetes.NewForConfig((&Cluster{StateDir: s.cfg.StateDir, Info: s.info}).AdminConfig())
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return client, nil
}

// waitDefaultServiceAccount waits for the controller-manager to create the default
// ServiceAccount, without which the ServiceAccount admission plugin rejects pods.
func waitDefaultServiceAccount(ctx context.Context, s *session) error {
	client, err := s.adminClient()
	if err != nil {
		return err
	}
	return s.procs[controllerManagerName].waitHealthy(ctx, func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// adminHTTPClient is an HTTP client that trusts the cluster CA and presents the admin
// certificate, for the API server's health endpoints.
func adminHTTPClient(caFile, certFile, keyFile string) (*http.Client, error) {
	admin, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading admin certificate %s: %w", certFile, err)
	}
	caPool, err := loadCertPool(caFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool, Certificates: []tls.Certificate{admin}}}}, nil
}

func loadCertPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("no certificate in %s", path)
	}
	return pool, nil
}
