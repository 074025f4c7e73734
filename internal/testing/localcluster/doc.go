// Package localcluster is test and demo tooling, not part of the product: it runs a real
// single-node Kubernetes cluster on this machine for the project's tests and demo: etcd,
// kube-apiserver (RBAC, Node authorizer, admission including ValidatingAdmissionPolicy),
// kube-controller-manager (garbage collector and friends), kube-scheduler, and a kubelet on containerd, runc and a CNI bridge, so pods really run and pod
// IPs are reachable from the host; and an OCI registry on the bridge (TLS, the base images pushed)
// to which the node resolves every image name.
//
// It is in the spirit of controller-runtime's envtest but starts every part, each a component
// that owns its flags (registry, etcd, apiServer, controllerManager, scheduler, containerd,
// kubelet) in a list of start-up phases with the host set-up steps (see component): each process in its
// own process group with its log in the state directory, health polled until ready, early exit
// detected, a partial start rolled back. Everything it changes on the host (bridge, iptables
// rules, ip_forward, kernel sysctls, binfmt_misc, hard-coded paths, cgroups, mounts) is recorded
// in the state directory as it happens, so Down can undo it even after a crashed Up, and Up
// begins by undoing whatever a crashed run left. Cluster.RestartAPIServer restarts the real API
// server process for fault-injection tests; ForTest and ForDisruptiveTest hand the running
// cluster to integration tests.
package localcluster
