#!/usr/bin/env bash
# rootfs.sh ARCH DIR: a minimal Debian root file system for ARCH (amd64, arm64) in DIR, made by
# debootstrap from Debian's own packages, for the local cluster's Debian base image
# (hack/cmd/mkimages). A foreign ARCH runs debootstrap's second stage under qemu-user-static
# through a binfmt_misc instance of its own (see in_private_binfmt).
#
# Environment: SUITE (e.g. bookworm), MIRROR (the Debian mirror the machine's apt uses), INCLUDE
# (comma-separated extra packages). All three are pinned by mkimages and part of its cache key.
#
# Reproducible where debootstrap allows: what records the time or the host of the build (logs,
# apt's caches and lists, ldconfig's aux cache, machine-id, hostname, resolv.conf) is removed or
# emptied, /dev is left empty (the runtime provides it), and mkimages packs the tree with fixed
# timestamps. Package versions are whatever the suite had on the day of the build; the image
# lists them in /var/lib/dpkg/status.
set -euo pipefail
arch=${1:?usage: rootfs.sh ARCH DIR}
target=${2:?usage: rootfs.sh ARCH DIR}
: "${SUITE:?}" "${MIRROR:?}" "${INCLUDE:=}"

die() { echo "rootfs.sh: error: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap not found; run hack/install-deps.sh"
rm -rf "$target"
mkdir -p "$(dirname "$target")"

host_arch=$(dpkg --print-architecture)
foreign=()
[[ $arch == "$host_arch" ]] || foreign=(--foreign)

# The first stage mounts nothing the host keeps: a private mount namespace makes sure of it even
# when debootstrap fails half-way.
in_private_mounts() { unshare --mount --propagation private -- "$@"; }

# in_private_binfmt CONF CMD... runs CMD in namespaces of its own: a user namespace that maps
# root to root (so file ownership works as on the host), mount, PID and network namespaces (the
# second stage mounts /proc and /sys in the target and needs no network), and a binfmt_misc
# instance of that user namespace (Linux 6.7 and later) in which CONF, a qemu-user-static entry,
# is registered. The host's binfmt_misc is never touched, so a local cluster starting or stopping
# meanwhile (it registers qemu for itself) and this build cannot disturb each other.
in_private_binfmt() {
	local conf=$1
	shift
	unshare --user --mount --propagation private --pid --net --fork --kill-child -- sleep infinity 2>/dev/null &
	local holder=$! child= i
	for ((i = 0; i < 100; i++)); do
		child=$(pgrep -P "$holder" -x sleep || true)
		[[ -n $child ]] && break
		sleep 0.05
	done
	[[ -n $child ]] || die "the namespace holder did not start"
	# Written from outside: root of the new user namespace is root of the host, for 65536 ids.
	echo "0 0 65536" >"/proc/$child/uid_map"
	echo "0 0 65536" >"/proc/$child/gid_map"
	local rc=0
	nsenter --target "$child" --user --mount --pid --net -- sh -c '
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc &&
		cat "$1" >/proc/sys/fs/binfmt_misc/register &&
		shift && exec "$@"' sh "$conf" "$@" || rc=$?
	# The holder is the PID namespace's init, which takes no SIGTERM from outside: SIGKILL ends it,
	# the namespaces and the waiting unshare.
	kill -KILL "$child" 2>/dev/null || true
	wait "$holder" 2>/dev/null || true
	return "$rc"
}

export SOURCE_DATE_EPOCH=0 DEBIAN_FRONTEND=noninteractive LC_ALL=C
in_private_mounts debootstrap --variant=minbase --arch="$arch" ${INCLUDE:+--include="$INCLUDE"} \
	"${foreign[@]}" "$SUITE" "$target" "$MIRROR"

if ((${#foreign[@]})); then
	[[ $arch == arm64 ]] || die "no qemu-user-static binfmt entry known for $arch"
	conf=/usr/lib/binfmt.d/qemu-aarch64.conf
	[[ -f $conf ]] || die "$conf missing; run hack/install-deps.sh (qemu-user-static)"
	# container=lxc: debootstrap's own switch for unprivileged containers, where mknod is refused;
	# it binds the few device nodes it needs instead (in the private mount namespace, and /dev is
	# emptied below anyway).
	container=lxc in_private_binfmt "$conf" chroot "$target" /debootstrap/debootstrap --second-stage
fi

# Slim, as Debian's own -slim container images: no documentation, manual pages or translations
# (the copyright files stay), and dpkg told not to install them later either.
cat >"$target/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
find "$target/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$target/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$target"/usr/share/man/* "$target"/usr/share/info/*
find "$target/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# What records when and where this was built.
rm -rf "$target"/var/cache/apt/* "$target"/var/lib/apt/lists/* "$target"/var/cache/ldconfig/aux-cache \
	"$target"/var/cache/debconf/*-old "$target"/var/lib/dpkg/*-old "$target"/debootstrap
find "$target/var/log" -type f -delete
find "$target/dev" -mindepth 1 -delete
rm -f "$target/etc/hostname" "$target/etc/resolv.conf"
: >"$target/etc/machine-id"
# Like Docker's debian images: the container's hostname and DNS come from the runtime.
echo "rootfs.sh: $SUITE/$arch in $target: $(du -sh "$target" | cut -f1), $(dpkg-query --admindir="$target/var/lib/dpkg" -W | wc -l) packages"
