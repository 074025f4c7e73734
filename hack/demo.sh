#!/usr/bin/env bash
# make demo: the main job on an embedded default. Today it brings the local cluster up, shows it
# working, and says what is still missing; see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CACHE_DIR:?set by the Makefile}" "${CLUSTER_DIR:?set by the Makefile}"

go build -o "$CACHE_DIR/bin/localcluster" ./hack/cmd/localcluster
"$CACHE_DIR/bin/localcluster" up -bin "$CACHE_DIR/bin" -images "$CACHE_DIR/images" -state "$CLUSTER_DIR"
export KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"
kubectl get nodes -o wide
cat <<MSG

The local cluster is up. Use it with:
  export KUBECONFIG=$KUBECONFIG
  kubectl get pods -A
Stop it and remove every trace with:
  make cluster-down

Not yet part of the demo: provisioning builders with the setup-ephemeral-buildkit binary, the
multi-arch docker buildx build and the timing table (issues 3 and 4).
MSG
