#!/usr/bin/env bash
# make demo: the product's main job on the local cluster. It starts the cluster, creates a runner
# pod with the ServiceAccount and Role users bind (deploy/rbac.yaml), runs
# examples/workflows/multi-arch-oci.yml under act in host mode as if inside that pod (the real
# action.yml, dist/index.js shim and binary), which gives the job a BuildKit pod per architecture
# and builds examples/app for linux/amd64 and linux/arm64 into OCI archives; it shows the
# builders while they run, checks that everything is gone afterwards. Then it runs
# examples/workflows/voting-bake.yml the same way: the voting app's three services (FROM golang,
# FROM debian, the cluster's base images) baked for both platforms on the job's builders, which
# trust the cluster's registry through the buildkitd-config input, and pushed there; it shows the
# pushed manifests. It stops the cluster and prints a timing table, with every service's build
# time per platform. The cluster is always stopped, whatever happens.
#
# DEMO_REUSE_CLUSTER=1 runs the demo against an already running cluster (make cluster-up) and
# leaves it running, deleting only the demo's namespace: for working on the demo itself.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CACHE_DIR:?set by the Makefile}" "${CLUSTER_DIR:?set by the Makefile}"
ROOT=$(pwd)
export PATH="$CACHE_DIR/bin:$PATH"
NS=demo
MANAGED=app.kubernetes.io/managed-by=setup-ephemeral-buildkit
WORK=$(mktemp -d "${TMPDIR:-/tmp}/seb-demo.XXXXXX")
ACT_PID=
REUSE=${DEMO_REUSE_CLUSTER:-}

now() { date +%s%N; }
# seconds FROM TO prints the time between two `now`s in seconds, one decimal.
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
# go_seconds DURATION prints a Go duration as act logs it (4.42s, 460.19ms) in seconds.
go_seconds() {
	awk -v d="$1" 'BEGIN {
		if (d ~ /ms$/) { sub(/ms$/, "", d); printf "%.1f", d / 1000 }
		else if (d ~ /(µs|us)$/) { printf "0.0" }
		else if (d ~ /m[0-9.]+s$/) { split(d, p, "m"); sub(/s$/, "", p[2]); printf "%.1f", p[1] * 60 + p[2] }
		else { sub(/s$/, "", d); printf "%.1f", d }
	}'
}
# history_seconds DURATION prints a duration as `buildx history ls` shows it (12.3s, 1m 5s) in
# seconds.
history_seconds() {
	awk -v d="$1" 'BEGIN { if (d ~ /m/) { split(d, p, "m"); sub(/s$/, "", p[2]); printf "%.1f", p[1] * 60 + p[2] } else { sub(/s$/, "", d); printf "%.1f", d } }'
}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# info KEY prints a string value of $CLUSTER_DIR/cluster.json (one key per line there).
info() { sed -n "s/^ *\"$1\": *\"\([^\"]*\)\".*/\1/p" "$CLUSTER_DIR/cluster.json" | head -n 1; }

cluster=("$CACHE_DIR/bin/localcluster")
cluster_up=false

