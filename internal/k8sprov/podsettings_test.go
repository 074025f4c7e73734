package k8sprov

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// templatePodSettings are what a cluster template with an arm64 pool sets beyond the inputs.
var templatePodSettings = PodSettings{
	ImagePullPolicy: corev1.PullAlways,
	Debug:           true,
	Env:             []corev1.EnvVar{{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: "http://otel-collector.observability:4317"}},
	Scheduling: []PlatformScheduling{
		{
			PriorityClassName: "ci-builds",
			TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
				MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelManagedBy: ManagedBy}},
			}},
		},
		{
			Platform:          platform.MustParse("linux/arm64"),
			PriorityClassName: "ci-builds-arm",
			Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
				PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
					Weight: 50, Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{
						Key: "node.example.com/lifecycle", Operator: corev1.NodeSelectorOpIn, Values: []string{"on-demand"},
					}}},
				}},
			}},
		},
	},
}

func TestRenderPodTemplateSettingsGolden(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64,linux/arm64"})
	plan.Options.Pod = templatePodSettings
	if err := plan.Options.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	assertGolden(t, "pod-arm64-template.yaml", renderPod(t, plan, "linux/arm64"))
	// amd64 has only the settings for every platform.
	amd64 := renderPod(t, plan, "linux/amd64")
	if amd64.Spec.PriorityClassName != "ci-builds" || amd64.Spec.Affinity != nil || len(amd64.Spec.TopologySpreadConstraints) != 1 {
		t.Errorf("amd64 scheduling: priority %q, affinity %v, spread %v", amd64.Spec.PriorityClassName, amd64.Spec.Affinity, amd64.Spec.TopologySpreadConstraints)
	}
}

func TestPodSettingsValidate(t *testing.T) {
	for _, tc := range []struct {
		settings PodSettings
		want     string
	}{
		{PodSettings{ImagePullPolicy: "Sometimes"}, `image pull policy "Sometimes"`},
		{PodSettings{Env: []corev1.EnvVar{{Name: "1BAD"}}}, `environment variable "1BAD"`},
		{PodSettings{Env: []corev1.EnvVar{{Name: "A", ValueFrom: &corev1.EnvVarSource{}}}}, "only plain values"},
		{PodSettings{Scheduling: []PlatformScheduling{{}, {}}}, "scheduling for * given twice"},
		{PodSettings{Scheduling: []PlatformScheduling{{PriorityClassName: "Not_A_Name"}}}, `priority class "Not_A_Name"`},
	} {
		err := tc.settings.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.settings, err, tc.want)
		}
	}
	if err := templatePodSettings.Validate(); err != nil {
		t.Errorf("Validate(templatePodSettings) = %v", err)
	}
}
