// Command localcluster starts and stops the project's local single-node Kubernetes cluster:
// `localcluster up` (used by make cluster-up, make test and make demo) and `localcluster down`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: localcluster up|down [flags]")
	}
	flags := flag.NewFlagSet("localcluster "+args[0], flag.ContinueOnError)
	state := flags.String("state", "/var/lib/setup-ephemeral-buildkit-cluster", "state directory")
	bin := flags.String("bin", "", "directory with etcd and the Kubernetes binaries (up)")
	images := flags.String("images", "", "directory with the OCI image archives (up)")
	if err := flags.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "up":
		if *bin == "" || *images == "" {
			return fmt.Errorf("up needs -bin and -images")
		}
		fmt.Fprintf(stdout, "starting the local cluster in %s\n", *state)
		c, err := localcluster.Up(ctx, localcluster.Config{BinDir: *bin, ImagesDir: *images, StateDir: *state, Log: stdout})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "cluster ready: node %s, API server %s\nexport KUBECONFIG=%s\n", c.Info.NodeName, c.Info.Server, c.Info.Kubeconfig)
		return nil
	case "down":
		return localcluster.Down(*state, stdout)
	default:
		return fmt.Errorf("unknown command %q: want up or down", args[0])
	}
}
