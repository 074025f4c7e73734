package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/pki"
)

// Bounds of the post phase: it must finish in seconds, whatever the cluster does.
const (
	postTimeout     = 30 * time.Second
	logTailTimeout  = 5 * time.Second
	buildxRmTimeout = 10 * time.Second
	teardownTimeout = 15 * time.Second
	// logTailLines is how many of each builder's last log lines the post step shows.
	logTailLines = 40
)

// Post is the cleanup phase: when the job failed (or debug is on) it shows each builder's last
// log lines, then removes the buildx builder, deletes the builder pods and their Secret through
// the provisioner, and deletes the job's certificate files and buildx configuration. Every
// problem is a warning: Post returns an error only for a context that is already done, and it
// never fails a job over cleanup. With cleanup: false it leaves everything in place.
func Post(ctx context.Context, p ci.System, deps Deps) error {
	d := deps.withDefaults()
	st, ok, err := loadState(p)
	if err != nil {
		p.Warningf("Reading the main step's state: %v", err)
	}
	if !ok {
		p.Infof("Nothing to clean up: no builders are recorded for this job (none were started, or an earlier cleanup removed them).")
		return nil
	}
	if st.Removed {
		p.Infof("Nothing to clean up: the main step failed and removed its builders itself.")
		return nil
	}
	if !st.Cleanup {
		p.Infof("cleanup is false: leaving builder %s (pods of job %s in namespace %s). They go with the runner pod "+
			"(owner reference), at their deadline (max-lifetime), or through the janitor (setup-ephemeral-buildkit gc).",
			st.Builder, st.Key, st.Namespace)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, postTimeout)
	defer cancel()

	kubeconfig := p.Input(InputKubeconfig)
	if kubeconfig == "" {
		kubeconfig = st.Kubeconfig
	}
	kube, kubeErr := d.Kube(ctx, kubeconfig)
	if kubeErr != nil {
		p.Warningf("Connecting to Kubernetes to remove the builders: %v", kubeErr)
	}
	var debug bool
	_ = parseBoolInput(p, InputDebug, false, &debug) // Main refused a malformed one already
	status := strings.TrimSpace(p.Input(InputJobStatus))
	failed := !st.Ready || (status != "" && status != "success")
	if kube != nil && (failed || debug || p.Debug()) {
		why := "debug is on"
		switch {
		case !st.Ready:
			why = "the main step did not finish"
		case failed:
			why = "the job's status is " + status
		}
		showLogs(ctx, p, kube, st, why)
	}

	end := p.Group("Removing builder " + st.Builder)
	defer end()
	if st.Secret.UID == "" {
		// The main step was stopped before it recorded the Secret (or before creating it); the
		// runners' Role cannot look for it.
		p.Infof("No TLS Secret recorded for this job; one the main step may have created goes with the runner pod " +
			"(owner reference), at its deadline, or through the janitor.")
	}
	problems := removeJob(ctx, p, d, st, kube)
	for _, problem := range problems {
		p.Warningf("Cleanup: %v", problem)
	}
	if len(problems) == 0 {
		p.Infof("Removed builder %s and everything it used.", st.Builder)
	}
	return nil
}

// showLogs prints each builder's last log lines, one group per builder that exists.
func showLogs(ctx context.Context, p ci.System, kube *KubeClient, st jobState, why string) {
	if kube == nil {
		return
	}
	prov := &k8sprov.Provisioner{Client: kube.Client}
	for _, log := range prov.BuilderLogs(ctx, st.Namespace, st.Key, st.Platforms, logTailLines) {
		end := p.Group(fmt.Sprintf("Last buildkitd log lines of %s (%s; %s)", log.Pod, log.Platform, why))
		p.Infof("%s", log.Lines)
		end()
	}
}

// removeJob removes everything of the job in st, in the reverse order of creation: the buildx
// builder, the pods and Secret, the local files. It tries every part whatever happened to the
// others and returns the problems. kube may be nil (no client): the cluster part is then a
// problem, and the owner reference, the deadline and the janitor are what remain.
func removeJob(ctx context.Context, p ci.System, d Deps, st jobState, kube *KubeClient) []error {
	var problems []error
	if st.Builder != "" && st.BuildxDir != "" {
		if _, err := os.Stat(st.BuildxDir); err == nil {
			rmCtx, cancel := context.WithTimeout(ctx, buildxRmTimeout)
			bx := &buildx.Client{Runner: d.Runner, Docker: d.Docker, BuildxConfigDir: st.BuildxDir, Logf: p.Infof}
			if err := bx.Remove(rmCtx, st.Builder); err != nil {
				problems = append(problems, err)
			}
			cancel()
		}
	}

	if kube == nil {
		problems = append(problems, fmt.Errorf("builder pods of job %s in namespace %s not deleted: no Kubernetes client", st.Key, st.Namespace))
	} else {
		prov := &k8sprov.Provisioner{Client: kube.Client, Now: d.Now}
		report, err := prov.Teardown(ctx, st.Namespace, st.Key, st.Owner, k8sprov.TeardownOptions{Timeout: teardownTimeout, Secrets: []k8sprov.ObjectRef{st.Secret}})
		if len(report.Deleted) > 0 {
			p.Infof("Deleted %s in namespace %s", strings.Join(report.Deleted, ", "), st.Namespace)
		}
		if len(report.Deleting) > 0 {
			p.Infof("Already being deleted (draining running builds): %s", strings.Join(report.Deleting, ", "))
		}
		for _, skipped := range report.Skipped {
			p.Warningf("Left %s", skipped)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("deleting the builders of job %s: %w", st.Key, err))
		}
	}

	problems = append(problems, removeLocalFiles(st)...)
	return problems
}

// removeLocalFiles deletes the client certificate files, the job's buildx configuration and
// their directory, all of which Main created under its own job directory. Paths that do not
// have the shape Main gives them are left alone.
func removeLocalFiles(st jobState) []error {
	if st.JobDir == "" {
		return nil
	}
	var problems []error
	owned := func(path, base string) bool {
		return path != "" && filepath.Dir(path) == st.JobDir && filepath.Base(path) == base
	}
	if owned(st.TLSDir, "tls") {
		// The whole directory: a write killed half-way leaves temporary files next to the keys.
		if err := pki.RemoveClientFiles(clientFiles(st.TLSDir)); err != nil {
			problems = append(problems, err)
		} else if err := os.RemoveAll(st.TLSDir); err != nil {
			problems = append(problems, fmt.Errorf("removing client certificates: %w", err))
		}
	}
	if owned(st.BuildxDir, "buildx") {
		if err := os.RemoveAll(st.BuildxDir); err != nil {
			problems = append(problems, fmt.Errorf("removing the job's buildx configuration: %w", err))
		}
	}
	if err := os.Remove(st.JobDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		problems = append(problems, fmt.Errorf("removing the job's directory: %w", err))
	}
	return problems
}