finish() {
	local status=$?
	if [[ -n $ACT_PID ]] && kill -0 "$ACT_PID" 2>/dev/null; then
		kill -TERM -- "-$ACT_PID" 2>/dev/null || true
		wait "$ACT_PID" 2>/dev/null || true
	fi
	if [[ $status -ne 0 && -n ${CURRENT_LOG:-} && -f $CURRENT_LOG ]]; then
		echo "==== the workflow's log"; cat "$CURRENT_LOG"
	fi
	if [[ -n $REUSE ]]; then
		kubectl --kubeconfig="$CLUSTER_DIR/admin.kubeconfig" delete namespace "$NS" --ignore-not-found --wait=false >/dev/null || status=1
	elif $cluster_up; then
		"${cluster[@]}" down -state "$CLUSTER_DIR" 9>&- || status=1
	fi
	rm -rf "$WORK"
	exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM # through finish: the cluster goes down on Ctrl-C too

step "Starting the local cluster"
t_start=$(now)
if [[ -z $REUSE ]]; then
	. hack/cluster-lock.sh
	take_cluster_lock
	# Built under the lock: another worktree's run builds its own into the same path under it.
	go build -o "$CACHE_DIR/bin/localcluster" ./hack/cmd/localcluster
	cluster_up=true
	"${cluster[@]}" up -bin "$CACHE_DIR/bin" -images "$CACHE_DIR/images" -state "$CLUSTER_DIR" 9>&-
fi
t_cluster=$(now)
export KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"
kubectl get nodes -o wide

step "Building the action (make dist for this machine's architecture) and the example app"
ARCH=$(go env GOARCH)
make --no-print-directory dist DIST_ARCHS="$ARCH"
mkdir -p "$WORK/action/dist" "$WORK/repo/bin" "$WORK/oci" "$WORK/act" "$WORK/home/docker"
cp action.yml "$WORK/action/"
cp dist/index.js "dist/setup-ephemeral-buildkit-linux-$ARCH" "$WORK/action/dist/"
cp examples/app/Dockerfile "$WORK/repo/"
for arch in amd64 arm64; do
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -o "$WORK/repo/bin/hello-$arch" ./examples/app
done
if command -v git >/dev/null; then # act works without, but then the job has no commit
	git -C "$WORK/repo" init -q -b main
	git -C "$WORK/repo" add -A
	git -C "$WORK/repo" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "example app"
fi
go build -o "$WORK/ociinfo" ./hack/e2e/ociinfo
go build -o "$WORK/registryinfo" ./hack/e2e/registryinfo
mkdir -p "$WORK/repo/examples"
cp -r examples/voting "$WORK/repo/examples/"
ln -s "$CACHE_DIR/docker/cli-plugins" "$WORK/home/docker/cli-plugins"

step "Creating the runner pod, its ServiceAccount and the Role from deploy/rbac.yaml in namespace $NS"
kubectl create namespace "$NS"
until kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
kubectl -n "$NS" create serviceaccount runner
kubectl -n "$NS" apply -f deploy/rbac.yaml
kubectl -n "$NS" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: runner
  labels: {app: demo-runner}
spec:
  serviceAccountName: runner
  containers:
    - name: runner
      image: $(info pause)
      imagePullPolicy: Never
EOF
kubectl -n "$NS" wait --for=condition=Ready pod/runner --timeout=60s
# The job talks to the API server as the runner pod's ServiceAccount, with the Role's rights only.
RUNNER_KUBECONFIG=$WORK/runner.kubeconfig
kubectl config --kubeconfig="$RUNNER_KUBECONFIG" set-cluster local \
	--server="$(info server)" --certificate-authority="$(info caFile)" >/dev/null
kubectl config --kubeconfig="$RUNNER_KUBECONFIG" set-credentials runner --token="$(kubectl -n "$NS" create token runner --duration=1h)" >/dev/null
kubectl config --kubeconfig="$RUNNER_KUBECONFIG" set-context runner --cluster=local --user=runner --namespace="$NS" >/dev/null
kubectl config --kubeconfig="$RUNNER_KUBECONFIG" use-context runner >/dev/null

# run_workflow NAME LOG ACT-ARGS... runs examples/workflows/NAME under act as a job in the runner
# pod, shows its builders while it runs and its log afterwards, and checks that the post step
# removed everything. It sets t_job, t_job_end, t_post_end and t_gone.
# Host mode (-P arc-runners=-self-hosted): the steps run as processes here, as in a runner pod.
# org/setup-ephemeral-buildkit@v1 is served from the staged checkout, actions/checkout of the
# local repository is skipped, nothing is pulled, no update check: nothing leaves this machine.
# The node selector maps arm64 onto the one amd64 node, where qemu runs it.
NODE_SELECTOR="linux/amd64=$(info amd64);linux/arm64=kubernetes.io/arch-,$(info arm64)"
# The runner trusts the cluster's registry (SSL_CERT_FILE), as a runner image trusts a private
# registry's CA: buildx on the runner combines the per-platform manifests of a multi-node push.
run_workflow() {
	local name=$1 log=$2
	shift 2
	step "Running examples/workflows/$name under act, as a job in runner pod $NS/runner"
	t_job=$(now)
	(
		cd "$WORK/repo"
		exec env -i PATH="$PATH" HOME="$WORK/home" TMPDIR="${TMPDIR:-/tmp}" \
			KUBECONFIG="$RUNNER_KUBECONFIG" DOCKER_CONFIG="$WORK/home/docker" BUILDKIT_PROGRESS=plain \
			SSL_CERT_FILE="$(info registryCAFile)" \
			ACT_DISABLE_VERSION_CHECK=1 GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 \
			setsid act push -W "$ROOT/examples/workflows/$name" \
			-P arc-runners=-self-hosted --action-offline-mode --pull=false --no-cache-server \
			--action-cache-path "$WORK/act" \
			--local-repository "org/setup-ephemeral-buildkit@v1=$WORK/action" \
			--env ACTIONS_RUNNER_POD_NAME=runner \
			--var BUILDKIT_NODE_SELECTOR="$NODE_SELECTOR" "$@"
	) >"$log" 2>&1 &
	ACT_PID=$!
	CURRENT_LOG=$log

	# Show the builders while the job runs.
	until [[ $(kubectl -n "$NS" get pods -l "$MANAGED" --field-selector=status.phase=Running -o name 2>/dev/null | wc -l) -ge 2 ]]; do
		kill -0 "$ACT_PID" 2>/dev/null || break
		sleep 0.2
	done
	step "The job's builders (kubectl get pods -o wide), next to the runner pod"
	kubectl -n "$NS" get pods -o wide -L setup-ephemeral-buildkit.io/arch

	local job_status=0
	wait "$ACT_PID" || job_status=$?
	ACT_PID=
	t_job_end=$(now)
	step "The workflow's log"
	sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$log"
	if [[ $job_status -ne 0 ]]; then
		echo "demo: the workflow $name failed (exit $job_status)" >&2
		exit 1
	fi

	step "After the job: waiting for the builder pods to finish their drain and go"
	t_post_end=$(now)
	until [[ -z $(kubectl -n "$NS" get pods,secrets -l "$MANAGED" -o name) ]]; do sleep 0.2; done
	t_gone=$(now)
	kubectl -n "$NS" get pods,secrets
	if ! grep -q 'Removed builder .* and everything it used' "$log"; then
		echo "demo: the post step of $name did not report a complete cleanup" >&2
		exit 1
	fi
	echo "No builder pod and no Secret left; the post step removed the buildx builder and the certificate files."
}

run_workflow multi-arch-oci.yml "$WORK/act.log" --var OCI_DIR="$WORK/oci"
t_oci_job=$t_job t_oci_job_end=$t_job_end t_oci_post_end=$t_post_end t_oci_gone=$t_gone

step "The OCI archives: one image per platform, and what their RUN steps recorded"
"$WORK/ociinfo" -file build-info.txt "$WORK"/oci/app-linux-*.tar

# The voting app: three services, FROM golang and FROM debian (the cluster's base images), for both
# platforms, pushed to the cluster's registry. The builders trust the registry (and use it as
# their Docker Hub mirror) through the buildkitd-config input.
VOTING_TAG=demo
run_workflow voting-bake.yml "$WORK/voting.log" \
	--var BUILDKITD_CONFIG="$(info buildkitdConfigFile)" --var REGISTRY="$(info registry)" --var TAG="$VOTING_TAG"
t_vote_job=$t_job t_vote_job_end=$t_job_end t_vote_post_end=$t_post_end t_vote_gone=$t_gone

step "What the registry holds now: one index per service, an image per platform"
images=()
for service in vote worker result; do images+=("$(info registry)/voting/$service:$VOTING_TAG"); done
"$WORK/registryinfo" -ca "$(info registryCAFile)" "${images[@]}"

step "Stopping the cluster"
t_down=$(now)
if [[ -z $REUSE ]]; then
	"${cluster[@]}" down -state "$CLUSTER_DIR"
fi
cluster_up=false
t_down_end=$(now)

log=$(sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$WORK/act.log")
vlog=$(sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$WORK/voting.log")
ready=$(grep -oE 'Builder [^ ]+ is ready in [0-9.]+s' <<<"$log" | grep -oE '[0-9.]+s$' | tr -d s)
main_step=$(grep -oE 'Success - Main org/setup-ephemeral-buildkit@v1 \[[^]]+\]' <<<"$log" | grep -oE '\[[^]]+\]' | tr -d '[]')
post_step=$(grep -oE 'Success - Post org/setup-ephemeral-buildkit@v1 \[[^]]+\]' <<<"$log" | grep -oE '\[[^]]+\]' | tr -d '[]')
step "Timings"
row() { printf '%-62s %8s\n' "$1" "$2"; }
{
	row "phase" "seconds"
	row "cluster up (processes started, node Ready)" "$(seconds "$t_start" "$t_cluster")"
	for platform in linux/amd64 linux/arm64; do
		row "provision: $platform builder, pod created -> answers mTLS" \
			"$(grep -oE "$platform: tcp://[^ ]+ \(pod [^)]*\), ready in [0-9.]+s" <<<"$log" | grep -oE '[0-9.]+s$' | tr -d s)"
	done
	row "provision: main step (runner pod, builders, buildx builder)" "$ready"
	row "provision: main step as act timed it (+ action copy, start)" "$(go_seconds "$main_step")"
	for platform in linux/amd64 linux/arm64; do
		row "build $platform (both at once, each on its own builder)" \
			"$(go_seconds "$(grep -oE "built $platform in [0-9.]+s" <<<"$log" | grep -oE '[0-9.]+s$')")"
	done
	row "cleanup: post step (buildx rm, pods and Secret, files)" "$(go_seconds "$post_step")"
	row "cleanup: builder pods gone after the job (preStop drain)" "$(seconds "$t_oci_post_end" "$t_oci_gone")"
	row "whole workflow under act" "$(seconds "$t_oci_job" "$t_oci_job_end")"
	row "voting app: bake of 3 services x 2 platforms, pushed" \
		"$(grep -oE 'baked vote, worker and result in [0-9.]+s' <<<"$vlog" | grep -oE '[0-9.]+s$' | tr -d s)"
	# One BuildKit history record per service and builder node (= platform).
	while IFS='|' read -r _ name node status duration; do
		row "voting app: build $name on ${node##*-} ($status)" "$(history_seconds "$duration")"
	done < <(grep -oE 'history\|.*' <<<"$vlog" | sort -u)
	row "voting app: whole workflow under act" "$(seconds "$t_vote_job" "$t_vote_job_end")"
	row "cluster down" "$(seconds "$t_down" "$t_down_end")"
	row "demo total" "$(seconds "$t_start" "$t_down_end")"
}
