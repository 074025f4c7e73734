// Command pause is the sandbox ("pause") container of the local test cluster's pods.
//
// It stands in for registry.k8s.io/pause, which cannot be pulled on a machine without internet:
// it holds the pod's namespaces open by simply staying alive, exits 0 on SIGINT or SIGTERM, and,
// because it is PID 1 of the pod's PID namespace when the pod shares one, reaps the zombie
// children that orphaned processes leave behind. It must be built with CGO_ENABLED=0: the
// image it goes into has no libc.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		// Not fatal (handy for trying it out), but worth saying: without being PID 1 it
		// reaps only its own children.
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}
	// Buffered so that a burst of signals while reaping is not lost: SIGCHLD is coalesced by
	// the kernel anyway, and reap collects every exited child on each wake-up.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "pause: %v received, exiting\n", sig)
			os.Exit(0)
		}
	}
}

// reap collects every child that has exited, without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			// 0: children remain but none has exited; ECHILD: no children at all.
			return
		}
	}
}
