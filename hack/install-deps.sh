#!/usr/bin/env bash
# install-deps.sh installs the Debian packages the local cluster and the tool builds need.
#
# Idempotent: when every package is already installed it does nothing, and it runs
# `apt-get update` only when something is missing (the package lists are slow to fetch and
# may be stale or absent on a fresh machine, where apt-get install would otherwise fail).
set -euo pipefail

packages=(
	containerd                  # the CRI runtime the kubelet talks to
	runc                        # containerd's OCI runtime on the host
	containernetworking-plugins # bridge + host-local IPAM for pod networking
	qemu-user-static            # arm64 RUN steps under emulation (binfmt_misc)
	busybox-static              # the shell and applets inside the BuildKit image
	uidmap                      # newuidmap/newgidmap inside the rootless BuildKit image
	libseccomp-dev              # libseccomp.a for the static seccomp-enabled runc
	iptables                    # FORWARD rule that keeps pod traffic on the machine
	pkg-config                  # libseccomp-golang finds libseccomp through it
	gcc                         # cgo for the static runc
	libc6-dev                   # rcrt1.o and libc.a for -static-pie linking
	file                        # build-tools.sh checks that runc is statically linked
	ca-certificates             # the Go toolchain talks TLS to the module proxy
	iproute2                    # ip link/addr for the bridge and teardown
	mount                       # mount/umount for netns and bind-mount cleanup
	util-linux                  # nsenter, findmnt
	procps                      # ps/pkill-free process inspection by PID
	tar                         # inspecting the OCI archives
	debootstrap                 # the Debian base image (hack/images/debian/rootfs.sh)
	shellcheck                  # actionlint checks the workflows' run: scripts with it
)

if [[ $(id -u) -ne 0 ]]; then
	echo "install-deps.sh: must run as root (apt-get install)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-deps.sh: apt-get not found; this script supports Debian/Ubuntu only" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	# dpkg-query exits non-zero for unknown packages; "install ok installed" is the only
	# status that means the package is fully installed (not half-configured or removed).
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	if [[ $status != "install ok installed" ]]; then
		missing+=("$p")
	fi
done

if ((${#missing[@]} == 0)); then
	echo "install-deps.sh: all ${#packages[@]} packages already installed"
	exit 0
fi

echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! apt-get update -qq >"$log" 2>&1; then
	cat "$log" >&2
	echo "install-deps.sh: apt-get update failed (see above)" >&2
	exit 1
fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
	cat "$log" >&2
	echo "install-deps.sh: apt-get install ${missing[*]} failed (see above)" >&2
	exit 1
fi
echo "install-deps.sh: installed ${missing[*]}"
