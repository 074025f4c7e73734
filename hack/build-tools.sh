#!/usr/bin/env bash
# build-tools.sh builds the binaries the local cluster, the demo and the tests run, from the
# pinned scratch modules under hack/tools/, into $CACHE_DIR/bin.
#
# Every tool has a stamp: the SHA-256 of its module's go.mod, go.sum and tools.go, of the Go
# toolchain version, and of the text of its build function below (so a changed flag, tag or
# version ldflag rebuilds it). A tool whose stamp matches and whose outputs exist is reused, so
# a second run with nothing changed builds nothing. Builds run one after another: the machine
# has 2 cores and the Go compiler already uses both.
#
# Environment: CACHE_DIR (default $HOME/.cache/setup-ephemeral-buildkit), GO (default go),
# TOOLS (space-separated subset to build, default all).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=$ROOT/hack/tools
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/setup-ephemeral-buildkit}
BIN_DIR=$CACHE_DIR/bin
STAMP_DIR=$CACHE_DIR/stamps
WORK_DIR=$CACHE_DIR/tmp
GO=${GO:-go}
ALL_TOOLS="runc etcd buildkit rootlesskit buildx act kubernetes registry helm actionlint dockercli local-path-provisioner"
TOOLS=${TOOLS:-$ALL_TOOLS}

# Versions stamped into the binaries. They must match the versions the scratch modules require;
# check_version below fails the build when they drift apart.
K8S_VERSION=v1.34.4
BUILDKIT_VERSION=v0.34.2
BUILDX_VERSION=v0.38.2
RUNC_VERSION=v1.5.2
REGISTRY_VERSION=v3.1.2

die() {
	echo "build-tools.sh: error: $*" >&2
	exit 1
}

mkdir -p "$BIN_DIR" "$STAMP_DIR" "$WORK_DIR" "$CACHE_DIR/docker/cli-plugins"

# Two concurrent runs (make -j, a second terminal) would race on the same outputs.
exec 9>"$CACHE_DIR/.build-tools.lock"
flock 9

command -v "$GO" >/dev/null 2>&1 || die "Go toolchain '$GO' not found in PATH"
if ! { GO_VERSION=$("$GO" env GOVERSION) && GOHOSTOS=$("$GO" env GOOS) && GOHOSTARCH=$("$GO" env GOARCH); }; then
	die "'$GO env' failed"
fi
# Keep whatever GOFLAGS the machine sets (e.g. -buildvcs=false) and make module resolution
# explicit: the scratch modules are tidied, so readonly resolution must succeed; a drift fails
# loudly instead of silently rewriting go.mod/go.sum in the work tree.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

# check_version MODULE_DIR MODULE VERSION fails when the scratch module requires another version
# than the one stamped into the binary.
check_version() {
	local dir=$1 mod=$2 want=$3 got
	got=$(cd "$dir" && "$GO" list -m -f '{{.Version}}' "$mod") ||
		die "listing $mod in $dir failed"
	[[ $got == "$want" ]] || die "$dir requires $mod $got but build-tools.sh stamps $want; update the *_VERSION variable"
}

# ---------------------------------------------------------------------------------------------
# Build functions. Each gets an empty output directory $1 and must leave there exactly the files
# listed by outputs_<tool>. Their text is part of the stamp.

outputs_kubernetes() { echo kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; }
build_kubernetes() {
	local out=$1 dir=$TOOLS_DIR/kubernetes
	check_version "$dir" k8s.io/kubernetes "$K8S_VERSION"
	local major=${K8S_VERSION#v}
	major=${major%%.*}
	local minor=${K8S_VERSION#v*.}
	minor=${minor%%.*}
	# Clients (kubectl version, client-go's discovery) parse these; the defaults are
	# "v0.0.0-master+$Format:%H$", which they reject. The commit and date are fixed so the
	# build is reproducible: this is not a build from Kubernetes' git tree.
	local ld="-s -w" pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $pkg.gitVersion=$K8S_VERSION"
		ld+=" -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ld+=" -X $pkg.gitTreeState=clean"
		ld+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000"
		ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ld" -o "$out/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kubectl)
}

outputs_etcd() { echo etcd; }
build_etcd() {
	local out=$1 dir=$TOOLS_DIR/etcd
	# go.etcd.io/etcd/server/v3 is etcd's main package; its version is a constant in the api module.
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$out/etcd" \
		go.etcd.io/etcd/server/v3)
}

outputs_buildkit() { echo buildkitd buildctl; }
build_buildkit() {
	local out=$1 dir=$TOOLS_DIR/buildkit
	check_version "$dir" github.com/moby/buildkit "$BUILDKIT_VERSION"
	local p=github.com/moby/buildkit/version
	# Static (CGO_ENABLED=0): these copies also go into the BuildKit image, which has no libc.
	# The tags are the ones BuildKit's own Dockerfile uses for its release binaries.
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -tags "osusergo netgo static_build" \
		-ldflags "-s -w -X $p.Version=$BUILDKIT_VERSION -X $p.Revision=$BUILDKIT_VERSION -X $p.Package=github.com/moby/buildkit" \
		-o "$out/" github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl)
}

