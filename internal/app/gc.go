package app

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// GCOptions say where the janitor looks and whether it only reports.
type GCOptions struct {
	// Namespace to clean; empty means POD_NAMESPACE, the service account's namespace or the
	// kubeconfig context's.
	Namespace string
	// Kubeconfig is the kubeconfig file; empty means in-cluster, KUBECONFIG or ~/.kube/config.
	Kubeconfig string
	// DryRun reports what would be deleted without deleting anything.
	DryRun bool
}

// CollectGarbage removes the builders of jobs that are over in one namespace: those past their
// deadline and those whose runner pod is gone. It does not ask a CI system whether a job has
// finished (no JobChecker yet), so a builder without an owner that has not expired is kept.
func CollectGarbage(ctx context.Context, opts GCOptions, deps Deps) (string, []k8sprov.GCDecision, error) {
	d := deps.withDefaults()
	kube, err := d.Kube(ctx, opts.Kubeconfig)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to Kubernetes: %w", err)
	}
	namespace, _, err := k8sprov.ResolveNamespace(k8sprov.OwnerLookup{
		Namespace:           opts.Namespace,
		Getenv:              d.Getenv,
		ReadFile:            d.ReadFile,
		KubeconfigNamespace: kube.Namespace,
	})
	if err != nil {
		return "", nil, err
	}
	prov := &k8sprov.Provisioner{Client: kube.Client, Now: d.Now}
	decisions, err := prov.CollectGarbage(ctx, namespace, nil, opts.DryRun)
	return namespace, decisions, err
}

// WriteGCReport writes the janitor's decisions as a table.
func WriteGCReport(w io.Writer, namespace string, decisions []k8sprov.GCDecision, dryRun bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "JOB KEY\tACTION\tREASON\tOBJECTS\n")
	for _, d := range decisions {
		action := "keep"
		if d.Delete {
			action = "delete"
			if dryRun {
				action = "would delete"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Key, action, d.Reason, strings.Join(d.Objects, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(decisions) == 0 {
		_, err := fmt.Fprintf(w, "no builders in namespace %s\n", namespace)
		return err
	}
	return nil
}
