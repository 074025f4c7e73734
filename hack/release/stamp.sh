#!/usr/bin/env bash
# stamp.sh VERSION writes a release's version (vX.Y.Z) into what installs it, so that a release
# commit installs exactly that release's images whichever way it is installed:
#
#   deploy/chart/setup-ephemeral-buildkit/Chart.yaml   version X.Y.Z, appVersion vX.Y.Z (the
#                                                      janitor image's default tag)
#   deploy/janitor-cronjob.yaml                        the janitor's image .../setup-ephemeral-buildkit:vX.Y.Z
#   templates/*.yml                                    the CI job image .../setup-ephemeral-buildkit-job:vX.Y.Z,
#                                                      where the GitLab component names one
#
# The tree between releases names the moving major tag (v1) instead. The release workflow runs
# this before its release commit; deploy/'s chart test keeps the chart and deploy/ equal after
# it. ROOT (default: this repository) is the tree to stamp.
set -euo pipefail

die() {
	echo "stamp.sh: error: $*" >&2
	exit 1
}

[[ $# -eq 1 ]] || die "usage: stamp.sh vX.Y.Z"
version=$1
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "version '$version' is not vMAJOR.MINOR.PATCH"
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# stamp FILE EXPRESSION WHAT: applies the sed expression and fails when it changed nothing that
# should have been there.
stamp() {
	local file=$1 expr=$2 what=$3
	[[ -f $file ]] || die "$file missing"
	sed -E -i "$expr" "$file"
	grep -qE "$what" "$file" || die "$file: no $what after stamping; is the line still there?"
}

chart=$ROOT/deploy/chart/setup-ephemeral-buildkit/Chart.yaml
stamp "$chart" "s/^version: .*/version: ${version#v}/" "^version: ${version#v}\$"
stamp "$chart" "s/^appVersion: .*/appVersion: \"$version\"/" "^appVersion: \"$version\"\$"
stamp "$ROOT/deploy/janitor-cronjob.yaml" \
	"s#^( *image: [^ ]*/setup-ephemeral-buildkit):[^ ]+#\\1:$version#" \
	"^ *image: [^ ]*/setup-ephemeral-buildkit:$version\$"

# The GitLab component pins its CI job image where it names one.
shopt -s nullglob
for file in "$ROOT"/templates/*.yml; do
	sed -E -i "s#([^ \"']*/setup-ephemeral-buildkit-job):[A-Za-z0-9_.-]+#\\1:$version#g" "$file"
done
echo "stamp.sh: stamped $version into $chart, deploy/janitor-cronjob.yaml and templates/"
