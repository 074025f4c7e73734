//go:build tools

// Package tools records the command built from this module: the docker CLI,
// github.com/docker/cli/cmd/docker. docker/cli has no go.mod (it versions by CalVer and keeps its
// dependencies in vendor.mod), so it cannot be built as a dependency of this module: go.mod and
// go.sum pin and verify its source, and hack/build-tools.sh builds it in a copy of that source
// against its own vendor.mod and vendor.sum.
package tools
