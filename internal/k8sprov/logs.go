package k8sprov

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// logReadTimeout bounds the reading of one builder's log.
const logReadTimeout = 5 * time.Second

// BuilderLog is the tail of one builder's buildkitd log.
type BuilderLog struct {
	Platform platform.Platform
	Pod      string
	// Lines are the last log lines, condensed like a BuilderError's, or why they are unavailable.
	Lines string
}

// BuilderLogs returns the last lines of buildkitd's log of each of job key's builders in ns, for
// post steps that show them when a job failed. Builders whose pod does not exist (never
// created, or already gone) are left out: there is nothing to show and nothing went wrong.
func (p *Provisioner) BuilderLogs(ctx context.Context, ns string, key JobKey, platforms []platform.Platform, lines int64) []BuilderLog {
	var logs []BuilderLog
	for _, pl := range platforms {
		pod := PodName(key, pl)
		got, err := p.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		text := p.lastLogLines(ctx, ns, pod, lines)
		if err == nil {
			if note := crashNote(got); note != "" {
				text = note + "\n" + text
			}
		}
		logs = append(logs, BuilderLog{Platform: pl, Pod: pod, Lines: text})
	}
	return logs
}

// lastLogLines fetches the tail of buildkitd's log, condensed by summarizeLog; failure to read
// it is reported in its place.
func (p *Provisioner) lastLogLines(ctx context.Context, ns, pod string, lines int64) string {
	logCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), logReadTimeout)
	defer cancel()
	// Read more than is shown: the line that explains a crash (a usage error) is often followed by
	// pages of help text.
	fetch := lines * 10
	data, err := p.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: ContainerName, TailLines: &fetch}).DoRaw(logCtx)
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", explainAPIError(err, "get", "pods/log", ns, "reading buildkitd's log"))
	}
	return summarizeLog(string(data), int(lines))
}

// errorLine matches log lines that usually say why a process died.
var errorLine = regexp.MustCompile(`(?i)(error|fatal|panic|incorrect usage|not defined|failed)`)

// summarizeLog keeps the last n lines of log and, before them, up to 10 earlier lines that look
// like the reason (errors, usage complaints), so the cause is not lost behind help text.
func summarizeLog(log string, n int) string {
	all := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(all) <= n {
		return strings.Join(all, "\n")
	}
	head, tail := all[:len(all)-n], all[len(all)-n:]
	var reasons []string
	for _, line := range head {
		if errorLine.MatchString(line) && len(reasons) < 10 {
			reasons = append(reasons, line)
		}
	}
	if len(reasons) == 0 {
		return strings.Join(tail, "\n")
	}
	return strings.Join(reasons, "\n") + "\n[...]\n" + strings.Join(tail, "\n")
}
