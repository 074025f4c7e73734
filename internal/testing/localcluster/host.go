package localcluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Paths kubelet, containerd and libcni use whatever their configuration says. Down removes the
// ones Up found missing.
var hardCodedPaths = []string{
	"/var/lib/kubelet",
	"/var/lib/kubelet/device-plugins",
	"/var/log/containers",
	"/var/log/pods",
	"/var/lib/cni",
	"/var/lib/cni/results",
	"/run/containerd",
	"/run/netns",
	"/etc/cni",
	"/opt/cni",
}

// kubeletSysctls are the kernel settings the kubelet changes at start-up; Up saves them and Down
// restores them.
var kubeletSysctls = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward",
}

func sysctlPath(name string) string { return filepath.Join("/proc/sys", name) }

func readSysctl(name string) (string, error) {
	data, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(data)), nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(sysctlPath(name), []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("restoring sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// saveSysctls records the current values of the sysctls the cluster changes.
func saveSysctls(rec *hostRecord) error {
	saved := map[string]string{}
	for _, name := range kubeletSysctls {
		v, err := readSysctl(name)
		if err != nil {
			continue // not every kernel has every key; nothing to restore then
		}
		saved[name] = v
	}
	return rec.update(func(r *hostRecord) { r.Sysctls = saved })
}

// recordMissingPaths notes which hard-coded paths do not exist yet.
func recordMissingPaths(rec *hostRecord) error {
	var missing []string
	for _, p := range hardCodedPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			missing = append(missing, p)
		}
	}
	return rec.update(func(r *hostRecord) { r.CreatedPaths = missing })
}

// recordNetns notes the network namespaces that exist before the cluster starts.
func recordNetns(rec *hostRecord) error {
	entries, _ := os.ReadDir("/run/netns")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return rec.update(func(r *hostRecord) { r.NetnsBefore = names; r.RecordedNetns = true })
}

// createBridge creates the pod bridge with the node's address and a fixed MAC address
// (bridgeMAC) on it before any pod exists, so the kubelet and API server can bind to it:
// nothing the cluster serves listens on the machine's real interfaces.
func createBridge(rec *hostRecord, name, cidr string) error {
	if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err == nil {
		return fmt.Errorf("bridge %s already exists and is not on this cluster's record; remove it (ip link del %s) or choose another name", name, name)
	}
	if err := run("ip", "link", "add", name, "type", "bridge"); err != nil {
		return err
	}
	if err := rec.update(func(r *hostRecord) { r.Bridge = name }); err != nil {
		return err
	}
	if err := run("ip", "link", "set", name, "address", bridgeMAC); err != nil {
		return err
	}
	if err := run("ip", "addr", "add", cidr, "dev", name); err != nil {
		return err
	}
	return run("ip", "link", "set", name, "up")
}

// isolateBridge inserts rules that drop anything forwarded from the pod bridge to another
// interface, so pod traffic can reach the host and other pods but never leaves the machine.
func isolateBridge(rec *hostRecord, bridge string) error {
	for _, command := range []string{"iptables", "ip6tables"} {
		rule := firewallRule{Command: command, Table: "filter", Chain: "FORWARD",
			Spec: []string{"-i", bridge, "!", "-o", bridge, "-m", "comment", "--comment", "setup-ephemeral-buildkit local cluster: pod traffic stays on this machine", "-j", "DROP"}}
		args := append([]string{"-w", "-t", rule.Table, "-I", rule.Chain, "1"}, rule.Spec...)
		if err := run(command, args...); err != nil {
			return err
		}
		if err := rec.update(func(r *hostRecord) { r.FirewallRules = append(r.FirewallRules, rule) }); err != nil {
			return err
		}
	}
	return nil
}

// registerBinfmt makes the kernel run arm64 binaries through qemu-user-static, which is how a
// BuildKit pod on this amd64 node reports and runs linux/arm64. No init system does it here.
func registerBinfmt(rec *hostRecord) error {
	const dir = "/proc/sys/fs/binfmt_misc"
	if _, err := os.Stat(filepath.Join(dir, "register")); err != nil {
		if err := syscall.Mount("binfmt_misc", dir, "binfmt_misc", 0, ""); err != nil {
			return fmt.Errorf("mounting binfmt_misc on %s: %w", dir, err)
		}
		if err := rec.update(func(r *hostRecord) { r.BinfmtMounted = true }); err != nil {
			return err
		}
	}
	const name = "qemu-aarch64"
	if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
		return nil // registered by someone else; leave it alone
	}
	conf, err := os.ReadFile("/usr/lib/binfmt.d/" + name + ".conf")
	if err != nil {
		return fmt.Errorf("reading the qemu-user-static binfmt entry (is qemu-user-static installed? run make deps): %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "register"), []byte(strings.TrimSpace(string(conf))), 0o200); err != nil {
		return fmt.Errorf("registering %s with binfmt_misc: %w", name, err)
	}
	return rec.update(func(r *hostRecord) { r.BinfmtRegistered = append(r.BinfmtRegistered, name) })
}

// mountsUnder lists mount points at or below any of the prefixes, deepest first.
func mountsUnder(prefixes ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var points []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountinfo(fields[4])
		for _, prefix := range prefixes {
			if point == prefix || strings.HasPrefix(point, strings.TrimSuffix(prefix, "/")+"/") {
				points = append(points, point)
				break
			}
		}
	}
	sort.Slice(points, func(i, j int) bool {
		di, dj := strings.Count(points[i], "/"), strings.Count(points[j], "/")
		if di != dj {
			return di > dj
		}
		return points[i] > points[j]
	})
	return points
}

func unescapeMountinfo(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// cgroupDirs lists every kubepods cgroup directory on the host, deepest first.
func cgroupDirs() []string {
	var dirs []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if _, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil {
		roots = append(roots, "/sys/fs/cgroup/kubepods")
	}
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	return dirs
}

// killCgroupProcesses SIGKILLs every process in the kubepods cgroups: the containers' processes.
func killCgroupProcesses() {
	for _, dir := range cgroupDirs() {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(data)) {
			var pid int
			if _, err := fmt.Sscan(field, &pid); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
