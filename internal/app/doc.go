// Package app is the job flow of setup-ephemeral-buildkit, shared by the GitHub Action and the
// CLI: Main gives a CI job its builders, Post takes them away again, CollectGarbage removes what
// dead jobs left. Run dispatches between them from the command line and the environment.
//
// Data flows one way: the CI adapter's inputs and job identity (package ci) become the
// provisioner's options (package k8sprov), the provisioner's builders become a buildx remote
// builder with one node per platform (package buildx), and its endpoints go back out through the
// CI adapter as outputs, environment variables for later steps and a job summary.
//
// Everything the flow touches outside itself is injected through Deps: the environment, the
// clock, the Kubernetes client factory and the command runner that drives `docker buildx`, so
// tests run the whole flow against fakes or against the local cluster.
//
// # What later steps get
//
// Outputs: name, driver ("remote"), platforms (comma-separated, in node order), nodes (JSON, the
// fields of docker/setup-buildx-action's nodes output plus pod and node), endpoints (JSON object
// from platform to endpoint).
//
// Environment variables:
//
//	BUILDX_CONFIG            the job's own buildx configuration directory, holding the builder
//	BUILDX_BUILDER           the builder's name (only with use: true, the default)
//	BUILDKIT_HOST            the first platform's endpoint, for buildctl and BuildKit clients
//	BUILDKIT_TLS_DIR         directory with ca.pem, cert.pem and key.pem (buildctl --tlsdir)
//	BUILDKIT_TLS_CACERT      the job's CA certificate (buildctl --tlscacert)
//	BUILDKIT_TLS_CERT        the job's client certificate (buildctl --tlscert)
//	BUILDKIT_TLS_KEY         the job's client key, mode 0600 (buildctl --tlskey)
//	BUILDKIT_TLS_SERVERNAME  the name every builder's certificate carries (buildctl --tlsservername)
//
// buildctl reads BUILDKIT_HOST but none of the TLS variables (BuildKit v0.34's flags have no
// environment fallback), so it needs them as flags: `buildctl --tlsdir "$BUILDKIT_TLS_DIR"
// --tlsservername "$BUILDKIT_TLS_SERVERNAME" debug workers` talks to the first builder. Main
// prints the exact command line of each builder in the log and the job summary.
package app
