package gitlabexec

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// scriptProcAttr puts the script into a process group of its own, so that signals reach all of
// it and none of the hook, and kills it if the hook dies first (the runner's SIGKILL reaches
// only the hook's group).
func scriptProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// groupAlive reports whether a process of group pgid is still running. A zombie does not count:
// it has exited, and only its parent (the runner pod's init, which may never reap) keeps it.
func groupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); err != nil {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, entry := range entries {
		if _, err := strconv.Atoi(entry.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + entry.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so read after
		// the last ')'.
		fields := bytes.Fields(stat[bytes.LastIndexByte(stat, ')')+1:])
		if len(fields) >= 3 && string(fields[0]) != "Z" && string(fields[2]) == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}
