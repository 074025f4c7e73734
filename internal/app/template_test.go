package app

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/org/setup-ephemeral-buildkit/internal/clustertemplate"
)

const testTemplate = `apiVersion: setup-ephemeral-buildkit.io/v1alpha1
kind: ClusterTemplate
resources:
  default: {requests: {memory: 1Gi}}
  maximum: {memory: 2Gi}
maxLifetime: {default: 1h}
platforms:
  linux/arm64:
    nodeSelector: {pool: arm}
    priorityClassName: ci-builds
jobInputs: [requests, limits]
`

func (w *world) addTemplate(name, content string) {
	w.t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.ns}, Data: map[string]string{clustertemplate.DataKey: content}}
	if _, err := w.client.CoreV1().ConfigMaps(w.ns).Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

func TestMainInheritsTheClusterTemplate(t *testing.T) {
	w, ctx := startedWorld(t)
	w.addTemplate(clustertemplate.DefaultName, testTemplate)
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatalf("Main: %v\n%s", err, w.stdout.String())
	}
	list, err := w.client.CoreV1().Pods(w.ns).List(ctx, metav1.ListOptions{LabelSelector: "setup-ephemeral-buildkit.io/arch=arm64"})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("arm64 pods: %v, %v", list, err)
	}
	pod := list.Items[0]
	c := pod.Spec.Containers[0]
	if c.Resources.Requests.Memory().String() != "1Gi" || c.Resources.Limits.Memory().String() != "2Gi" ||
		*pod.Spec.ActiveDeadlineSeconds != 3600 || pod.Spec.NodeSelector["pool"] != "arm" || pod.Spec.PriorityClassName != "ci-builds" {
		t.Errorf("the builder did not inherit the template: resources %v, deadline %d, selector %v, priority %q",
			c.Resources, *pod.Spec.ActiveDeadlineSeconds, pod.Spec.NodeSelector, pod.Spec.PriorityClassName)
	}
	if !strings.Contains(w.stdout.String(), "Cluster template: ci/setup-ephemeral-buildkit") {
		t.Errorf("the log does not name the template:\n%s", w.stdout.String())
	}
}

func TestMainRefusesInputsPastTheTemplateBeforeCreatingAnything(t *testing.T) {
	for _, tc := range []struct {
		name     string
		template string
		env      map[string]string
		want     []string
	}{
		{"limits", testTemplate, map[string]string{"INPUT_LIMITS": "memory=4Gi", "INPUT_IMAGE": "x.example/buildkit:1"}, []string{
			`input "limits": "memory=4Gi": above the maximum memory=2Gi of cluster template ci/setup-ephemeral-buildkit (resources.maximum)`,
			`input "image": "x.example/buildkit:1": cluster template ci/setup-ephemeral-buildkit does not let jobs set image`,
		}},
		{"malformed", testTemplate + "imagePullPolicy: Sometimes\nfoo: bar\n", nil, []string{
			"cluster template ci/setup-ephemeral-buildkit, line 13: field foo is not part of the schema",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.addTemplate(clustertemplate.DefaultName, tc.template)
			for k, v := range tc.env {
				w.env[k] = v
			}
			err := Main(context.Background(), w.github(), w.deps())
			if err == nil {
				t.Fatal("Main succeeded")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
			if pods, secrets := w.pods(), w.secrets(); len(pods)+len(secrets) > 0 {
				t.Errorf("created %v %v", pods, secrets)
			}
		})
	}
}

func TestMainTemplateNamedOrForbidden(t *testing.T) {
	// A Role without get on the default ConfigMap: a warning, the defaults.
	w := newWorld(t)
	w.client.PrependReactor("get", "configmaps", func(action k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, action.(k8stesting.GetAction).GetName(), nil)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w.startKubelet(ctx)
	if err := Main(ctx, w.github(), w.deps()); err != nil {
		t.Fatalf("Main with the template forbidden: %v", err)
	}
	if !strings.Contains(w.stdout.String(), "cannot read ConfigMap ci/setup-ephemeral-buildkit (forbidden), using the defaults") {
		t.Errorf("no warning:\n%s", w.stdout.String())
	}

	// A template the job names must be read.
	w = newWorld(t)
	w.client.PrependReactor("get", "configmaps", func(action k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, action.(k8stesting.GetAction).GetName(), nil)
	})
	w.env["INPUT_TEMPLATE"] = "other"
	err := Main(context.Background(), w.github(), w.deps())
	if err == nil || !strings.Contains(err.Error(), "reading cluster template ci/other (get configmaps other)") {
		t.Errorf("named template forbidden: %v", err)
	}
	w = newWorld(t)
	w.env["INPUT_TEMPLATE"] = "Not A Name"
	if err := Main(context.Background(), w.github(), w.deps()); err == nil || !strings.Contains(err.Error(), `input "template": "Not A Name"`) {
		t.Errorf("bad template name: %v", err)
	}
}
