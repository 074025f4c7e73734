package app

import (
	"fmt"
	"strings"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// summary renders the job summary: one table row per builder with where it runs and how long it
// took to become ready, counted from the pod's creation, then the buildctl command lines that
// reach the builders (buildctlCommands).
func summary(res *k8sprov.Result, builder string, owner *k8sprov.RunnerPod, total time.Duration, buildctl []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "### BuildKit builders\n\n")
	fmt.Fprintf(&b, "buildx builder `%s` (driver `remote`), namespace `%s`", cell(builder), cell(res.Plan.Namespace))
	if owner != nil {
		fmt.Fprintf(&b, ", owned by runner pod `%s`", cell(owner.Name))
	}
	fmt.Fprintf(&b, "; ready %s after the step started.\n\n", formatSeconds(total))
	b.WriteString("| Platform | Node | Endpoint | Pod | BuildKit | Time to ready |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, bl := range res.Builders {
		fmt.Fprintf(&b, "| %s | %s | `%s` | %s | %s | %s |\n",
			cell(bl.Platform.String()), cell(bl.Node), cell(bl.Endpoint), cell(bl.Pod), cell(bl.BuildkitVersion), readiness(bl))
	}
	if len(buildctl) > 0 {
		b.WriteString("\n`buildctl` reads `BUILDKIT_HOST` but not the TLS files; reach each builder with:\n\n```sh\n")
		for _, line := range buildctl {
			b.WriteString(line + "\n")
		}
		b.WriteString("```\n")
	}
	return b.String()
}

// readiness is the time from creating the pod to the builder answering over gRPC.
func readiness(b k8sprov.Builder) string {
	if b.Ready.IsZero() || b.Created.IsZero() {
		return "-"
	}
	return formatSeconds(b.Ready.Sub(b.Created))
}

// cell makes text safe inside a markdown table cell.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "`", "'").Replace(s)
}

// buildctlCommands returns, per node, the buildctl command line that reaches it. BuildKit's
// buildctl (v0.34) reads BUILDKIT_HOST from the environment but none of its TLS settings, so
// its TLS flags must be given; with only BUILDKIT_HOST it fails with "error reading server
// preface: EOF". Each line ends with "debug workers" as an example.
func buildctlCommands(b buildx.Builder) []string {
	var lines []string
	for _, n := range b.Nodes {
		args := []string{"buildctl", "--addr", ci.ShellQuote(n.Endpoint)}
		if n.ServerName != "" {
			args = append(args, "--tlsservername", ci.ShellQuote(n.ServerName))
		}
		if n.CACert != "" {
			args = append(args, "--tlscacert", ci.ShellQuote(n.CACert), "--tlscert", ci.ShellQuote(n.Cert), "--tlskey", ci.ShellQuote(n.Key))
		}
		lines = append(lines, strings.Join(append(args, "debug", "workers"), " "))
	}
	return lines
}
