package gitlabexec

import "syscall"

// scriptProcAttr puts the script into a process group of its own, so that signals reach all of
// it and none of the hook, and kills it if the hook dies first (the runner's SIGKILL reaches
// only the hook's group).
func scriptProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