outputs_rootlesskit() { echo rootlesskit; }
build_rootlesskit() {
	# The version lives here, not in the shared *_VERSION line of stamp_of, so bumping it
	# rebuilds rootlesskit alone. It is the one BuildKit's Dockerfile pins (ROOTLESSKIT_VERSION).
	local out=$1 dir=$TOOLS_DIR/rootlesskit version=v3.2.0
	check_version "$dir" github.com/rootless-containers/rootlesskit/v3 "$version"
	# Static, for the rootless BuildKit image (no libc); the version is a constant in the module.
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$out/rootlesskit" \
		github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit)
}

# docker-buildx for this machine, and one per architecture of the CI job image (hack/cmd/mkimages).
outputs_buildx() { echo docker-buildx docker-buildx-linux-amd64 docker-buildx-linux-arm64; }
build_buildx() {
	local out=$1 dir=$TOOLS_DIR/buildx arch
	check_version "$dir" github.com/docker/buildx "$BUILDX_VERSION"
	local p=github.com/docker/buildx/version
	for arch in amd64 arm64; do
		(cd "$dir" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath \
			-ldflags "-s -w -X $p.Version=$BUILDX_VERSION -X $p.Revision=$BUILDX_VERSION -X $p.Package=github.com/docker/buildx" \
			-o "$out/docker-buildx-linux-$arch" github.com/docker/buildx/cmd/buildx)
	done
	cp "$out/docker-buildx-linux-$GOHOSTARCH" "$out/docker-buildx"
}

# The docker CLI of the CI job image, per architecture. docker/cli has no go.mod (see
# hack/tools/dockercli/tools.go): the scratch module pins and verifies its source, which is built
# in a copy as its own module (vendor.mod and vendor.sum as go.mod and go.sum), with the version ldflags and tags
# of its scripts/build/.variables for a static binary.
outputs_dockercli() { echo docker-linux-amd64 docker-linux-arm64; }
build_dockercli() {
	local out=$1 dir=$TOOLS_DIR/dockercli version=v29.10.0 src arch
	check_version "$dir" github.com/docker/cli "$version+incompatible"
	src=$(cd "$dir" && "$GO" mod download -json github.com/docker/cli | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[[ -n $src && -f $src/vendor.mod ]] || die "go mod download github.com/docker/cli in $dir gave no source with vendor.mod"
	cp -r "$src" "$out/src"
	chmod -R u+w "$out/src"
	# As docker/cli's own scripts/with-go-mod.sh does: its vendor.mod is the go.mod.
	cp "$out/src/vendor.mod" "$out/src/go.mod"
	cp "$out/src/vendor.sum" "$out/src/go.sum"
	# The one change: the Go module proxy refuses github.com/moby/swarmkit/v2 v2.1.3 ("403: This
	# module version is not available"), so the previous patch release, v2.1.2, stands in (its
	# sum checked against the checksum database as go adds it). Only `docker swarm`/`service`
	# commands use it; the job image runs `docker buildx`.
	(cd "$out/src" && GOWORK=off "$GO" mod edit -replace github.com/moby/swarmkit/v2=github.com/moby/swarmkit/v2@v2.1.2 &&
		GOWORK=off GOFLAGS=-mod=mod "$GO" mod download github.com/moby/swarmkit/v2@v2.1.2 &&
		GOWORK=off GOFLAGS=-mod=mod "$GO" list ./cmd/docker >/dev/null)
	local p=github.com/docker/cli/cli/version
	for arch in amd64 arm64; do
		(cd "$out/src" && GOWORK=off CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath \
			-tags "grpcnotrace osusergo netgo" -ldflags "-s -w -X $p.Version=${version#v} -X $p.GitCommit=$version" \
			-o "$out/docker-linux-$arch" ./cmd/docker)
	done
	rm -rf "$out/src"
}

outputs_registry() { echo registry; }
build_registry() {
	local out=$1 dir=$TOOLS_DIR/registry
	check_version "$dir" github.com/distribution/distribution/v3 "$REGISTRY_VERSION"
	local p=github.com/distribution/distribution/v3/version
	# The local cluster's OCI registry (a host process, see internal/testing/localcluster).
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath \
		-ldflags "-s -w -X $p.version=$REGISTRY_VERSION -X $p.revision=$REGISTRY_VERSION -X $p.mainpkg=github.com/distribution/distribution/v3" \
		-o "$out/registry" github.com/distribution/distribution/v3/cmd/registry)
}

