package k8sprov

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestIntegrationKilledAttemptsSecretIsFoundWithoutState is issue 14 item 5: a main step killed
// after it created its Secret and before it saved its state. The retry knows nothing of it (no
// EarlierSecrets) and the runner's ServiceAccount may not read Secrets, yet the retry removes it,
// whether the killed attempt got as far as creating its pods or not, and a teardown that has no
// Secret recorded leaves nothing either.
func TestIntegrationKilledAttemptsSecretIsFoundWithoutState(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	runner := kubernetes.NewForConfigOrDie(env.saConfig)
	if _, err := runner.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the runner's ServiceAccount listed Secrets (err %v): the test would prove nothing", err)
	}
	for _, tc := range []struct {
		name     string
		withPods bool
	}{{"killed-before-creating-pods", false}, {"killed-after-creating-pods", true}} {
		t.Run(tc.name, func(t *testing.T) {
			plan := env.plan(t, tc.name, Inputs{Platforms: "linux/amd64"})
			prov := env.provisioner(t)
			var killed ObjectRef
			if tc.withPods {
				first, err := prov.Provision(ctx, plan)
				if err != nil {
					t.Fatalf("first attempt: %v", err)
				}
				killed = first.Secret
			} else {
				created, err := runner.CoreV1().Secrets(env.ns).Create(ctx, renderedSecret(t, plan), metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				killed = ObjectRef{Name: created.Name, UID: created.UID}
			}
			// The retry: a new process, a new plan of the same job, no state.
			retryPlan := env.plan(t, tc.name, Inputs{Platforms: "linux/amd64"})
			second, err := env.provisioner(t).Provision(ctx, retryPlan)
			if err != nil {
				t.Fatalf("retry without state: %v", err)
			}
			if got, err := env.admin.CoreV1().Secrets(env.ns).Get(ctx, killed.Name, metav1.GetOptions{}); err == nil && got.UID == killed.UID {
				t.Errorf("the killed attempt's Secret %s is still there after the retry", killed.Name)
			}
			if tc.withPods && second.Secret.Name == killed.Name {
				t.Errorf("the retry reuses the name %s that the killed attempt's pod mounted", killed.Name)
			}
			// The post step lost its state too: teardown by job key alone.
			if _, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Wait: true}); err != nil {
				t.Fatal(err)
			}
			assertNothingLeft(t, ctx, env, plan)
		})
	}
}
