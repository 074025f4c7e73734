package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/jobstatus"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/version"
)

func TestRunUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{nil, ExitUsage, "Usage: setup-ephemeral-buildkit COMMAND"},
		{[]string{"frobnicate"}, ExitUsage, "Commands:"},
		{[]string{"frobnicate"}, ExitUsage, `setup-ephemeral-buildkit: unknown command "frobnicate"`},
		{[]string{"up", "-h"}, ExitOK, "-run-attempt"},
		{[]string{"env", "stray"}, ExitUsage, "setup-ephemeral-buildkit: unexpected arguments: stray (env takes flags only)"},
		{[]string{"help"}, ExitOK, "Commands:"},
		{[]string{"version"}, ExitOK, "setup-ephemeral-buildkit v1.2.3 (commit "},
		{[]string{"--version"}, ExitOK, ", tested with BuildKit " + version.BuildKit + ", go1."},
		{[]string{"up", "-h"}, ExitOK, "-node-selector"},
		{[]string{"up", "extra"}, ExitUsage, "unexpected arguments"},
		{[]string{"gc", "--dry-run=maybe"}, ExitUsage, "invalid boolean"},
		{[]string{"up", "--rootless=1"}, ExitUsage, k8sprov.AcceptedBool},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			err := Run(context.Background(), tc.args, Deps{Getenv: func(string) string { return "" }, Stdout: &out, Stderr: &out, Version: "v1.2.3"})
			if code := ExitCode(err); code != tc.code {
				t.Errorf("exit code %d, want %d (err %v)", code, tc.code, err)
			}
			if !strings.Contains(out.String()+errText(err), tc.out) {
				t.Errorf("output lacks %q:\n%s\nerr: %v", tc.out, out.String(), err)
			}
		})
	}
}