outputs_local-path-provisioner() { echo local-path-provisioner; }
build_local-path-provisioner() {
	local out=$1 dir=$TOOLS_DIR/local-path-provisioner version=v0.0.30
	check_version "$dir" github.com/rancher/local-path-provisioner "$version"
	# The local cluster's dynamic volume provisioner (the one kind ships as its default), run as
	# a host process (see internal/testing/localcluster/storage.go). Its version is a main
	# variable, as its own build scripts set it.
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.VERSION=$version" \
		-o "$out/local-path-provisioner" github.com/rancher/local-path-provisioner)
}

outputs_act() { echo act; }
build_act() {
	local out=$1 dir=$TOOLS_DIR/act
	# act embeds its VERSION file, so no version ldflags are needed.
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$out/act" github.com/nektos/act)
}

outputs_helm() { echo helm; }
build_helm() {
	# The version lives here, not in the shared *_VERSION line of stamp_of, so bumping it
	# rebuilds helm alone.
	local out=$1 dir=$TOOLS_DIR/helm version=v4.3.2
	check_version "$dir" helm.sh/helm/v4 "$version"
	local p=helm.sh/helm/v4/internal/version
	# The chart tests (deploy/chart) install with it; the ldflags are the ones helm's Makefile
	# sets for a tagged release, so `helm version` names the release, not "v4.3+unreleased".
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath \
		-ldflags "-s -w -X $p.version=$version -X $p.metadata= -X $p.gitTreeState=clean" \
		-o "$out/helm" helm.sh/helm/v4/cmd/helm)
}

