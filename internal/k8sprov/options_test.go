package k8sprov

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

func TestParseOptionsDefaults(t *testing.T) {
	opts, err := ParseOptions(testJob, Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Image != DefaultImage || opts.ReadinessTimeout != 120*time.Second || opts.MaxLifetime != DefaultMaxLifetime ||
		opts.TerminationGracePeriod != DefaultTerminationGracePeriod || opts.DrainQuietPeriod != DefaultDrainQuietPeriod {
		t.Errorf("defaults not applied: %+v", opts)
	}
	if len(opts.Platforms) != 0 || opts.Owner != (OwnerSelection{}) || opts.Namespace != "" {
		t.Errorf("platforms, owner and namespace must stay for the provisioner to resolve: %+v", opts)
	}
	rootless, err := ParseOptions(testJob, Inputs{Rootless: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if rootless.Image != DefaultRootlessImage {
		t.Errorf("rootless image = %s, want %s", rootless.Image, DefaultRootlessImage)
	}
	custom, err := ParseOptions(testJob, Inputs{Rootless: "true", Image: "registry.example/buildkit:rootless"})
	if err != nil {
		t.Fatal(err)
	}
	if custom.Image != "registry.example/buildkit:rootless" {
		t.Errorf("explicit image replaced: %s", custom.Image)
	}
}

func TestParseOptionsReadsEveryInput(t *testing.T) {
	opts, err := ParseOptions(testJob, Inputs{
		Platforms:              "linux/amd64, linux/arm64",
		OwnerPod:               "runner-1",
		Namespace:              "ci",
		Image:                  "registry.example/buildkit@sha256:" + strings.Repeat("a", 64),
		Requests:               "cpu=500m,memory=1Gi",
		Limits:                 "memory=2Gi",
		NodeSelector:           "linux/arm64=pool=arm",
		Tolerations:            "linux/arm64=arch=arm64:NoSchedule",
		Labels:                 "team=ci",
		Annotations:            "example.com/a=b",
		BuildkitdFlags:         "--debug",
		BuildkitdConfig:        "debug = true",
		Rootless:               "false",
		Timeout:                "30",
		MaxLifetime:            "1h30m",
		TerminationGracePeriod: "1s",
	})
	if err != nil {
		t.Fatal(err)
	}
	memory := opts.Resources.Limits[corev1.ResourceMemory]
	if platform.FormatList(opts.Platforms) != "linux/amd64,linux/arm64" || opts.Owner.Name != "runner-1" || opts.Namespace != "ci" ||
		memory.String() != "2Gi" || len(opts.NodeSelectors) != 1 || len(opts.Tolerations) != 1 ||
		opts.Labels["team"] != "ci" || opts.Annotations["example.com/a"] != "b" || opts.BuildkitdFlags[0] != "--debug" ||
		opts.ReadinessTimeout != 30*time.Second || opts.MaxLifetime != 90*time.Minute || opts.TerminationGracePeriod != time.Second {
		t.Errorf("inputs not all read: %+v", opts)
	}
	none, err := ParseOptions(testJob, Inputs{OwnerPod: "None"})
	if err != nil || !none.Owner.None {
		t.Errorf("owner None: %+v, %v", none.Owner, err)
	}
}

// TestParseOptionsErrorsNameInputValueAndAccepted checks the promise of InputError: every refusal
// names the input, shows the refused value and says what is accepted.
func TestParseOptionsErrorsNameInputValueAndAccepted(t *testing.T) {
	for _, tc := range []struct {
		input  string
		inputs Inputs
		value  string
	}{
		{InputPlatforms, Inputs{Platforms: "linux/amd64,windows/amd64"}, "windows/amd64"},
		{InputPlatforms, Inputs{Platforms: "linux/arm64,linux/aarch64"}, "aarch64"},
		{InputOwnerPod, Inputs{OwnerPod: "Runner_1"}, "Runner_1"},
		{InputNamespace, Inputs{Namespace: "CI"}, "CI"},
		{InputImage, Inputs{Image: "Docker.io/Moby"}, "Docker.io/Moby"},
		{InputRequests, Inputs{Requests: "cpu=500m,mem=1Gi"}, "mem=1Gi"},
		{InputRequests, Inputs{Requests: "cpu=-1"}, "cpu=-1"},
		{InputRequests, Inputs{Requests: "cpu=lots"}, "cpu=lots"},
		{InputLimits, Inputs{Limits: "cpu=1,cpu=2"}, "cpu=2"},
		{InputLimits, Inputs{Requests: "memory=2Gi", Limits: "memory=1Gi"}, "memory=1Gi"},
		{InputNodeSelector, Inputs{NodeSelector: "pool=arm"}, "pool=arm"},
		{InputNodeSelector, Inputs{NodeSelector: "linux/arm64=pool"}, "linux/arm64=pool"},
		{InputNodeSelector, Inputs{NodeSelector: "linux/arm64=a=1;linux/arm64=b=2"}, "linux/arm64=b=2"},
		{InputTolerations, Inputs{Tolerations: "linux/arm64=arch=arm64:NoFoo"}, "linux/arm64=arch=arm64:NoFoo"},
		{InputTolerations, Inputs{Tolerations: "*=arch:NoSchedule:30"}, "*=arch:NoSchedule:30"},
		{InputTolerations, Inputs{Tolerations: "*=:NoSchedule"}, "*=:NoSchedule"},
		{InputLabels, Inputs{Labels: "app.kubernetes.io/managed-by=me"}, "app.kubernetes.io/managed-by=me"},
		{InputLabels, Inputs{Labels: "setup-ephemeral-buildkit.io/job-key=x"}, "setup-ephemeral-buildkit.io/job-key=x"},
		{InputLabels, Inputs{Labels: "team=a b"}, "team=a b"},
		{InputAnnotations, Inputs{Annotations: "no-equals-sign"}, "no-equals-sign"},
		{InputBuildkitdFlags, Inputs{BuildkitdFlags: "--debug --addr=tcp://0.0.0.0:9999"}, "--addr=tcp://0.0.0.0:9999"},
		{InputBuildkitdFlags, Inputs{BuildkitdFlags: `--debug "unterminated`}, `--debug "unterminated`},
		{InputBuildkitdConfig, Inputs{BuildkitdConfig: "[worker.oci\nenabled = true"}, "[worker.oci"},
		{InputRootless, Inputs{Rootless: "yes"}, "yes"},
		{InputRootless, Inputs{Rootless: "tRuE"}, "tRuE"},
		{InputTimeout, Inputs{Timeout: "soon"}, "soon"},
		{InputTimeout, Inputs{Timeout: "2h"}, "2h0m0s"},
		{InputMaxLifetime, Inputs{MaxLifetime: "30d"}, "30d"},
		{InputMaxLifetime, Inputs{MaxLifetime: "2m", Timeout: "5m"}, "2m0s"},
		{InputTerminationGracePeriod, Inputs{TerminationGracePeriod: "0"}, "0"},
		{InputTerminationGracePeriod, Inputs{TerminationGracePeriod: "-1s"}, "-1s"},
		{IdentityJobID, Inputs{}, ""},
	} {
		t.Run(tc.input+"/"+tc.value, func(t *testing.T) {
			job := testJob
			if tc.input == IdentityJobID {
				job.JobID = ""
			}
			_, err := ParseOptions(job, tc.inputs)
			if err == nil {
				t.Fatal("accepted")
			}
			var inputErr *InputError
			if !errors.As(err, &inputErr) {
				t.Fatalf("error %v is not an *InputError", err)
			}
			if inputErr.Input != tc.input {
				t.Errorf("error names input %q, want %q: %v", inputErr.Input, tc.input, err)
			}
			if !strings.Contains(inputErr.Value, tc.value) {
				t.Errorf("error value %q does not show %q", inputErr.Value, tc.value)
			}
			if inputErr.Accepted == "" {
				t.Errorf("error does not say what is accepted: %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.input) || !strings.Contains(msg, "accepted:") {
				t.Errorf("message %q lacks the input name or what is accepted", msg)
			}
		})
	}
}

func TestParseOptionsReportsEveryBadInput(t *testing.T) {
	job := testJob
	job.Commit = "HEAD"
	_, err := ParseOptions(job, Inputs{Platforms: "linux/sparc", Requests: "gpu=1", Rootless: "maybe", Image: "registry.example/UPPER", MaxLifetime: "10s"})
	// Parse errors and validation errors alike, each input once.
	for _, input := range []string{InputPlatforms, InputRequests, InputRootless, InputImage, InputMaxLifetime, IdentityCommit} {
		if err == nil || strings.Count(err.Error(), `input "`+input+`"`) != 1 {
			t.Errorf("error %v does not report input %s exactly once", err, input)
		}
	}
}

func TestValidateChecksProgrammaticOptions(t *testing.T) {
	opts := Options{
		Job:         testJob,
		Platforms:   []platform.Platform{{OS: "linux", Architecture: "aarch64"}},
		Labels:      map[string]string{LabelJobKey: "mine"},
		Annotations: map[string]string{"example.com/x": "line\nbreak"},
		Tolerations: []TolerationRule{{Tolerations: []corev1.Toleration{{Key: "a", Operator: corev1.TolerationOpExists, Value: "b", Effect: corev1.TaintEffectNoSchedule}}}},
	}.WithDefaults()
	err := opts.Validate()
	for _, input := range []string{InputPlatforms, InputLabels, InputAnnotations, InputTolerations} {
		if err == nil || !strings.Contains(err.Error(), `input "`+input+`"`) {
			t.Errorf("Validate: %v; want an error for %s", err, input)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for text, want := range map[string]time.Duration{"90": 90 * time.Second, "90s": 90 * time.Second, " 2m ": 2 * time.Minute, "1h30m": 90 * time.Minute} {
		got, err := ParseDuration(text)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", text, got, err, want)
		}
	}
	for _, text := range []string{"", "1d", "abc", "99999999999"} {
		if _, err := ParseDuration(text); err == nil {
			t.Errorf("ParseDuration(%q) accepted", text)
		}
	}
}

func TestSplitEntries(t *testing.T) {
	for text, want := range map[string]string{
		"a=1,b=2":          "a=1|b=2",
		"a=1, b=2 ,":       "a=1|b=2",
		"a=1,2\nb=3":       "a=1,2|b=3",
		"a=x,y\n":          "a=x|y",
		"a=1\r\nb=2\r\n\n": "a=1|b=2",
		"":                 "",
	} {
		if got := strings.Join(splitEntries(text), "|"); got != want {
			t.Errorf("splitEntries(%q) = %q, want %q", text, got, want)
		}
	}
}

func TestParseAnnotationsKeepsCommasInMultiLineInput(t *testing.T) {
	got, err := ParseAnnotations("example.com/list=a,b,c\nexample.com/other=x")
	if err != nil {
		t.Fatal(err)
	}
	if got["example.com/list"] != "a,b,c" || got["example.com/other"] != "x" {
		t.Errorf("ParseAnnotations = %v", got)
	}
}

// TestParseBoolAcceptsTheToolkitsWords holds the one boolean parser to the words of the Actions
// toolkit's getBooleanInput, and nothing else.
func TestParseBoolAcceptsTheToolkitsWords(t *testing.T) {
	for in, want := range map[string]bool{"true": true, "True": true, "TRUE": true, " true\n": true, "false": false, "False": false, "FALSE": false} {
		if got, err := ParseBool(in, !want); err != nil || got != want {
			t.Errorf("ParseBool(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, def := range []bool{true, false} {
		if got, err := ParseBool("  ", def); err != nil || got != def {
			t.Errorf("ParseBool(blank, %v) = %v, %v; want the default", def, got, err)
		}
	}
	for _, in := range []string{"tRuE", "yes", "1", "0", "on", "t", "f"} {
		_, err := ParseBool(in, false)
		var inputErr *InputError
		if !errors.As(err, &inputErr) || inputErr.Value != in || inputErr.Accepted != AcceptedBool {
			t.Errorf("ParseBool(%q) = %v, want an InputError naming the value and %s", in, err, AcceptedBool)
		}
	}
}