// Boolean flags name their default once (flag.PrintDefaults adds it; the usage text must not).
func TestRunUpUsageNamesDefaultsOnce(t *testing.T) {
	var out bytes.Buffer
	_ = Run(context.Background(), []string{"up", "-h"}, Deps{Getenv: func(string) string { return "" }, Stdout: &out, Stderr: &out})
	if strings.Contains(out.String(), "(default true) (default true)") || strings.Contains(out.String(), "(default false) (default false)") {
		t.Errorf("a default printed twice:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "(default true)") {
		t.Errorf("no boolean default shown:\n%s", out.String())
	}
}

// A missing --kubeconfig file is named as missing, not reported as a configuration without contexts.
func TestNewKubeClientMissingKubeconfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.kubeconfig")
	_, err := NewKubeClient(missing, func(string) string { return "" }, "test")
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NewKubeClient(missing) = %v, want an error naming %s as not existing", err, missing)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestRunUpEnvDown(t *testing.T) {
	w, ctx := startedWorld(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	env := map[string]string{"TMPDIR": t.TempDir()}
	d := w.deps()
	d.Getenv = func(k string) string { return env[k] }
	var stdout, stderr bytes.Buffer
	d.Stdout, d.Stderr = &stdout, &stderr

	up := []string{"up", "--state-dir", stateDir, "--namespace", "ci", "--owner-pod", "runner-abc", "--platforms", "linux/amd64,linux/arm64", "--job-id", "local-1", "--use=false"}
	if err := Run(ctx, up, d); err != nil {
		t.Fatalf("up: %v\n%s", err, stderr.String())
	}
	exports := stdout.String()
	for _, s := range []string{"export BUILDX_CONFIG='" + stateDir, "export BUILDKIT_HOST='tcp://10.0.0.", "export EPHEMERAL_BUILDKIT_PLATFORMS='linux/amd64,linux/arm64'"} {
		if !strings.Contains(exports, s) {
			t.Errorf("up printed no %q:\n%s", s, exports)
		}
	}
	if strings.Contains(exports, "BUILDX_BUILDER") {
		t.Errorf("--use=false exported BUILDX_BUILDER:\n%s", exports)
	}
	pods := w.pods()
	if len(pods) != 2 {
		t.Fatalf("pods after up: %v", pods)
	}
	pod, err := w.client.CoreV1().Pods("ci").Get(ctx, pods[0], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Annotations[k8sprov.AnnotationCIPlatform] != "shell" || pod.Annotations[k8sprov.AnnotationJobID] != "local-1" {
		t.Errorf("pod annotations %v", pod.Annotations)
	}

	if err := Run(ctx, up, d); err == nil || !strings.Contains(err.Error(), "already up") {
		t.Errorf("second up = %v, want a refusal", err)
	}

	stdout.Reset()
	if err := Run(ctx, []string{"env", "--state-dir", stateDir}, d); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "export BUILDKIT_HOST='tcp://10.0.0.") {
		t.Errorf("env printed:\n%s", stdout.String())
	}

	// A state write an earlier, killed up left half done goes with the state.
	if err := os.WriteFile(filepath.Join(stateDir, ci.ShellStateFile+".123456"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Run(ctx, []string{"down", "--state-dir", stateDir}, d); err != nil {
		t.Fatalf("down: %v\n%s", err, stderr.String())
	}
	if pods, secrets := w.pods(), w.secrets(); len(pods)+len(secrets) > 0 {
		t.Errorf("left after down: pods %v, secrets %v", pods, secrets)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory left: %v", err)
	}
	if err := Run(ctx, []string{"env", "--state-dir", stateDir}, d); err == nil {
		t.Error("env after down succeeded")
	}
}

func TestRunGC(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	// One job whose runner pod is gone, one whose runner pod lives.
	for _, obj := range []struct{ name, key, owner, uid string }{
		{"buildkit-aaaa-amd64", "aaaa", "runner-old", "uid-old"},
		{"buildkit-bbbb-amd64", "bbbb", w.runner.Name, string(w.runner.UID)},
	} {
		_, err := w.client.CoreV1().Pods("ci").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: obj.name, Namespace: "ci",
			Labels:          map[string]string{k8sprov.LabelManagedBy: k8sprov.ManagedBy, k8sprov.LabelJobKey: obj.key},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: obj.owner, UID: typesUID(obj.uid)}},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	d := w.deps()
	var out bytes.Buffer
	d.Stdout = &out
	if err := Run(ctx, []string{"gc", "--namespace", "ci"}, d); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	if !strings.Contains(report, "aaaa") || !strings.Contains(report, "delete") || !strings.Contains(report, "owner pod runner-old (uid uid-old) is gone") {
		t.Errorf("gc report:\n%s", report)
	}
	if pods := w.pods(); len(pods) != 1 || pods[0] != "buildkit-bbbb-amd64" {
		t.Errorf("pods after gc: %v", pods)
	}
}

// finishedChecker says every job of its platform has finished; others are not its business.
type finishedChecker struct{ platform string }

func (c finishedChecker) JobFinished(_ context.Context, job cijob.Identity) (bool, error) {
	if job.CIPlatform != c.platform {
		return false, fmt.Errorf("platform %s: %w", job.CIPlatform, jobstatus.ErrUnsupportedPlatform)
	}
	return true, nil
}

func TestCollectGarbageAsksTheCISystem(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	for _, obj := range []struct{ name, key, platform string }{
		{"buildkit-gggg-amd64", "gggg", "github"},
		{"buildkit-ssss-amd64", "ssss", "shell"},
	} {
		_, err := w.client.CoreV1().Pods("ci").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: obj.name, Namespace: "ci",
			Labels:          map[string]string{k8sprov.LabelManagedBy: k8sprov.ManagedBy, k8sprov.LabelJobKey: obj.key},
			Annotations:     map[string]string{k8sprov.AnnotationCIPlatform: obj.platform, k8sprov.AnnotationJobID: "1"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: w.runner.Name, UID: w.runner.UID}},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	_, decisions, err := CollectGarbage(ctx, GCOptions{Namespace: "ci", Checker: finishedChecker{"github"}}, w.deps())
	if err != nil {
		t.Fatalf("a platform without a checker failed the janitor: %v", err)
	}
	if len(decisions) != 2 || !decisions[0].Delete || decisions[1].Delete {
		t.Errorf("decisions %+v", decisions)
	}
	if pods := w.pods(); len(pods) != 1 || pods[0] != "buildkit-ssss-amd64" {
		t.Errorf("pods after gc: %v", pods)
	}
}

// TestRunGCReportsOnlyWhatItKnows: when the builders cannot be listed (cluster unreachable, or
// gc run with the runners' Role, which may not list Secrets) gc says only that, and a refusal
// names the janitor's Role, not the runners'.
func TestRunGCReportsOnlyWhatItKnows(t *testing.T) {
	for _, tc := range []struct {
		name, verb, resource string
		err                  error
		want, notWant        []string
	}{
		{"unreachable", "list", "pods", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"),
			[]string{"listing managed builder pods", "connection refused"}, nil},
		{"runners' Role", "list", "secrets", apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "", errors.New("RBAC: no rule")),
			[]string{"may not list secrets", "deploy/janitor-cronjob.yaml"}, []string{"deploy/rbac.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.client.PrependReactor(tc.verb, tc.resource, func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, tc.err
			})
			d := w.deps()
			var out bytes.Buffer
			d.Stdout = &out
			err := Run(context.Background(), []string{"gc", "--namespace", "ci"}, d)
			if err == nil {
				t.Fatalf("gc succeeded; report:\n%s", out.String())
			}
			if strings.Contains(out.String(), "no builders") || strings.Contains(out.String(), "JOB KEY") {
				t.Errorf("gc reported on builders it could not list:\n%s", out.String())
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			for _, notWant := range tc.notWant {
				if strings.Contains(err.Error(), notWant) {
					t.Errorf("error %q says %q", err, notWant)
				}
			}
		})
	}
}

