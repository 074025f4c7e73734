package localcluster

import (
	"slices"
	"strings"
	"testing"
)

// The flags each one cost a failure to find on this kind of machine stay with their component.
func TestComponentsCarryTheFlagsTheMachineNeeds(t *testing.T) {
	s := newSession(Config{StateDir: "/state", BinDir: "/bin"}, nil)
	api := &apiServer{port: 6443, pki: s.pki, etcdURL: "http://127.0.0.1:2379", certDir: s.dir("apiserver")}
	cm := &controllerManager{loopbackDaemon: loopbackDaemon{port: 10257, kubeconfig: s.kubeconfig("controller-manager")}}
	kl := &kubelet{labels: map[string]string{"amd64": "a=1", "arm64": "b=2"}}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"kube-apiserver", api.args(), []string{"--allow-privileged=true", "--kubelet-preferred-address-types=InternalIP", "--etcd-servers=http://127.0.0.1:2379", "--secure-port=6443"}},
		{"kube-controller-manager", cm.args(), []string{"--leader-elect=false", "--kubeconfig=/state/controller-manager.kubeconfig", "--secure-port=10257"}},
		{"kubelet", kl.args(), []string{"--node-ip=" + nodeAddress, "--node-labels=a=1,b=2"}},
	} {
		for _, w := range tc.want {
			if !slices.Contains(tc.args, w) {
				t.Errorf("%s flags lack %s: %v", tc.name, w, tc.args)
			}
		}
	}
	controllers := ""
	for _, a := range cm.args() {
		if c, ok := strings.CutPrefix(a, "--controllers="); ok {
			controllers = c
		}
	}
	for _, c := range []string{"garbage-collector-controller", "node-lifecycle-controller", "serviceaccount-token-controller", "resourcequota-controller", "persistentvolume-binder-controller"} {
		if !slices.Contains(strings.Split(controllers, ","), c) {
			t.Errorf("controller-manager does not run %s: %q", c, controllers)
		}
	}
}

// Every process component is in the start-up list once, after the host set-up.
func TestStartOrderStartsEachProcessOnceAfterTheHost(t *testing.T) {
	var names []string
	for _, c := range startOrder() {
		names = append(names, c.Name())
	}
	bridge := slices.Index(names, "bridge")
	for _, name := range []string{registryName, etcdName, apiServerName, controllerManagerName, schedulerName, containerdName, kubeletName} {
		i := slices.Index(names, name)
		if i < 0 || slices.Index(names[i+1:], name) >= 0 || i < bridge {
			t.Errorf("%s at %d in %v, want once and after the bridge", name, i, names)
		}
	}
}

// The registry answers, with the base images pushed, before the node can pull anything.
func TestRegistryStartsBeforeTheNode(t *testing.T) {
	var names []string
	for _, c := range startOrder() {
		names = append(names, c.Name())
	}
	if r, c := slices.Index(names, registryName), slices.Index(names, containerdName); r < 0 || r > c {
		t.Errorf("registry at %d, containerd at %d in %v", r, c, names)
	}
}
