package app

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// cpuSample is CPU time (user + system, seconds) by where it was spent, for the bench's split of
// one job's set-up: this process (our binary runs in it), its exited children (the docker CLI
// and buildx), buildkitd processes, and the control plane and node daemons.
type cpuSample map[string]float64

// cpuGroups maps a process's comm (as /proc shows it, at most 15 bytes) to its group: buildkitd,
// and each control-plane and node daemon on its own (the local cluster runs them as host
// processes), containerd with its shims and runc.
var cpuGroups = map[string]string{
	"buildkitd":      "buildkitd start",
	"kube-apiserver": "kube-apiserver", "etcd": "etcd", "kube-controller": "kube-controller-manager",
	"kube-scheduler": "kube-scheduler", "kubelet": "kubelet", "containerd": "containerd (+ shims, runc)",
	"containerd-shim": "containerd (+ shims, runc)", "runc": "containerd (+ shims, runc)",
}

// cpuRows are the set-up CPU rows in the table's order, with what each holds.
var cpuRows = []struct{ group, note string }{
	{"our binary (in-process)", "the bench process, where up runs (the driver has none)"},
	{"docker CLI + buildx", "exited child processes: buildx create/inspect, the driver's client"},
	{"buildkitd start", "live buildkitd processes at ready"},
	{"kube-apiserver", "control plane"},
	{"etcd", "control plane"},
	{"kube-scheduler", "control plane"},
	{"kube-controller-manager", "control plane"},
	{"kubelet", "node"},
	{"containerd (+ shims, runc)", "node"},
}

// controlPlane are the cpuRows groups summed into the control plane row.
var controlPlane = []string{"kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kubelet", "containerd (+ shims, runc)"}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// sampleCPU reads the CPU time of this process, of its waited-for children, and of the live
// processes in cpuGroups (from /proc/PID/stat fields utime and stime).
func sampleCPU() cpuSample {
	s := cpuSample{}
	var self, children syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &self) == nil {
		s["our binary (in-process)"] = tv(self.Utime) + tv(self.Stime)
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children) == nil {
		s["docker CLI + buildx"] = tv(children.Utime) + tv(children.Stime)
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		text := string(data)
		open, end := strings.IndexByte(text, '('), strings.LastIndexByte(text, ')')
		if open < 0 || end < open {
			continue
		}
		group, ok := cpuGroups[text[open+1:end]]
		if !ok {
			continue
		}
		fields := strings.Fields(text[end+1:])
		// After comm: state is field 3 of stat, utime 14 and stime 15, so 11 and 12 here.
		if len(fields) < 13 {
			continue
		}
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		s[group] += (utime + stime) / clockTicks
	}
	return s
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// since is s minus an earlier sample; a group's processes that ended in between make it
// smaller, so negative differences are clamped to zero.
func (s cpuSample) since(earlier cpuSample) cpuSample {
	d := cpuSample{}
	for k, v := range s {
		d[k] = max(0, v-earlier[k])
	}
	return d
}