outputs_actionlint() { echo actionlint; }
build_actionlint() {
	local out=$1 dir=$TOOLS_DIR/actionlint
	# Lints every workflow in the tree (hack/test-workflows.sh); it reads its version from the
	# build info, so no ldflags are needed.
	(cd "$dir" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$out/actionlint" \
		github.com/rhysd/actionlint/cmd/actionlint)
}

outputs_runc() { echo runc-static; }
build_runc() {
	local out=$1 dir=$TOOLS_DIR/runc
	check_version "$dir" github.com/opencontainers/runc "$RUNC_VERSION"
	# runc inside the BuildKit image must be static (the image has no libc) AND built with
	# seccomp, or every RUN step fails with "seccomp: config provided but seccomp not supported".
	# So: cgo on, the seccomp tag, and static-pie linking against Debian's libseccomp.a (from
	# libseccomp-dev). netgo/osusergo keep glibc's NSS (which cannot be linked statically) out,
	# as runc's own `make static` does. The libpathrs tag (a Rust library) is left out.
	[[ -f /usr/lib/$(gcc -print-multiarch)/libseccomp.a ]] ||
		die "libseccomp.a not found; run hack/install-deps.sh (libseccomp-dev)"
	(cd "$dir" && CGO_ENABLED=1 "$GO" build -trimpath -buildmode=pie \
		-tags "seccomp urfave_cli_no_docs netgo osusergo" \
		-ldflags "-X main.gitCommit=$RUNC_VERSION -linkmode external -extldflags -static-pie" \
		-o "$out/runc-static" github.com/opencontainers/runc)
	# Fail here, not in a pod much later, when the result is not what the image needs.
	local info
	info=$(file -L "$out/runc-static")
	[[ $info == *"static-pie linked"* || $info == *"statically linked"* ]] ||
		die "runc-static is not statically linked: $info"
	"$out/runc-static" --version | grep -q '^libseccomp: ' ||
		die "runc-static was built without seccomp: $("$out/runc-static" --version)"
}

# install_<tool> moves the built files from the output directory into the cache.
install_default() {
	local tool=$1 out=$2 f
	for f in $("outputs_$tool"); do
		mv -f "$out/$f" "$BIN_DIR/$f"
	done
}
install_buildx() {
	local out=$1
	# docker finds CLI plugins under $DOCKER_CONFIG/cli-plugins; the demo points DOCKER_CONFIG at
	# $CACHE_DIR/docker. The bin/ link makes it runnable on its own as well.
	mv -f "$out/docker-buildx" "$CACHE_DIR/docker/cli-plugins/docker-buildx"
	ln -sfn ../docker/cli-plugins/docker-buildx "$BIN_DIR/docker-buildx"
	mv -f "$out/docker-buildx-linux-amd64" "$out/docker-buildx-linux-arm64" "$BIN_DIR/"
}

# ---------------------------------------------------------------------------------------------

stamp_of() {
	local tool=$1 dir=$TOOLS_DIR/$1 f
	{
		echo "go $GO_VERSION $GOHOSTOS/$GOHOSTARCH"
		for f in go.mod go.sum tools.go; do
			[[ -f $dir/$f ]] || die "$dir/$f missing"
			echo "== $f"
			cat "$dir/$f"
		done
		echo "== versions $K8S_VERSION $BUILDKIT_VERSION $BUILDX_VERSION $RUNC_VERSION"
		declare -f "outputs_$tool" "build_$tool" check_version
		if declare -F "install_$tool" >/dev/null; then declare -f "install_$tool"; fi
		# The static runc links libseccomp.a: a Debian security update must rebuild it.
		if [[ $tool == runc ]]; then dpkg-query -W -f='${Version}' libseccomp-dev 2>/dev/null || true; fi
	} | sha256sum | cut -d' ' -f1
}

outputs_present() {
	local tool=$1 f
	if [[ $tool == buildx ]]; then
		[[ -x $CACHE_DIR/docker/cli-plugins/docker-buildx && -e $BIN_DIR/docker-buildx &&
			-x $BIN_DIR/docker-buildx-linux-amd64 && -x $BIN_DIR/docker-buildx-linux-arm64 ]]
		return
	fi
	for f in $("outputs_$tool"); do
		[[ -x $BIN_DIR/$f ]] || return 1
	done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

current=
out=
on_exit() {
	local rc=$?
	if [[ -n $current ]]; then
		echo "build-tools.sh: error: $current: build failed (exit $rc) after $(elapsed "$start")s; see the output above" >&2
	fi
	[[ -z $out ]] || rm -rf "$out"
}
trap on_exit EXIT

built=0
reused=0
total_start=$(now)
for tool in $TOOLS; do
	[[ " $ALL_TOOLS " == *" $tool "* ]] || die "unknown tool '$tool' (known: $ALL_TOOLS)"
	stamp=$(stamp_of "$tool")
	stamp_file=$STAMP_DIR/$tool.sha256
	if [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]] && outputs_present "$tool"; then
		echo "build-tools.sh: $tool: reused cache (stamp ${stamp:0:12})"
		reused=$((reused + 1))
		continue
	fi
	echo "build-tools.sh: $tool: building ($("outputs_$tool"))..."
	start=$(now)
	out=$(mktemp -d "$WORK_DIR/$tool.XXXXXX")
	# The stamp goes first and comes back only after a complete install, so an interrupted or
	# failed build is retried by the next run. The build function is called plainly (not in an
	# `if`), so that errexit stays on inside it; on_exit reports which tool failed.
	rm -f "$stamp_file"
	current=$tool
	"build_$tool" "$out"
	if declare -F "install_$tool" >/dev/null; then
		"install_$tool" "$out"
	else
		install_default "$tool" "$out"
	fi
	rm -rf "$out"
	current=
	echo "$stamp" >"$stamp_file"
	echo "build-tools.sh: $tool: built in $(elapsed "$start")s"
	built=$((built + 1))
done

if ((built == 0)); then
	echo "build-tools.sh: nothing to build, reused the cache for all $reused tools in $BIN_DIR ($(elapsed "$total_start")s)"
else
	echo "build-tools.sh: built $built, reused $reused, in $(elapsed "$total_start")s; binaries in $BIN_DIR"
fi
