#!/usr/bin/env bash
# with-cluster.sh CMD...: start the local cluster, run CMD with CLUSTER_DIR exported, and always
# stop the cluster again (printing the components' last log lines when CMD failed). make test
# and make bench use it, so one cluster serves a whole run; make demo takes the same lock.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CACHE_DIR:?set by the Makefile}" "${CLUSTER_DIR:?set by the Makefile}"

. hack/cluster-lock.sh
take_cluster_lock

go build -o "$CACHE_DIR/bin/localcluster" ./hack/cmd/localcluster
cluster="$CACHE_DIR/bin/localcluster"

stop_cluster() {
  status=$?
  if [[ $status -ne 0 && -d "$CLUSTER_DIR/logs" ]]; then
    for log in "$CLUSTER_DIR"/logs/*.log; do
      echo "==== last lines of $log"; tail -n 15 "$log"
    done
  fi
  "$cluster" down -state "$CLUSTER_DIR" 9>&- || status=1
  exit $status
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

# fd 9 (the lock) is closed for children: a daemon that outlived its run must not hold it.
"$cluster" up -bin "$CACHE_DIR/bin" -images "$CACHE_DIR/images" -state "$CLUSTER_DIR" 9>&-
export CLUSTER_DIR KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"
"$@" 9>&-
