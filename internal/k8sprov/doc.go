// Package k8sprov provisions the ephemeral BuildKit builders of one CI job in Kubernetes: one pod
// per requested platform, owned by the runner pod, secured by a per-job mutual-TLS authority, and
// removed when the job ends.
//
// This file set holds the pure part: the provisioner's inputs, parsed and validated in one place
// (ParseOptions), the job key that lets a retried step find its own objects (KeyOf),
// and the rendering of the Secret and pods (RenderSecret, RenderPod) from a Plan. Nothing here
// talks to the API server; the functions are golden-tested.
//
// The package knows nothing about GitHub or GitLab: CI adapters fill a cijob.Identity and the Inputs.
package k8sprov
