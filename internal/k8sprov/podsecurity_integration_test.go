package k8sprov

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestIntegrationPodSecurityRefusalIsDiagnosed provisions into a namespace that enforces the
// baseline Pod Security level: the error must name Pod Security, the level and the field, and
// what an administrator can do, not a missing RBAC rule; nothing may be left behind.
func TestIntegrationPodSecurityRefusalIsDiagnosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	ns, err := env.admin.CoreV1().Namespaces().Get(ctx, env.ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels["pod-security.kubernetes.io/enforce"] = "baseline"
	if _, err := env.admin.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	plan := env.plan(t, "podsecurity", Inputs{Platforms: "linux/amd64"})
	started := time.Now()
	_, err = env.provisioner(t).Provision(ctx, plan)
	t.Logf("after %s: %v", time.Since(started).Round(time.Millisecond), err)
	var pse *PodSecurityError
	if !errors.As(err, &pse) {
		t.Fatalf("got %T, want a PodSecurityError: %v", err, err)
	}
	msg := err.Error()
	for _, want := range []string{`"baseline:latest" level`, "privileged", "pod-security.kubernetes.io/enforce=privileged"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q", want)
		}
	}
	if strings.Contains(msg, "rbac.yaml") {
		t.Errorf("Pod Security refusal worded as RBAC denial")
	}
	pods, _ := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	secrets, _ := env.admin.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if len(pods.Items)+len(secrets.Items) != 0 {
		t.Errorf("left after the refusal: %d pods, %d Secrets", len(pods.Items), len(secrets.Items))
	}
}

// TestIntegrationPodSecurityLevelsAdmitBuilderModes measures the README's Pod Security table:
// for each level, a namespace enforcing it, and for each builder mode, whether the API server
// admits the rendered builder pod and, when it does not, that provisioning fails within seconds
// with a PodSecurityError naming the level and the fields.
func TestIntegrationPodSecurityLevelsAdmitBuilderModes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type cell struct {
		admitted bool
		// fields the refusal must name.
		fields []string
	}
	want := map[string]map[string]cell{
		"privileged": {"rootful": {admitted: true}, "rootless": {admitted: true}},
		"baseline": {
			"rootful":  {fields: []string{"privileged"}},
			"rootless": {fields: []string{"seccompProfile", "AppArmor"}},
		},
		"restricted": {
			"rootful":  {fields: []string{"privileged", "allowPrivilegeEscalation", "seccompProfile"}},
			"rootless": {fields: []string{"seccompProfile", "AppArmor", "allowPrivilegeEscalation", "capabilities"}},
		},
	}
	for _, level := range []string{"privileged", "baseline", "restricted"} {
		env := newJobEnv(t, ctx)
		ns, err := env.admin.CoreV1().Namespaces().Get(ctx, env.ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		ns.Labels["pod-security.kubernetes.io/enforce"] = level
		if _, err := env.admin.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, mode := range []string{"rootful", "rootless"} {
			in := Inputs{Platforms: "linux/amd64", Rootless: strconv.FormatBool(mode == "rootless")}
			plan := env.plan(t, "podsecurity-"+level+"-"+mode, in)
			_, pods := renderJob(t, plan)
			// Pod Security admission judges dry runs as it judges real requests.
			_, err := env.provisioner(t).Client.CoreV1().Pods(env.ns).Create(ctx, pods[0], dryRun)
			w := want[level][mode]
			if admitted := err == nil; admitted != w.admitted {
				t.Errorf("TABLE %s / %s: admitted %v (%v), want %v", level, mode, admitted, err, w.admitted)
				continue
			}
			if w.admitted {
				t.Logf("TABLE %s / %s: admitted", level, mode)
				continue
			}
			started := time.Now()
			_, err = env.provisioner(t).Provision(ctx, plan)
			took := time.Since(started)
			var pse *PodSecurityError
			if !errors.As(err, &pse) {
				t.Errorf("TABLE %s / %s: Provision returned %T, want a PodSecurityError: %v", level, mode, err, err)
				continue
			}
			msg := err.Error()
			for _, s := range append([]string{`"` + level + `:latest" level`, "pod-security.kubernetes.io/enforce=privileged"}, w.fields...) {
				if !strings.Contains(msg, s) {
					t.Errorf("TABLE %s / %s: the error lacks %q: %s", level, mode, s, msg)
				}
			}
			if took > 10*time.Second {
				t.Errorf("TABLE %s / %s: the refusal took %v, want seconds", level, mode, took)
			}
			t.Logf("TABLE %s / %s: refused after %v: %s", level, mode, took.Round(time.Millisecond), pse.Violations)
		}
	}
}
