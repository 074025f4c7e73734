package buildx

import (
	"errors"
	"fmt"
	"strings"
)

// StatusRunning is the status `docker buildx inspect` reports for a node that answers.
const StatusRunning = "running"

// Inspection is what `docker buildx inspect` reports about a builder.
type Inspection struct {
	Name   string
	Driver string
	// Error is the builder-level error, if buildx printed one (then it lists no nodes).
	Error string
	Nodes []NodeStatus
}

// NodeStatus is what `docker buildx inspect` reports about one node.
type NodeStatus struct {
	Name     string
	Endpoint string
	// Status is "running", "inactive", ...; empty when Error is set.
	Status string
	// Error is why buildx could not reach or load the node.
	Error          string
	BuildkitdFlags string
	// BuildKitVersion is the daemon's version, e.g. "v0.34.2".
	BuildKitVersion string
	// Platforms are all the platforms the node lists, configured ones first, without buildx's
	// '*' marker.
	Platforms []string
	// ConfiguredPlatforms are the platforms set with --platform (those buildx marks '*').
	ConfiguredPlatforms []string
}

// Node returns the node named name.
func (i Inspection) Node(name string) (NodeStatus, bool) {
	for _, n := range i.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeStatus{}, false
}

// ParseInspect reads the text `docker buildx inspect` prints: "Key: value" lines aligned with
// spaces, a "Nodes:" line, then one block per node starting with its "Name:". Indented lines
// (labels, GC policies, files) and keys it does not know are skipped, so that a newer buildx
// printing more does not break it.
func ParseInspect(out string) (Inspection, error) {
	var insp Inspection
	var node *NodeStatus
	inNodes := false
	lastKey := ""
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if strings.TrimSpace(line) == "" {
			lastKey = ""
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // a sub-entry of Labels, GC Policy, File, Features, Devices
		}
		key, value, ok := strings.Cut(line, ":")
		value = strings.TrimSpace(value)
		if !ok || !knownKeys[key] && !strings.HasPrefix(key, "GC Policy rule#") && !strings.HasPrefix(key, "File#") {
			// An error message spanning lines continues the Error value.
			if lastKey == "Error" {
				if node != nil {
					node.Error += "\n" + line
				} else {
					insp.Error += "\n" + line
				}
			}
			continue
		}
		lastKey = key
		if key == "Nodes" {
			inNodes = true
			continue
		}
		if !inNodes {
			switch key {
			case "Name":
				insp.Name = value
			case "Driver":
				insp.Driver = value
			case "Error":
				insp.Error = value
			}
			continue
		}
		if key == "Name" {
			insp.Nodes = append(insp.Nodes, NodeStatus{Name: value})
			node = &insp.Nodes[len(insp.Nodes)-1]
			continue
		}
		if node == nil {
			return Inspection{}, fmt.Errorf("%q before the first node's Name", line)
		}
		switch key {
		case "Endpoint":
			node.Endpoint = value
		case "Status":
			node.Status = value
		case "Error":
			node.Error = value
		case "BuildKit daemon flags":
			node.BuildkitdFlags = value
		case "BuildKit version":
			node.BuildKitVersion = value
		case "Platforms":
			for _, p := range strings.Split(value, ",") {
				p = strings.TrimSpace(p)
				if configured, ok := strings.CutSuffix(p, "*"); ok {
					node.ConfiguredPlatforms = append(node.ConfiguredPlatforms, configured)
					p = configured
				}
				if p != "" {
					node.Platforms = append(node.Platforms, p)
				}
			}
		}
	}
	if insp.Name == "" {
		return Inspection{}, errors.New("no builder Name in the output")
	}
	if !inNodes && insp.Error == "" {
		return Inspection{}, errors.New("neither Nodes nor Error in the output")
	}
	return insp, nil
}

// knownKeys are the "Key:" lines `docker buildx inspect` prints at the start of a line.
var knownKeys = map[string]bool{
	"Name": true, "Driver": true, "Last Activity": true, "Error": true, "Nodes": true,
	"Endpoint": true, "Driver Options": true, "Status": true, "BuildKit daemon flags": true,
	"BuildKit version": true, "Platforms": true, "Features": true, "Labels": true, "Devices": true,
}
