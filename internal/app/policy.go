package app

import (
	"fmt"

	"github.com/org/setup-ephemeral-buildkit/deploy"
	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
)

// runPolicy prints the admission policy and its binding: as shipped (deploy/admission-policy.yaml)
// without --template, else with the template's limits, for kubectl apply -f -.
func runPolicy(args []string, d Deps) error {
	fs := newFlagSet("policy", "Prints the ValidatingAdmissionPolicy and its binding that hold a cluster template's limits\n"+
		"server-side (setup-ephemeral-buildkit policy --template template.yaml | kubectl apply -f -).\n"+
		"Without --template: deploy/admission-policy.yaml as shipped.", d)
	path := fs.String("template", "", "cluster template file (the template.yaml key of its ConfigMap, or the ConfigMap manifest itself)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var tmpl *clustertemplate.Template
	if *path != "" {
		data, err := d.ReadFile(*path)
		if err != nil {
			return fmt.Errorf("reading the cluster template: %w", err)
		}
		if tmpl, err = clustertemplate.ParseFile(data, *path); err != nil {
			return err
		}
	}
	out, err := clustertemplate.Policy(deploy.AdmissionPolicy, tmpl)
	if err != nil {
		return err
	}
	_, err = d.Stdout.Write(out)
	return err
}
