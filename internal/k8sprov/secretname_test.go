package k8sprov

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSecretNameIsOneOfTheJobsFewNames(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64"})
	names := SecretNames(plan.Key)
	if len(names) != SecretSlots {
		t.Fatalf("SecretNames = %v, want %d names", names, SecretSlots)
	}
	for offset := range SecretSlots + 1 {
		plan.SecretSlotOffset = offset
		if !slices.Contains(names, plan.SecretName()) {
			t.Errorf("offset %d: SecretName %q is not among %v", offset, plan.SecretName(), names)
		}
	}
}

func TestSecretSlotAvoidsNamesTheEarlierPodsMount(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64"})
	mounting := func(names ...string) []corev1.Pod {
		var pods []corev1.Pod
		for _, name := range names {
			pods = append(pods, corev1.Pod{Spec: corev1.PodSpec{Volumes: []corev1.Volume{
				{Name: "buildkit-state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "buildkit-config", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: name}}},
			}}})
		}
		return pods
	}
	preferred := plan.SecretName()
	if got := secretSlotOffset(plan.Key, plan.CreatedAt, nil); got != 0 {
		t.Errorf("no earlier pods: offset %d, want 0", got)
	}
	plan.SecretSlotOffset = secretSlotOffset(plan.Key, plan.CreatedAt, mounting(preferred))
	if plan.SecretName() == preferred {
		t.Errorf("the retry takes %s, which the killed attempt's pod mounts", preferred)
	}
	taken := SecretNames(plan.Key)[:SecretSlots-1]
	if !slices.Contains(taken, preferred) {
		taken = append(taken[:SecretSlots-2], preferred)
	}
	plan.SecretSlotOffset = secretSlotOffset(plan.Key, plan.CreatedAt, mounting(taken...))
	if slices.Contains(taken, plan.SecretName()) {
		t.Errorf("with %v mounted the retry takes %s", taken, plan.SecretName())
	}
}

// A main step killed after creating its Secret and before recording it: teardown (and a retry's
// replaceLeftovers, which calls it) still deletes it, by name, without reading Secrets.
func TestTeardownDeletesAnUnrecordedSecretByName(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64"})
	secret := renderedSecret(t, plan)
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "buildkit-otherjobkey1-0-tls", Namespace: plan.Namespace}}
	client := fake.NewClientset(secret, other)
	prov := &Provisioner{Client: client}
	report, err := prov.Teardown(context.Background(), plan.Namespace, plan.Key, plan.Owner, TeardownOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, action := range client.Actions() {
		if action.GetResource().Resource == "secrets" && (action.GetVerb() == "get" || action.GetVerb() == "list" || action.GetVerb() == "watch") {
			t.Errorf("teardown read Secrets (%s), which the runners' Role does not allow", action.GetVerb())
		}
	}
	if !slices.Contains(report.Deleted, "secret/"+secret.Name) {
		t.Errorf("report.Deleted = %v, want secret/%s", report.Deleted, secret.Name)
	}
	if _, err := client.CoreV1().Secrets(plan.Namespace).Get(context.Background(), secret.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Secret %s left after teardown (err %v)", secret.Name, err)
	}
	if _, err := client.CoreV1().Secrets(plan.Namespace).Get(context.Background(), other.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("another job's Secret: %v", err)
	}
}

// renderedSecret is plan's Secret as Provision would create it.
func renderedSecret(t *testing.T, plan Plan) *corev1.Secret {
	t.Helper()
	creds, err := IssueCredentials(plan)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := RenderSecret(plan, creds)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}
