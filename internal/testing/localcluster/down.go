package localcluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Down stops the cluster whose state is in stateDir and undoes every host change on record:
// processes (whole groups), container processes and shims, mounts, network namespaces, cgroups,
// firewall rules, the bridge, sysctls, binfmt_misc entries and hard-coded paths, then removes the
// state directory. It is safe to run twice and after a crash: each step tolerates what is
// already gone, and the errors of all steps are reported together.
func Down(stateDir string, logw io.Writer) error {
	log := logger{logw}
	rec, err := loadHostRecord(stateDir)
	if err != nil {
		return err
	}
	if rec.empty() {
		if _, err := os.Stat(stateDir); err == nil {
			if err := removeStateDir(stateDir); err != nil {
				return err
			}
		}
		return nil
	}
	log.printf("stopping the local cluster in %s", stateDir)
	var errs []error
	for _, step := range downSteps {
		errs = append(errs, step(rec, stateDir)...)
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the record so a later Down can finish the job.
		return fmt.Errorf("stopping the local cluster: %w", err)
	}
	if err := removeStateDir(stateDir); err != nil {
		return err
	}
	log.printf("local cluster stopped; nothing of it is left")
	return nil
}

// downSteps undo the host record, in this order: processes before what they hold (network
// namespaces, mounts, cgroups), the network after, kernel settings and paths last. Each step
// works from the record alone and returns every failure rather than stopping at the first.
var downSteps = []func(rec *hostRecord, stateDir string) []error{
	stopProcesses,
	removeNetns,
	unmountState,
	removeCgroups,
	removeFirewallRules,
	removeBridge,
	restoreSysctls,
	unregisterBinfmt,
	removeCreatedPaths,
}

// stopProcesses stops every recorded process group, latest first: the kubelet first, so it does
// not restart containers while they are being removed.
func stopProcesses(rec *hostRecord, _ string) []error {
	var errs []error
	procs := slices.Clone(rec.Processes)
	slices.Reverse(procs)
	for _, p := range procs {
		if p.Name == "containerd" {
			// Containers and their shims outlive containerd, so they go first.
			killContainers(rec)
		}
		if err := stopProcessGroup(p, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	killContainers(rec)
	return errs
}

// killContainers SIGKILLs the containers' processes and the recorded containerd's shims.
func killContainers(rec *hostRecord) {
	killCgroupProcesses()
	if rec.ContainerdAddress != "" {
		for _, pid := range pidsMatching("containerd-shim", rec.ContainerdAddress) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeNetns unmounts and removes the network namespaces the cluster's pods used.
func removeNetns(rec *hostRecord, _ string) []error {
	if !rec.RecordedNetns {
		return nil
	}
	var errs []error
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if slices.Contains(rec.NetnsBefore, e.Name()) || !strings.HasPrefix(e.Name(), "cni-") {
			continue
		}
		path := filepath.Join("/run/netns", e.Name())
		if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", path, err))
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
		}
	}
	return errs
}

// unmountState detaches every mount below the state directory (overlay snapshots, the kubelet's
// volumes).
func unmountState(_ *hostRecord, stateDir string) []error {
	var errs []error
	for _, point := range mountsUnder(stateDir) {
		if err := syscall.Unmount(point, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", point, err))
		}
	}
	return errs
}

// removeCgroups removes the kubepods cgroups. They can only be removed once empty, and processes
// may take a moment to be reaped, so it retries for five seconds.
func removeCgroups(_ *hostRecord, _ string) []error {
	for attempt := 0; attempt < 50; attempt++ {
		killCgroupProcesses()
		remaining := 0
		for _, dir := range cgroupDirs() {
			if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
				remaining++
			}
		}
		if remaining == 0 {
			return nil
		}
		if attempt == 49 {
			return []error{fmt.Errorf("%d kubepods cgroups could not be removed: %v", remaining, cgroupDirs())}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func removeFirewallRules(rec *hostRecord, _ string) []error {
	var errs []error
	for _, rule := range rec.FirewallRules {
		args := append([]string{"-w", "-t", rule.Table, "-D", rule.Chain}, rule.Spec...)
		if err := run(rule.Command, args...); err != nil && !strings.Contains(err.Error(), "does a matching rule exist") &&
			!strings.Contains(err.Error(), "Bad rule") {
			errs = append(errs, err)
		}
	}
	return errs
}

func removeBridge(rec *hostRecord, _ string) []error {
	if rec.Bridge == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", rec.Bridge)); err != nil {
		return nil
	}
	if err := run("ip", "link", "del", rec.Bridge); err != nil {
		return []error{err}
	}
	return nil
}

func restoreSysctls(rec *hostRecord, _ string) []error {
	var errs []error
	for name, value := range rec.Sysctls {
		if current, err := readSysctl(name); err == nil && current != value {
			if err := writeSysctl(name, value); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

func unregisterBinfmt(rec *hostRecord, _ string) []error {
	var errs []error
	for _, name := range rec.BinfmtRegistered {
		entry := filepath.Join("/proc/sys/fs/binfmt_misc", name)
		if _, err := os.Stat(entry); err == nil {
			if err := os.WriteFile(entry, []byte("-1"), 0o200); err != nil {
				errs = append(errs, fmt.Errorf("unregistering binfmt %s: %w", name, err))
			}
		}
	}
	if rec.BinfmtMounted {
		if err := syscall.Unmount("/proc/sys/fs/binfmt_misc", 0); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting binfmt_misc: %w", err))
		}
	}
	return errs
}

// removeCreatedPaths removes the hard-coded paths Up found missing, deepest first, so a parent
// that existed before keeps its pre-existing content.
func removeCreatedPaths(rec *hostRecord, _ string) []error {
	var errs []error
	created := slices.Clone(rec.CreatedPaths)
	slices.SortFunc(created, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range created {
		if len(mountsUnder(p)) > 0 {
			errs = append(errs, fmt.Errorf("not removing %s: something is still mounted below it", p))
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", p, err))
		}
	}
	return errs
}

func removeStateDir(stateDir string) error {
	if left := mountsUnder(stateDir); len(left) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %v", stateDir, left)
	}
	if err := os.RemoveAll(stateDir); err != nil {
		return fmt.Errorf("removing state directory: %w", err)
	}
	return nil
}
