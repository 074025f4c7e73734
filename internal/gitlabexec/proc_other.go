//go:build unix && !linux

package gitlabexec

import "syscall"

// scriptProcAttr puts the script into a process group of its own, so that signals reach all of
// it and none of the hook.
func scriptProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// groupAlive reports whether a process of group pgid still exists (zombies included).
func groupAlive(pgid int) bool { return syscall.Kill(-pgid, 0) == nil }
