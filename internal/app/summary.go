package app

import (
	"fmt"
	"strings"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// summary renders the job summary: one table row per builder with where it runs and how long it
// took to become ready, counted from the pod's creation.
func summary(res *k8sprov.Result, builder string, owner *k8sprov.RunnerPod, total time.Duration) string {
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
