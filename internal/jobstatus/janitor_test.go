package jobstatus_test

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/jobstatus"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// The janitor (k8sprov.CollectGarbage) with the real checkers against local API servers: the
// builders of finished jobs are removed, those of running jobs kept, and an API error never
// removes anything.
func TestJanitorWithCheckers(t *testing.T) {
	const ns = "ci"
	now := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	gl := newAPIServer(t)
	gh := newAPIServer(t)
	gl.set("/api/v4/projects/group%2Fapp/jobs/101", http.StatusOK, gitlabJob(101, "success"))
	gl.set("/api/v4/projects/group%2Fapp/jobs/102", http.StatusOK, gitlabJob(102, "running"))
	gl.set("/api/v4/projects/group%2Fapp/jobs/103", http.StatusInternalServerError, `{"message":"500 Internal Server Error"}`)
	gl.set("/api/v4/projects/group%2Fapp/jobs/104", http.StatusUnauthorized, `{"message":"401 Unauthorized"}`)
	gh.set("/repos/org/app/actions/jobs/201", http.StatusOK, githubJob(201, "completed", "cancelled"))
	gh.set("/repos/org/app/actions/jobs/202", http.StatusOK, githubJob(202, "in_progress", ""))
	// 203 is not routed: 404.

	owner := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "runner-0", Namespace: ns, UID: "owner-uid"}}
	objects := []any{owner}
	jobs := map[string]cijob.Identity{
		"gitlab-success": {CIPlatform: "gitlab", Repository: "group/app", RunID: "6", JobID: "101", URL: gl.URL + "/group/app/-/jobs/101"},
		"gitlab-running": {CIPlatform: "gitlab", Repository: "group/app", RunID: "6", JobID: "102", URL: gl.URL + "/group/app/-/jobs/102"},
		"gitlab-500":     {CIPlatform: "gitlab", Repository: "group/app", RunID: "6", JobID: "103"},
		"gitlab-401":     {CIPlatform: "gitlab", Repository: "group/app", RunID: "6", JobID: "104"},
		"github-done":    {CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: "201"},
		"github-running": {CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: "202"},
		"github-404":     {CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: "203"},
		"shell":          {CIPlatform: "shell", Repository: "org/app", JobID: "local"},
	}
	names := map[k8sprov.JobKey]string{}
	for name, job := range jobs {
		key := k8sprov.KeyOf(job)
		names[key] = name
		labels := map[string]string{k8sprov.LabelManagedBy: k8sprov.ManagedBy, k8sprov.LabelJobKey: string(key), k8sprov.LabelName: k8sprov.NameBuildkit}
		annotations := map[string]string{
			k8sprov.AnnotationCIPlatform: job.CIPlatform, k8sprov.AnnotationRepository: job.Repository,
			k8sprov.AnnotationRunID: job.RunID, k8sprov.AnnotationRunAttempt: job.RunAttempt, k8sprov.AnnotationJobID: job.JobID,
			k8sprov.AnnotationJobURL: job.URL, k8sprov.AnnotationExpiresAt: now.Add(time.Hour).Format(time.RFC3339),
		}
		ref := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: owner.Name, UID: owner.UID}}
		objects = append(objects,
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "buildkit-" + string(key) + "-amd64", Namespace: ns, UID: types.UID("pod-" + key),
				Labels: labels, Annotations: annotations, OwnerReferences: ref}},
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "buildkit-" + string(key), Namespace: ns, UID: types.UID("secret-" + key),
				Labels: labels, Annotations: annotations, OwnerReferences: ref}},
		)
	}
	client := fake.NewClientset()
	for _, obj := range objects {
		var err error
		switch o := obj.(type) {
		case *corev1.Pod:
			_, err = client.CoreV1().Pods(ns).Create(context.Background(), o, metav1.CreateOptions{})
		case *corev1.Secret:
			_, err = client.CoreV1().Secrets(ns).Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	checker := jobstatus.Dispatcher{
		cijob.GitLab: gitlabChecker(t, gl, time.Second),
		cijob.GitHub: githubChecker(t, gh, time.Second),
	}
	prov := &k8sprov.Provisioner{Client: client, Now: func() time.Time { return now }}
	decisions, err := prov.CollectGarbage(context.Background(), ns, checker, false)
	if err == nil {
		t.Error("CollectGarbage reported no error for the failed API calls")
	} else {
		for _, want := range []error{jobstatus.ErrUnsupportedPlatform} {
			if !errors.Is(err, want) {
				t.Errorf("error %v is not %v", err, want)
			}
		}
	}
	deleted := map[string]bool{}
	for _, d := range decisions {
		if d.Delete {
			deleted[names[d.Key]] = true
		}
		t.Logf("%-15s delete=%-5v %s", names[d.Key], d.Delete, d.Reason)
	}
	want := map[string]bool{"gitlab-success": true, "github-done": true}
	for name := range jobs {
		if deleted[name] != want[name] {
			t.Errorf("%s: deleted = %v, want %v", name, deleted[name], want[name])
		}
	}

	pods, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, p := range pods.Items {
		left = append(left, names[k8sprov.JobKey(p.Labels[k8sprov.LabelJobKey])])
	}
	sort.Strings(left)
	wantLeft := []string{"github-404", "github-running", "gitlab-401", "gitlab-500", "gitlab-running", "shell"}
	if len(left) != len(wantLeft) {
		t.Fatalf("pods left for %v, want %v", left, wantLeft)
	}
	for i := range left {
		if left[i] != wantLeft[i] {
			t.Fatalf("pods left for %v, want %v", left, wantLeft)
		}
	}
	secrets, err := client.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != len(wantLeft) {
		t.Errorf("%d Secrets left, want %d", len(secrets.Items), len(wantLeft))
	}
}
