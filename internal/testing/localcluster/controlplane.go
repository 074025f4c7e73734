package localcluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
)

// Process names, as on the host record and in <state>/logs.
const (
	etcdName              = "etcd"
	apiServerName         = "kube-apiserver"
	controllerManagerName = "kube-controller-manager"
	schedulerName         = "kube-scheduler"
	containerdName        = "containerd"
	kubeletName           = "kubelet"
)

// etcd is the cluster's store: one member on loopback, without fsync (its data lives as long as
// the cluster).
type etcd struct {
	clientURL, peerURL, dataDir string
}

func (e *etcd) Name() string { return etcdName }

func (e *etcd) Start(ctx context.Context, s *session) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	e.clientURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	e.peerURL = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	e.dataDir = s.dir("etcd")
	p, err := s.startProcess(etcdName, s.bin(etcdName), e.args())
	if err != nil {
		return err
	}
	s.etcdURL = e.clientURL
	return p.waitHealthy(ctx, httpCheck(http.DefaultClient, e.clientURL+"/health"))
}

func (e *etcd) args() []string {
	return []string{
		"--name=local", "--data-dir=" + e.dataDir,
		"--listen-client-urls=" + e.clientURL, "--advertise-client-urls=" + e.clientURL,
		"--listen-peer-urls=" + e.peerURL,
		"--initial-advertise-peer-urls=" + e.peerURL,
		"--initial-cluster=local=" + e.peerURL,
		"--listen-metrics-urls=", "--unsafe-no-fsync", "--log-level=warn",
	}
}

// apiServer is kube-apiserver on the node's bridge address, with RBAC and the Node authorizer.
// Once it is ready it writes a kubeconfig for each client identity (admin, controller-manager,
// scheduler, kubelet-client).
type apiServer struct {
	port      int
	pki       pkiFiles
	etcdURL   string
	certDir   string
	serverURL string
	// auditPolicy and auditLog are the audit policy file and the log it writes.
	auditPolicy, auditLog string
}

func (a *apiServer) Name() string { return apiServerName }

func (a *apiServer) Start(ctx context.Context, s *session) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	a.port, a.pki, a.etcdURL, a.certDir = ports[0], s.pki, s.etcdURL, s.dir("apiserver")
	a.serverURL = fmt.Sprintf("https://%s:%d", nodeAddress, a.port)
	a.auditPolicy, a.auditLog = filepath.Join(a.certDir, "audit-policy.yaml"), filepath.Join(a.certDir, "audit.log")
	if err := writeFile(a.auditPolicy, auditPolicy); err != nil {
		return err
	}
	adminHTTP, err := adminHTTPClient(s.pki.CA(), s.pki.Cert("admin"), s.pki.Key("admin"))
	if err != nil {
		return err
	}
	p, err := s.startProcess(apiServerName, s.bin(apiServerName), a.args())
	if err != nil {
		return err
	}
	if err := p.waitHealthy(ctx, httpCheck(adminHTTP, a.serverURL+"/readyz")); err != nil {
		return err
	}
	for _, identity := range []string{"admin", "controller-manager", "scheduler", "kubelet-client"} {
		if err := writeFile(s.kubeconfig(identity),
			kubeconfig(a.serverURL, s.pki.CA(), s.pki.Cert(identity), s.pki.Key(identity), identity)); err != nil {
			return err
		}
	}
	s.info.Server, s.info.CAFile = a.serverURL, s.pki.CA()
	s.info.AdminCertFile, s.info.AdminKeyFile = s.pki.Cert("admin"), s.pki.Key("admin")
	s.info.Kubeconfig = s.kubeconfig("admin")
	s.info.AuditLogFile = a.auditLog
	return nil
}

// auditPolicy records one event per request of a ServiceAccount (the identities tests give
// jobs and buildx's kubernetes driver), when the response is complete, without bodies. The
// control plane's own traffic is left out: it would be most of the log and none of a job's.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
`

func (a *apiServer) args() []string {
	pki := a.pki
	return []string{
		"--etcd-servers=" + a.etcdURL,
		"--bind-address=" + nodeAddress, fmt.Sprintf("--secure-port=%d", a.port),
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
		"--cert-dir=" + a.certDir,
		"--audit-policy-file=" + a.auditPolicy, "--audit-log-path=" + a.auditLog, "--audit-log-format=json",
		"--audit-log-maxsize=200", "--audit-log-maxbackup=1",
		"--profiling=false", "--v=1",
	}
}

// insecureHTTP reaches the self-signed health endpoints of the controller-manager and scheduler,
// which listen on loopback only.
var insecureHTTP = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // #nosec: loopback health endpoints

// controllerManager is kube-controller-manager with the controllers the tests rely on: garbage
// collection of owned pods, node lifecycle (it lifts the not-ready taint), service-account
// tokens, the workload controllers buildx's kubernetes driver uses, and ResourceQuota usage
// (quota admission refuses every pod while a quota's status is not computed), and the volume
// controllers that bind claims to the volumes the storage provisioner makes.
type controllerManager struct {
	loopbackDaemon
	saKey, rootCA string
}

func (c *controllerManager) Name() string { return controllerManagerName }

func (c *controllerManager) Start(ctx context.Context, s *session) error {
	c.saKey, c.rootCA = s.pki.Key("sa"), s.pki.CA()
	return c.start(ctx, s, controllerManagerName, "controller-manager", c.args)
}

func (c *controllerManager) args() []string {
	return append(c.commonArgs(),
		"--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,"+
			"node-lifecycle-controller,root-ca-certificate-publisher-controller,deployment-controller,replicaset-controller,"+
			"pod-garbage-collector-controller,ttl-after-finished-controller,job-controller,cronjob-controller,resourcequota-controller,"+
			"persistentvolume-binder-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller",
		"--service-account-private-key-file="+c.saKey,
		"--root-ca-file="+c.rootCA,
		"--use-service-account-credentials=true",
	)
}

// scheduler is kube-scheduler with its defaults.
type scheduler struct{ loopbackDaemon }

func (sc *scheduler) Name() string { return schedulerName }

func (sc *scheduler) Start(ctx context.Context, s *session) error {
	return sc.start(ctx, s, schedulerName, "scheduler", sc.commonArgs)
}

// loopbackDaemon is what the controller-manager and the scheduler share: a client identity with
// its kubeconfig, no leader election, and a health endpoint with a self-signed certificate on a
// free loopback port.
type loopbackDaemon struct {
	port                int
	kubeconfig, certDir string
}

// start picks the port, starts the process with the flags args returns and waits for /healthz.
func (d *loopbackDaemon) start(ctx context.Context, s *session, name, identity string, args func() []string) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	d.port, d.kubeconfig, d.certDir = ports[0], s.kubeconfig(identity), s.dir(identity)
	p, err := s.startProcess(name, s.bin(name), args())
	if err != nil {
		return err
	}
	return p.waitHealthy(ctx, httpCheck(insecureHTTP, fmt.Sprintf("https://127.0.0.1:%d/healthz", d.port)))
}

func (d *loopbackDaemon) commonArgs() []string {
	return []string{
		"--kubeconfig=" + d.kubeconfig,
		"--authentication-kubeconfig=" + d.kubeconfig,
		"--authorization-kubeconfig=" + d.kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", d.port),
		"--leader-elect=false",
		"--cert-dir=" + d.certDir,
		"--profiling=false", "--v=1",
	}
}
