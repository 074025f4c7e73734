package deploy

import _ "embed"

// AdmissionPolicy is admission-policy.yaml as shipped: what `setup-ephemeral-buildkit policy`
// prints without a cluster template, and the base it writes a template's limits into.
//
//go:embed admission-policy.yaml
var AdmissionPolicy []byte
