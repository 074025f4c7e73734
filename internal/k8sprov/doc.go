// Package k8sprov provisions the ephemeral BuildKit builders of one CI job in Kubernetes: one pod
// per requested platform, owned by the runner pod, secured by a per-job mutual-TLS authority, and
// removed when the job ends.
//
// Its files fall in two parts.
//
// The pure part computes and never calls the API server; it is golden- and fuzz-tested:
//   - options.go, parse.go, errors.go: the provisioner's inputs, parsed and validated once
//     (ParseOptions), with InputError naming input, value and what is accepted;
//   - identity.go: the job identity's validation and the job key that lets a retried step find its own
//     objects (KeyOf);
//   - plan.go: Plan, the validated options plus what was resolved from the cluster (NewPlan);
//   - labels.go: the labels and annotations every object carries, and the selectors on them;
//   - render.go, credentials.go, drain.go: the Secret, the pods, the job's certificates and the
//     pods' preStop drain hook, rendered from a Plan.
//
// The live part talks to the API server through an injected kubernetes.Interface:
//   - owner.go: finding the namespace and the runner pod that owns the builders;
//   - provision.go: Provisioner.Provision creates the objects; wait.go follows the pods until
//     each builder answers over mutual TLS (verify.go) or says why it will not;
//   - logs.go: the builders' last log lines, for failures and post steps;
//   - teardown.go, janitor.go: removal of one job's objects, and of expired or orphaned ones;
//   - apierrors.go, retry.go: API errors explained, transient ones retried.
//
// The package knows nothing about GitHub or GitLab: CI adapters fill a cijob.Identity and the Inputs.
package k8sprov
