package app

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// applyTemplate reads the cluster template of the builders' namespace and returns the job's
// options under it. No template ConfigMap means the product's defaults. A template that cannot
// be read or parsed, or inputs past its limits, fail the job here, before anything is created.
// A Role without the right to read the default ConfigMap (one installed before templates
// existed) only warns: the admission policy still holds the cluster's limits. A template the job
// named explicitly must be read.
func applyTemplate(ctx context.Context, p ci.System, kube *KubeClient, namespace string, in mainInputs) (k8sprov.Options, error) {
	source := namespace + "/" + in.set.template
	tmpl, err := clustertemplate.Get(ctx, kube.Client, namespace, in.set.template)
	if apierrors.IsForbidden(err) && !in.set.explicitTemplate {
		p.Warningf("Cluster template: cannot read ConfigMap %s (forbidden), using the defaults; grant get on configmaps named %s (deploy/rbac.yaml)", source, in.set.template)
		return in.opts, nil
	}
	if err != nil {
		return k8sprov.Options{}, err
	}
	if tmpl == nil {
		if in.set.explicitTemplate {
			p.Infof("Cluster template: none (no ConfigMap %s); the defaults apply", source)
		}
		return in.opts, nil
	}
	opts, err := tmpl.Apply(in.raw, in.opts)
	if err != nil {
		return k8sprov.Options{}, fmt.Errorf("checking the inputs against cluster template %s:\n%w", source, err)
	}
	p.Infof("Cluster template: %s (mode %s, image %s; jobs may set %s)", source, tmpl.Mode, opts.Image, jobInputsText(tmpl))
	return opts, nil
}

func jobInputsText(t *clustertemplate.Template) string {
	if t.JobInputs == nil {
		return "every input within its limits"
	}
	if len(t.JobInputs) == 0 {
		return "none of its inputs"
	}
	return strings.Join(t.JobInputs, ", ")
}
