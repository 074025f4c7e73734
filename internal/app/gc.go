package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/org/setup-ephemeral-buildkit/internal/jobstatus"
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
	// CacheBudget is what the janitor keeps of the namespace's cache volumes.
	CacheBudget k8sprov.CacheBudget
	// Checker asks the CI system whether a job has finished; nil judges by deadline and owner
	// pod alone. The gc verb builds it from GITHUB_TOKEN and GITLAB_TOKEN (jobstatus.FromEnv).
	Checker k8sprov.JobChecker
}

// CollectGarbage removes the builders of jobs that are over in one namespace: those past their
// deadline, those whose runner pod is gone, and, with a Checker, those whose CI job has finished.
// Builders of a CI platform the checker cannot ask about are kept until their deadline; that is
// reported in their decision's reason, not as an error.
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
	decisions, err := prov.CollectGarbage(ctx, namespace, opts.Checker, opts.DryRun)
	return namespace, decisions, withoutUnsupported(err)
}

// withoutUnsupported drops, from the janitor's joined errors, those about jobs of a CI platform
// no checker is configured for: keeping such builders until their deadline is the design.
func withoutUnsupported(err error) error {
	var kept []error
	for _, e := range k8sprov.Flatten(err) {
		if !errors.Is(e, jobstatus.ErrUnsupportedPlatform) {
			kept = append(kept, e)
		}
	}
	return errors.Join(kept...)
}

// WriteGCReport writes the janitor's decisions as a table.
func WriteGCReport(w io.Writer, namespace string, decisions []k8sprov.GCDecision, dryRun bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "JOB KEY\tACTION\tREASON\tOBJECTS\n")
	for _, d := range decisions {
		action := "keep"
		if d.Deleting {
			action = "deleting"
		}
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

// CollectCacheVolumes applies opts.CacheBudget to the cache volumes of the namespace.
func CollectCacheVolumes(ctx context.Context, namespace string, opts GCOptions, deps Deps) ([]k8sprov.CacheDecision, error) {
	d := deps.withDefaults()
	kube, err := d.Kube(ctx, opts.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("connecting to Kubernetes: %w", err)
	}
	prov := &k8sprov.Provisioner{Client: kube.Client, Now: d.Now}
	return prov.CollectCacheVolumes(ctx, namespace, opts.CacheBudget, opts.DryRun)
}

// WriteCacheReport writes the janitor's decisions on cache volumes as a table.
func WriteCacheReport(w io.Writer, decisions []k8sprov.CacheDecision, dryRun bool) error {
	if len(decisions) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "CACHE VOLUME\tACTION\tREASON\n")
	for _, d := range decisions {
		action := "keep"
		if d.Delete {
			action = "delete"
			if dryRun {
				action = "would delete"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Volume, action, d.Reason)
	}
	return tw.Flush()
}
