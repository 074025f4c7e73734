package localcluster

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
)

// containerd is the node's container runtime, with its socket, root and state in the state
// directory, the CNI bridge configured, and the image archives imported and pinned before the
// kubelet starts (nothing can be pulled here).
type containerd struct {
	address, config, cniConfDir string
}

func (c *containerd) Name() string { return containerdName }

func (c *containerd) Start(ctx context.Context, s *session) error {
	c.address = s.dir("containerd", "containerd.sock")
	c.config = s.dir("containerd", "config.toml")
	c.cniConfDir = s.dir("cni", "net.d")
	// On record before containerd starts: Down finds its shims by this address.
	if err := s.rec.update(func(r *hostRecord) { r.ContainerdAddress = c.address }); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(c.cniConfDir, "10-"+cniNetwork+".conflist"), cniConfig(s.cfg.StateDir)); err != nil {
		return err
	}
	images, err := imageArchives(s.cfg.ImagesDir)
	if err != nil {
		return err
	}
	sandboxImage, ok := images["pause"]
	if !ok {
		return fmt.Errorf("no pause.tar in %s (build the images with `make images`)", s.cfg.ImagesDir)
	}
	if err := writeFile(c.config, containerdConfig(s.cfg.StateDir, c.address, sandboxImage, c.cniConfDir)); err != nil {
		return err
	}
	binary, err := exec.LookPath(containerdName)
	if err != nil {
		return fmt.Errorf("containerd not found on PATH: %w", err)
	}
	p, err := s.startProcess(containerdName, binary, []string{"--config", c.config})
	if err != nil {
		return err
	}
	if err := p.waitHealthy(ctx, func(ctx context.Context) error {
		return exec.CommandContext(ctx, "ctr", "--address", c.address, "version").Run()
	}); err != nil {
		return err
	}
	if err := importImages(ctx, c.address, s.cfg.ImagesDir, images); err != nil {
		return err
	}
	s.containerdAddress = c.address
	s.info.Images = images
	return nil
}

// kubelet is the node: it registers as NodeName on the bridge address, labelled for the
// architectures it runs (amd64 natively, arm64 under qemu), and is ready once the node reports
// Ready without taints.
type kubelet struct {
	healthzPort                      int
	config, kubeconfig, rootDir, pki string
	labels                           map[string]string
}

func (k *kubelet) Name() string { return kubeletName }

func (k *kubelet) Start(ctx context.Context, s *session) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	k.healthzPort = ports[0]
	k.config, k.kubeconfig = s.dir("kubelet", "config.yaml"), s.kubeconfig("kubelet-client")
	k.rootDir, k.pki = s.dir("kubelet", "root"), s.dir("kubelet", "pki")
	k.labels = map[string]string{"amd64": ArchLabelPrefix + "amd64=native", "arm64": ArchLabelPrefix + "arm64=emulated"}
	if err := writeFile(k.config, kubeletConfig(s.cfg.StateDir, s.pki, s.containerdAddress, k.healthzPort)); err != nil {
		return err
	}
	p, err := s.startProcess(kubeletName, s.bin(kubeletName), k.args())
	if err != nil {
		return err
	}
	if err := p.waitHealthy(ctx, httpCheck(http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/healthz", k.healthzPort))); err != nil {
		return err
	}
	s.info.NodeName, s.info.NodeIP, s.info.ArchNodeLabels = NodeName, nodeAddress, k.labels
	client, err := s.adminClient()
	if err != nil {
		return err
	}
	return p.waitHealthy(ctx, func(ctx context.Context) error { return nodeReady(ctx, client) })
}

func (k *kubelet) args() []string {
	return []string{
		"--config=" + k.config,
		"--kubeconfig=" + k.kubeconfig,
		"--hostname-override=" + NodeName,
		"--node-ip=" + nodeAddress,
		"--root-dir=" + k.rootDir,
		"--cert-dir=" + k.pki,
		"--node-labels=" + k.labels["amd64"] + "," + k.labels["arm64"],
		"--v=1",
	}
}
