package buildx

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// NodeOutput is one entry of the `nodes` output. The fields up to Platforms are those of
// docker/setup-buildx-action's `nodes` output that apply to remote nodes, with the same names;
// Pod and Node say where the builder runs in Kubernetes.
type NodeOutput struct {
	Name           string `json:"name"`
	Endpoint       string `json:"endpoint"`
	Status         string `json:"status,omitempty"`
	BuildkitdFlags string `json:"buildkitd-flags,omitempty"`
	// BuildKit is the daemon's version.
	BuildKit string `json:"buildkit,omitempty"`
	// Platforms lists, comma-separated, what the node can build, its configured platform first.
	Platforms string `json:"platforms,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Node      string `json:"node,omitempty"`
}

// NodesOutput describes b's nodes, in b's order, with what insp reports about them (status,
// version, platforms) where it has them.
func NodesOutput(b Builder, insp Inspection) []NodeOutput {
	b = b.withDefaults()
	out := make([]NodeOutput, 0, len(b.Nodes))
	for _, n := range b.Nodes {
		o := NodeOutput{
			Name:           n.Name,
			Endpoint:       n.Endpoint,
			BuildkitdFlags: n.BuildkitdFlags,
			Platforms:      n.Platform,
			Pod:            n.Pod,
			Node:           n.KubernetesNode,
		}
		if s, ok := insp.Node(n.Name); ok {
			o.Status = s.Status
			o.BuildKit = s.BuildKitVersion
			if s.BuildkitdFlags != "" {
				o.BuildkitdFlags = s.BuildkitdFlags
			}
			if len(s.Platforms) > 0 {
				o.Platforms = strings.Join(s.Platforms, ",")
			}
		}
		out = append(out, o)
	}
	return out
}

// NodesJSON renders NodesOutput as indented JSON, the way docker/setup-buildx-action prints its
// `nodes` output.
func NodesJSON(b Builder, insp Inspection) (string, error) {
	return marshal(NodesOutput(b, insp), "  ")
}

// EndpointsJSON renders the `endpoints` output: a JSON object from each platform to its node's
// endpoint, e.g. {"linux/amd64":"tcp://10.244.1.7:1234"}.
func EndpointsJSON(b Builder) (string, error) {
	endpoints := make(map[string]string, len(b.Nodes))
	for _, n := range b.Nodes {
		endpoints[n.Platform] = n.Endpoint
	}
	// One line: it is meant for fromJSON and jq, and there is little of it.
	return marshal(endpoints, "")
}

// marshal encodes v as JSON indented by indent (none if empty), without HTML escaping: '<', '>'
// and '&' stay as they are.
func marshal(v any, indent string) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encoding JSON: %w", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}
