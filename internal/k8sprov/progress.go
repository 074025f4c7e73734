package k8sprov

import (
	"fmt"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// ProgressKind says what a Progress line reports, so a printer can treat kinds apart (show a
// repeated Kubernetes event once) without reading the message.
type ProgressKind int

const (
	// ProgressStep is a step of the job as a whole, such as replacing an earlier attempt's pods.
	ProgressStep ProgressKind = iota
	// ProgressPodState is a change of a builder pod's phase, node, IP or container state.
	ProgressPodState
	// ProgressEvent is a Kubernetes event about a builder pod; Kubernetes repeats some of them.
	ProgressEvent
	// ProgressReady is a builder that answered over mutual TLS with its platform.
	ProgressReady
	// ProgressAPIServer is the API server going away or coming back while the provisioner waits.
	ProgressAPIServer
)

// Progress is one line of live progress about a builder.
type Progress struct {
	Kind     ProgressKind
	Platform platform.Platform
	Pod      string
	Message  string
	At       time.Time
}

func (p *Provisioner) progress(kind ProgressKind, pl platform.Platform, pod, format string, args ...any) {
	if p.Progress != nil {
		p.Progress(Progress{Kind: kind, Platform: pl, Pod: pod, Message: fmt.Sprintf(format, args...), At: p.now()})
	}
}
