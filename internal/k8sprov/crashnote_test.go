package k8sprov

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestCrashNoteNamesHowBuildkitdEnded(t *testing.T) {
	killed := &corev1.ContainerStateTerminated{Reason: "Error", ExitCode: 137, FinishedAt: metav1.NewTime(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))}
	for _, tc := range []struct {
		name   string
		status corev1.ContainerStatus
		want   []string
	}{
		{"running, never ended", corev1.ContainerStatus{Name: ContainerName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}, nil},
		{"killed and restarted", corev1.ContainerStatus{Name: ContainerName, RestartCount: 1, LastTerminationState: corev1.ContainerState{Terminated: killed}},
			[]string{"Error, exit code 137", "killed", "03:04:05", "restarted 1 time(s)"}},
		{"ended for good", corev1.ContainerStatus{Name: ContainerName, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "OOMKilled", ExitCode: 137}}},
			[]string{"OOMKilled, exit code 137"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			note := crashNote(&corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{tc.status}}})
			if tc.want == nil && note != "" {
				t.Errorf("note %q, want none", note)
			}
			for _, want := range tc.want {
				if !strings.Contains(note, want) {
					t.Errorf("note %q lacks %q", note, want)
				}
			}
		})
	}
}
