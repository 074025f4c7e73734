package k8sprov

import (
	"strconv"
	"time"
)

// DrainScript is the builders' preStop hook, run by /bin/sh (BusyBox in the BuildKit image).
//
// buildkitd cancels every running build on its first SIGTERM. Kubernetes sends that signal only
// after the preStop hook returns, so the hook holds it back while a client is connected to the
// BuildKit port: it reads the kernel's TCP tables (/proc/net/tcp and tcp6; local port 1234 is
// 04D2, state 01 is ESTABLISHED) every half second and returns once it has seen no such connection
// for the quiet period, or when the deadline, kept a little below the pod's grace period, has
// passed, so that buildkitd still gets its SIGTERM before the kill. It needs only shell builtins,
// date and sleep, and it never fails the hook: a hook error would only add a warning event.
//
// It drains only when there is something to drain: when no build is connected at its first look
// (a normal end of job, where every build step has ended), it returns at once, so the pod goes
// in about a second instead of waiting out the quiet period. Once it
// has seen a connection, it waits for the full quiet period after the last one, as a deletion
// in the middle of a build (a node drain, the runner pod gone, a cancel) needs.
//
// Arguments: $1 the quiet period and $2 the deadline, both in whole seconds. Environment, for
// tests: DRAIN_PROC_NET_DIR (default /proc/net) and DRAIN_LOG (default /proc/1/fd/2, buildkitd's
// standard error, so that the hook's decisions appear in the container log).
const DrainScript = `quiet_seconds=${1:-10}
deadline=$(( $(date +%s) + ${2:-25} ))
proc_net=${DRAIN_PROC_NET_DIR:-/proc/net}
log=${DRAIN_LOG:-/proc/1/fd/2}
say() { echo "preStop: $*" >>"$log" 2>/dev/null || :; }
established() {
  n=0
  for table in "$proc_net/tcp" "$proc_net/tcp6"; do
    [ -r "$table" ] || continue
    while read -r _ local _ state _; do
      case "$local:$state" in *:04D2:01|*:04d2:01) n=$((n + 1)) ;; esac
    done <"$table"
  done
  echo "$n"
}
quiet_ticks=0
need_ticks=1
say "waiting until no build connection has been open for ${quiet_seconds}s"
while :; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    say "grace period nearly used, stopping with $(established) build connection(s) open"
    exit 0
  fi
  if [ "$(established)" -eq 0 ]; then
    quiet_ticks=$((quiet_ticks + 1))
  else
    quiet_ticks=0
    need_ticks=$((quiet_seconds * 2 + 1))
  fi
  [ "$quiet_ticks" -lt "$need_ticks" ] || break
  sleep 0.5 2>/dev/null || sleep 1
done
if [ "$need_ticks" -eq 1 ]; then
  say "no build connection open, nothing to drain, stopping"
else
  say "no build connection for ${quiet_seconds}s, stopping"
fi
exit 0
`

// drainStopMargin is the part of the grace period left to buildkitd after the hook returns, to
// close its listeners and exit on SIGTERM before the kubelet kills it.
const drainStopMargin = 5 * time.Second

// drainHookCommand is the exec command of the preStop hook for the given quiet period and grace
// period. The script gets its settings as positional parameters rather than environment
// variables, so buildkitd's environment stays as the image made it.
func drainHookCommand(quiet, grace time.Duration) []string {
	deadline := max(grace-drainStopMargin, 0)
	return []string{"/bin/sh", "-c", DrainScript, "buildkit-drain",
		strconv.FormatInt(ceilSeconds(quiet), 10), strconv.FormatInt(int64(deadline/time.Second), 10)}
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
