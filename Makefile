# setup-ephemeral-buildkit — the README keeps two set-up commands: `make demo` and `make test`.
# Everything else here is what those two need, cached under CACHE_DIR so a second run is fast.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CACHE_DIR ?= $(HOME)/.cache/setup-ephemeral-buildkit
export CACHE_DIR
BIN_DIR := $(CACHE_DIR)/bin
export PATH := $(BIN_DIR):$(PATH)
# The state of the local cluster (certificates, etcd data, containerd root, logs). A fixed path so
# a run after a crashed run finds, and removes, what the crashed run left.
CLUSTER_DIR ?= /var/lib/setup-ephemeral-buildkit-cluster
export CLUSTER_DIR

GO ?= go

.PHONY: help
help:
	@echo "make demo   - local Kubernetes, builders per arch, a multi-arch docker buildx build, cleanup, timings"
	@echo "make test   - every test, unit and end-to-end, against a real local cluster"
	@echo "other targets: deps tools images release-images cluster-up cluster-down unit bench dist"

.PHONY: deps
deps: ## Debian packages the local cluster needs (containerd, runc, CNI plugins, qemu-user-static, ...)
	hack/install-deps.sh

.PHONY: tools
tools: deps ## Kubernetes, etcd, BuildKit, rootlesskit, buildx, docker CLI, act, static runc, helm, actionlint, local-path-provisioner: built from the Go module proxy, cached
	hack/build-tools.sh

.PHONY: images
images: tools ## BuildKit and pause archives for the cluster's containerd; base images and the product images (CLI, CI job) for its registry
	$(GO) run ./hack/cmd/mkimages -bin "$(BIN_DIR)" -out "$(CACHE_DIR)/images" -version "$(VERSION)" -commit "$(COMMIT)"

.PHONY: cluster-up
cluster-up: images ## start the local cluster and print its kubeconfig
	$(GO) run ./hack/cmd/localcluster up -bin "$(BIN_DIR)" -images "$(CACHE_DIR)/images" -state "$(CLUSTER_DIR)"

.PHONY: cluster-down
cluster-down: ## stop the local cluster and remove every trace of it
	$(GO) run ./hack/cmd/localcluster down -state "$(CLUSTER_DIR)"

.PHONY: unit
unit: tools ## unit tests only (no cluster; the chart's and the workflows' tests run helm, kubectl, actionlint)
	$(GO) test -short -race -shuffle=on ./...

.PHONY: test
test: images
	hack/test.sh

.PHONY: faults
faults: images ## the fault-injection suite alone (also part of make test): API server restarts, resets, kills, drains
	hack/with-cluster.sh $(GO) test -count=1 -v -timeout 20m -run '^TestIntegrationFault' ./cmd/setup-ephemeral-buildkit/

.PHONY: bench
bench: images ## provisioning benchmarks, and the table beside buildx's kubernetes driver (BENCH_ITERATIONS, BENCH_CONCURRENT)
	hack/with-cluster.sh $(GO) test -p 1 -timeout 40m -run '^$$' -bench Integration -benchtime 3x ./internal/k8sprov/ ./internal/app/

.PHONY: demo
demo: images
	hack/demo.sh

# The images a release publishes (the CLI image the janitor runs, the CI job image), for
# linux/amd64 and linux/arm64, named $(REGISTRY)/setup-ephemeral-buildkit[-job]:TAG for each of
# TAGS, into the OCI layout $(RELEASE_IMAGES). The release workflow (.github/workflows/release.yml)
# runs it. They build on the Debian base image, which needs root and debootstrap (make deps).
# PUSH=true pushes them, signing in with REGISTRY_USER and REGISTRY_PASSWORD.
REGISTRY ?= ghcr.io/org
TAGS ?= $(VERSION)
RELEASE_IMAGES ?= $(CACHE_DIR)/images/release
PUSH ?= false

.PHONY: release-images
release-images: tools
	$(GO) run ./hack/cmd/mkimages -bin "$(BIN_DIR)" -out "$(CACHE_DIR)/images" -version "$(VERSION)" -commit "$(COMMIT)" \
	  -registry "$(REGISTRY)" -tags "$(TAGS)" -product-out "$(RELEASE_IMAGES)" -push="$(PUSH)"

# The action's binaries, one per runner architecture, for dist/index.js to start. Reproducible:
# no cgo, no build paths, no VCS stamp; only the source, VERSION and COMMIT decide the bytes. They are
# build outputs (.gitignore); release commits carry them (README, "Releasing the action").
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
DIST_ARCHS ?= amd64 arm64
# What --version prints (internal/version): the release and its commit.
VERSION_LDFLAGS = -X github.com/org/setup-ephemeral-buildkit/internal/version.version=$(VERSION) \
	-X github.com/org/setup-ephemeral-buildkit/internal/version.commit=$(COMMIT)

.PHONY: dist
dist: ## dist/setup-ephemeral-buildkit-linux-{amd64,arm64}, version-stamped
	for arch in $(DIST_ARCHS); do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -buildvcs=false \
	    -ldflags "-s -w -buildid= $(VERSION_LDFLAGS)" \
	    -o dist/setup-ephemeral-buildkit-linux-$$arch ./cmd/setup-ephemeral-buildkit; \
	done
	@ls -l dist/setup-ephemeral-buildkit-linux-*
