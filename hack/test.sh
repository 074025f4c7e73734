#!/usr/bin/env bash
# make test: start the local cluster, run every test (unit and end-to-end) against it, and always
# stop it again. One cluster serves the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CACHE_DIR:?set by the Makefile}" "${CLUSTER_DIR:?set by the Makefile}"

go build -o "$CACHE_DIR/bin/localcluster" ./hack/cmd/localcluster
cluster=("$CACHE_DIR/bin/localcluster")

stop_cluster() {
  status=$?
  if [[ $status -ne 0 && -d "$CLUSTER_DIR/logs" ]]; then
    for log in "$CLUSTER_DIR"/logs/*.log; do
      echo "==== last lines of $log"; tail -n 15 "$log"
    done
  fi
  "${cluster[@]}" down -state "$CLUSTER_DIR" || status=1
  exit $status
}
trap stop_cluster EXIT

"${cluster[@]}" up -bin "$CACHE_DIR/bin" -images "$CACHE_DIR/images" -state "$CLUSTER_DIR"
export CLUSTER_DIR
go vet ./...
go test -race -shuffle=on -count=1 -timeout 30m ./...
