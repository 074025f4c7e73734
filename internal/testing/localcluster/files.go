package localcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Network layout. The node's address lives on the pod bridge, not on a real interface, so every
// port the cluster opens is on loopback or on this private bridge.
const (
	bridgeName = "sebk0"
	// bridgeMAC is set on the bridge so that it keeps one address. A Linux bridge without one
	// takes the lowest address among its ports, so deleting a pod could change the gateway's
	// address under every other pod, whose stale ARP entry then drops its traffic to the node
	// (the API server, the registry) for 15 s or more: a job's cleanup failed that way while a
	// parallel test deleted its job pod. Locally administered; the bytes spell "sebk0".
	bridgeMAC     = "02:73:65:62:6b:30"
	podSubnet     = "10.213.0.0/24"
	nodeAddress   = "10.213.0.1"
	serviceSubnet = "10.214.0.0/24"
	serviceAPIIP  = "10.214.0.1"
	cniNetwork    = "setup-ephemeral-buildkit"
)

// ArchLabelPrefix prefixes the node labels that let tests map an architecture onto the node
// explicitly: the node runs amd64 natively and arm64 under qemu, and the product's default
// mapping (kubernetes.io/arch) would only find amd64.
const ArchLabelPrefix = "test.setup-ephemeral-buildkit.io/arch-"

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func kubeconfig(server, caFile, certFile, keyFile, user string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: %s@local
  context:
    cluster: local
    user: %s
    namespace: default
current-context: %s@local
`, server, caFile, user, certFile, keyFile, user, user, user)
}

func containerdConfig(stateDir, address, sandboxImage, cniConfDir string) string {
	r := strings.NewReplacer("$STATE", stateDir, "$ADDRESS", address, "$SANDBOX", sandboxImage, "$CNICONF", cniConfDir)
	return r.Replace(`version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$ADDRESS"

[ttrpc]
  address = "$ADDRESS.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX"
  # Root lacks CAP_SYS_RESOURCE here: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/runc"

  # certs.d/_default/hosts.toml sends every image name to the cluster's registry (registry.go).
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNICONF"
    max_conf_num = 1
`)
}

// cniConfig has no default route: pods reach the node and each other on the bridge and nothing
// else, and the FORWARD rule drops anything that would be routed off the machine regardless.
func cniConfig(stateDir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q, "gateway": %q}]]
      }
    }
  ]
}
`, cniNetwork, bridgeName, filepath.Join(stateDir, "cni", "ipam"), podSubnet, nodeAddress)
}

func kubeletConfig(stateDir string, pki pkiFiles, runtimeAddress string, healthzPort int) string {
	r := strings.NewReplacer("$STATE", stateDir, "$CA", pki.CA(), "$CERT", pki.Cert("kubelet-serving"),
		"$KEY", pki.Key("kubelet-serving"), "$RUNTIME", runtimeAddress, "$NODEIP", nodeAddress,
		"$HEALTHZ", fmt.Sprint(healthzPort))
	return r.Replace(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODEIP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $HEALTHZ
containerRuntimeEndpoint: unix://$RUNTIME
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $CA
authorization:
  mode: Webhook
tlsCertFile: $CERT
tlsPrivateKeyFile: $KEY
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# No DNS server for pods: no query leaves the machine.
resolvConf: ""
clusterDomain: cluster.local
podLogsDir: $STATE/logs/pods
# Images here cannot be pulled again, so image garbage collection stays off.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
makeIPTablesUtilChains: false
serializeImagePulls: false
maxPods: 110
nodeStatusUpdateFrequency: 4s
`)
}
