package k8sprov

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// crashNote says how buildkitd ended before, when its container was restarted (it crashed or
// was killed while the job ran), so that a failed job's post step names the crash and not only
// the log of the buildkitd that replaced it. It is "" when buildkitd never ended.
func crashNote(pod *corev1.Pod) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != ContainerName {
			continue
		}
		ended := cs.LastTerminationState.Terminated
		if current := cs.State.Terminated; current != nil {
			ended = current
		}
		if ended == nil {
			return ""
		}
		var b strings.Builder
		fmt.Fprintf(&b, "buildkitd ended: %s, exit code %d", ended.Reason, ended.ExitCode)
		if ended.ExitCode == 137 {
			b.WriteString(" (killed: SIGKILL or out of memory)")
		}
		if !ended.FinishedAt.IsZero() {
			fmt.Fprintf(&b, " at %s", ended.FinishedAt.UTC().Format("15:04:05"))
		}
		if ended.Message != "" {
			fmt.Fprintf(&b, ": %s", strings.TrimSpace(ended.Message))
		}
		if cs.RestartCount > 0 {
			fmt.Fprintf(&b, "; restarted %d time(s), so any build running then failed; the lines below are the new buildkitd's", cs.RestartCount)
		}
		return b.String()
	}
	return ""
}
