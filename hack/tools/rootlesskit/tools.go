//go:build tools

// Package tools records the commands built from this module: rootlesskit for the rootless
// BuildKit image, at the version BuildKit's own Dockerfile pins (ROOTLESSKIT_VERSION).
package tools

import (
	_ "github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit"
)
