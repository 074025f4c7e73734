package app

import (
	"errors"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/regcache"
)

// Names of the inputs that steer the flow, as action.yml declares them and the CLI's flags
// spell them. The builders' inputs are the provisioner's (k8sprov.InputPlatforms, ...), by the
// same names everywhere. Where docker/setup-buildx-action has an input of the same meaning, the
// name is the same.
const (
	InputName = "name"
	// InputBuildkitdConfigInline is the content of a buildkitd.toml; k8sprov.InputBuildkitdConfig
	// is, for the user, the path of one, which readInputs reads.
	InputBuildkitdConfigInline = "buildkitd-config-inline"
	InputUse                   = "use"
	InputCleanup               = "cleanup"
	InputKubeconfig            = "kubeconfig"
	InputDebug                 = "debug"
	// InputTemplate names the ConfigMap of the runner namespace that holds the platform team's
	// cluster template (package clustertemplate); default clustertemplate.DefaultName.
	InputTemplate = "template"
	// InputJobStatus is the job's status as the post step sees it; action.yml defaults it to
	// ${{ job.status }}, which the runner evaluates again for the post step. Anything but
	// "success" (or empty) makes the post step print the builders' last log lines.
	InputJobStatus = "job-status"
)

// settings are the inputs that steer the flow rather than the builders.
type settings struct {
	name       string
	use        bool
	cleanup    bool
	kubeconfig string
	debug      bool
	// template is the cluster template's ConfigMap name; explicitTemplate says the job named it.
	template         string
	explicitTemplate bool
	// cacheRef is the registry cache's repository (regcache.InputCacheRef), empty for none.
	cacheRef   string
	cacheWrite regcache.Write
}

// readInputs reads every input: the provisioner's as text (ParseOptions checks them), the flow's
// own parsed here. buildkitd-config is a file, read with readFile; relative paths are relative to
// the working directory (the workspace, on GitHub).
func readInputs(p ci.System, readFile func(string) ([]byte, error)) (k8sprov.Inputs, settings, error) {
	in := k8sprov.Inputs{
		Platforms:              p.Input(k8sprov.InputPlatforms),
		OwnerPod:               p.Input(k8sprov.InputOwnerPod),
		Namespace:              p.Input(k8sprov.InputNamespace),
		Image:                  p.Input(k8sprov.InputImage),
		Requests:               p.Input(k8sprov.InputRequests),
		Limits:                 p.Input(k8sprov.InputLimits),
		NodeSelector:           p.Input(k8sprov.InputNodeSelector),
		Tolerations:            p.Input(k8sprov.InputTolerations),
		Labels:                 p.Input(k8sprov.InputLabels),
		Annotations:            p.Input(k8sprov.InputAnnotations),
		BuildkitdFlags:         p.Input(k8sprov.InputBuildkitdFlags),
		BuildkitdConfig:        p.Input(InputBuildkitdConfigInline),
		Rootless:               p.Input(k8sprov.InputRootless),
		Timeout:                p.Input(k8sprov.InputTimeout),
		MaxLifetime:            p.Input(k8sprov.InputMaxLifetime),
		TerminationGracePeriod: p.Input(k8sprov.InputTerminationGracePeriod),
		Cache:                  p.Input(k8sprov.InputCache),
		CacheKey:               p.Input(k8sprov.InputCacheKey),
		CacheSize:              p.Input(k8sprov.InputCacheSize),
		CacheStorageClass:      p.Input(k8sprov.InputCacheStorageClass),
		CacheMaxSlots:          p.Input(k8sprov.InputCacheMaxSlots),
	}
	var errs []error
	// Relative paths in an inline config are relative to the working directory, in a file's
	// to the file's directory (as a path in any config file is read).
	configDir := "."
	if path := p.Input(k8sprov.InputBuildkitdConfig); path != "" {
		if in.BuildkitdConfig != "" {
			errs = append(errs, &k8sprov.InputError{Input: k8sprov.InputBuildkitdConfig, Value: path,
				Err: errors.New("given together with " + InputBuildkitdConfigInline), Accepted: "one of buildkitd-config and buildkitd-config-inline"})
		} else if data, err := readFile(path); err != nil {
			errs = append(errs, &k8sprov.InputError{Input: k8sprov.InputBuildkitdConfig, Value: path, Err: err, Accepted: "the path of a readable buildkitd.toml"})
		} else {
			in.BuildkitdConfig, configDir = string(data), filepath.Dir(path)
		}
	}
	if in.BuildkitdConfig != "" {
		bundle, err := k8sprov.BundleBuildkitdConfig(in.BuildkitdConfig, configDir, readFile)
		if err != nil {
			errs = append(errs, err)
		}
		in.BuildkitdConfig, in.BuildkitdFiles = bundle.Config, bundle.Files
	}
	s := settings{name: p.Input(InputName), kubeconfig: p.Input(InputKubeconfig), template: p.Input(InputTemplate)}
	s.explicitTemplate = s.template != ""
	if !s.explicitTemplate {
		s.template = clustertemplate.DefaultName
	} else if msgs := validation.IsDNS1123Subdomain(s.template); len(msgs) > 0 {
		errs = append(errs, &k8sprov.InputError{Input: InputTemplate, Value: s.template, Err: errors.New(strings.Join(msgs, "; ")),
			Accepted: "the name of a ConfigMap in the runner namespace (default " + clustertemplate.DefaultName + ")"})
	}
	for _, b := range []struct {
		input string
		def   bool
		into  *bool
	}{{InputUse, true, &s.use}, {InputCleanup, true, &s.cleanup}, {InputDebug, false, &s.debug}} {
		if err := parseBoolInput(p, b.input, b.def, b.into); err != nil {
			errs = append(errs, err)
		}
	}
	s.debug = s.debug || p.Debug()
	var err error
	if s.cacheRef, err = regcache.ParseRef(p.Input(regcache.InputCacheRef)); err != nil {
		errs = append(errs, err)
	}
	if s.cacheWrite, err = regcache.ParseWrite(p.Input(regcache.InputCacheWrite)); err != nil {
		errs = append(errs, err)
	}
	return in, s, errors.Join(errs...)
}

// parseBoolInput reads the boolean input into *into with k8sprov.ParseBool, the parser every
// boolean input and flag shares, and def for an empty input; an error names the input.
func parseBoolInput(p ci.System, input string, def bool, into *bool) error {
	v, err := k8sprov.ParseBool(p.Input(input), def)
	if err != nil {
		var inputErr *k8sprov.InputError
		if errors.As(err, &inputErr) {
			inputErr.Input = input
		}
		return err
	}
	*into = v
	return nil
}