// TestRunDownRefused: down facing objects it is refused to delete (a pod no longer owned by the
// runner pod, a delete the API server forbids) says what it removed and what it left and why,
// never "everything", and does not promise that running it again helps.
func TestRunDownRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		refuse func(t *testing.T, w *world)
		want   string
	}{
		{"not owned by the runner pod", func(t *testing.T, w *world) {
			pod, err := w.client.CoreV1().Pods("ci").Get(context.Background(), w.pods()[0], metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pod.OwnerReferences[0].UID = "uid-someone-else"
			if _, err := w.client.CoreV1().Pods("ci").Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}, "not owned by runner pod runner-abc"},
		{"forbidden", func(t *testing.T, w *world) {
			w.client.PrependReactor("delete", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "x", errors.New("admission webhook denied"))
			})
		}, "may not delete pods"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, ctx := startedWorld(t)
			stateDir := filepath.Join(t.TempDir(), "state")
			d := w.deps()
			var stdout, stderr bytes.Buffer
			d.Stdout, d.Stderr = &stdout, &stderr
			up := []string{"up", "--state-dir", stateDir, "--namespace", "ci", "--owner-pod", "runner-abc", "--platforms", "linux/amd64", "--job-id", "local-1"}
			if err := Run(ctx, up, d); err != nil {
				t.Fatalf("up: %v\n%s", err, stderr.String())
			}
			tc.refuse(t, w)
			stderr.Reset()
			err := Run(ctx, []string{"down", "--state-dir", stateDir}, d)
			log := stderr.String()
			if err == nil {
				t.Fatalf("down succeeded though a pod was left:\n%s", log)
			}
			if strings.Contains(log, "everything it used") || strings.Contains(err.Error(), "run down again") {
				t.Errorf("down claims too much: %v\n%s", err, log)
			}
			if !strings.Contains(log, tc.want) || !strings.Contains(err.Error(), "will not change that") {
				t.Errorf("down does not say %q and that a rerun will not help: %v\n%s", tc.want, err, log)
			}
			if len(w.pods()) != 1 {
				t.Errorf("pods after down: %v", w.pods())
			}
			// The state is gone: down again has nothing to do, up may start afresh.
			stderr.Reset()
			if err := Run(ctx, []string{"down", "--state-dir", stateDir}, d); err != nil {
				t.Errorf("second down: %v\n%s", err, stderr.String())
			}
			if err := Run(ctx, up, d); err != nil && strings.Contains(err.Error(), "already up") {
				t.Errorf("up after down: %v", err)
			}
		})
	}
}
