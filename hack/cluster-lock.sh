# cluster-lock.sh, sourced: take_cluster_lock takes the machine-wide lock of the local cluster on
# fd 9, waiting for a run that holds it. One cluster per machine (fixed bridge, node IP and host
# paths): a second run must wait for the first instead of tearing its cluster down under it.
# Children that may outlive the run (the cluster's daemons) must be started with 9>&-.
take_cluster_lock() {
	local lock=/run/lock/setup-ephemeral-buildkit-cluster.lock
	mkdir -p "$(dirname "$lock")"
	exec 9>"$lock"
	if ! flock -n 9; then
		echo "$(basename "$0"): another run holds the local cluster ($lock); waiting for it" >&2
		flock 9
	fi
}
