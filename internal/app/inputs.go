package app

import (
	"errors"
	"fmt"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// Names of the inputs, as action.yml declares them and the CLI's flags spell them. Where
// docker/setup-buildx-action has an input of the same meaning, the name is the same.
const (
	InputName                  = "name"
	InputPlatforms             = "platforms"
	InputBuildkitdFlags        = "buildkitd-flags"
	InputBuildkitdConfig       = "buildkitd-config"
	InputBuildkitdConfigInline = "buildkitd-config-inline"
	InputUse                   = "use"
	InputCleanup               = "cleanup"

	InputNamespace              = "namespace"
	InputOwnerPod               = "owner-pod"
	InputImage                  = "image"
	InputRequests               = "requests"
	InputLimits                 = "limits"
	InputNodeSelector           = "node-selector"
	InputTolerations            = "tolerations"
	InputTimeout                = "timeout"
	InputMaxLifetime            = "max-lifetime"
	InputTerminationGracePeriod = "termination-grace-period"
	InputKubeconfig             = "kubeconfig"
	InputRootless               = "rootless"
	InputLabels                 = "labels"
	InputAnnotations            = "annotations"
	InputDebug                  = "debug"
	// InputJobStatus is the job's status as the post step sees it; action.yml defaults it to
	// ${{ job.status }}, which the runner evaluates again for the post step. Anything but
	// "success" (or empty) makes the post step print the builders' last log lines.
	InputJobStatus = "job-status"
)

// providerInputNames maps the provisioner's input names, which its errors carry, to ours.
var providerInputNames = map[string]string{
	k8sprov.InputOwner:            InputOwnerPod,
	k8sprov.InputNodeSelectors:    InputNodeSelector,
	k8sprov.InputReadinessTimeout: InputTimeout,
}

// settings are the inputs that steer the flow rather than the builders.
type settings struct {
	name       string
	use        bool
	cleanup    bool
	kubeconfig string
	debug      bool
}

// readInputs reads every input: the provisioner's as text (ParseOptions checks them), the flow's
// own parsed here. buildkitd-config is a file, read with readFile; relative paths are relative to
// the working directory (the workspace, on GitHub).
func readInputs(p ci.Platform, readFile func(string) ([]byte, error)) (k8sprov.Inputs, settings, error) {
	in := k8sprov.Inputs{
		Platforms:              p.Input(InputPlatforms),
		Owner:                  p.Input(InputOwnerPod),
		Namespace:              p.Input(InputNamespace),
		Image:                  p.Input(InputImage),
		Requests:               p.Input(InputRequests),
		Limits:                 p.Input(InputLimits),
		NodeSelectors:          p.Input(InputNodeSelector),
		Tolerations:            p.Input(InputTolerations),
		Labels:                 p.Input(InputLabels),
		Annotations:            p.Input(InputAnnotations),
		BuildkitdFlags:         p.Input(InputBuildkitdFlags),
		BuildkitdConfig:        p.Input(InputBuildkitdConfigInline),
		Rootless:               p.Input(InputRootless),
		ReadinessTimeout:       p.Input(InputTimeout),
		MaxLifetime:            p.Input(InputMaxLifetime),
		TerminationGracePeriod: p.Input(InputTerminationGracePeriod),
	}
	var errs []error
	if path := p.Input(InputBuildkitdConfig); path != "" {
		if in.BuildkitdConfig != "" {
			errs = append(errs, &k8sprov.InputError{Input: InputBuildkitdConfig, Value: path,
				Err: errors.New("given together with " + InputBuildkitdConfigInline), Accepted: "one of buildkitd-config and buildkitd-config-inline"})
		} else if data, err := readFile(path); err != nil {
			errs = append(errs, &k8sprov.InputError{Input: InputBuildkitdConfig, Value: path, Err: err, Accepted: "the path of a readable buildkitd.toml"})
		} else {
			in.BuildkitdConfig = string(data)
		}
	}
	s := settings{name: p.Input(InputName), kubeconfig: p.Input(InputKubeconfig)}
	var err error
	if s.use, err = parseBoolDefault(InputUse, p.Input(InputUse), true); err != nil {
		errs = append(errs, err)
	}
	if s.cleanup, err = parseBoolDefault(InputCleanup, p.Input(InputCleanup), true); err != nil {
		errs = append(errs, err)
	}
	if s.debug, err = parseBoolDefault(InputDebug, p.Input(InputDebug), false); err != nil {
		errs = append(errs, err)
	}
	s.debug = s.debug || p.Debug()
	return in, s, errors.Join(errs...)
}

// parseBoolDefault reads a boolean input the way the Actions toolkit's getBooleanInput does
// (true, True, TRUE, false, False, FALSE), with def for an empty input.
func parseBoolDefault(input, value string, def bool) (bool, error) {
	switch strings.TrimSpace(value) {
	case "":
		return def, nil
	case "true", "True", "TRUE":
		return true, nil
	case "false", "False", "FALSE":
		return false, nil
	}
	return false, &k8sprov.InputError{Input: input, Value: value, Err: errors.New("not a boolean"), Accepted: "true or false"}
}

// renameInputs rewrites the input names in the provisioner's errors to the names users wrote, so
// that `input "timeout"` is reported, not `input "readiness-timeout"`.
func renameInputs(err error) error {
	if err == nil {
		return nil
	}
	var list []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		list = joined.Unwrap()
	} else {
		list = []error{err}
	}
	out := make([]error, 0, len(list))
	for _, e := range list {
		var inputErr *k8sprov.InputError
		if errors.As(e, &inputErr) {
			if name, ok := providerInputNames[inputErr.Input]; ok {
				renamed := *inputErr
				renamed.Input = name
				e = &renamed
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// jobIdentity converts the CI adapter's identity into the provisioner's.
func jobIdentity(j ci.JobIdentity) k8sprov.JobIdentity {
	return k8sprov.JobIdentity{
		CIPlatform:   j.CIPlatform,
		Repository:   j.Repository,
		RepositoryID: j.RepositoryID,
		RunID:        j.RunID,
		RunAttempt:   j.RunAttempt,
		JobID:        j.JobID,
		JobName:      j.JobName,
		Commit:       j.Commit,
		URL:          j.URL,
	}
}

// inputErrorList formats joined errors one per line, for a log that shows them all.
func inputErrorList(err error) string {
	var lines []string
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			lines = append(lines, "  - "+e.Error())
		}
	} else {
		lines = []string{"  - " + err.Error()}
	}
	return fmt.Sprintf("invalid inputs:\n%s", strings.Join(lines, "\n"))
}
