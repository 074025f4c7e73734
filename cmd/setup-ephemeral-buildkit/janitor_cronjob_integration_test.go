package main

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// TestIntegrationJanitorCronJob installs deploy/ as shipped (kubectl apply -k through a team's
// overlay: its namespace, the admission policy kept to it) and lets the janitor CronJob run for
// real, from the CLI image under the name deploy/ gives it (ghcr.io/org/setup-ephemeral-buildkit,
// the tag the chart's appVersion): the local cluster's registry holds the image `make images`
// wrote, and the node resolves every registry name through it. Two jobs have builders; one is
// past its deadline. A run of the CronJob (`kubectl create job --from=cronjob/...`, as the
// manifest's header says to try it) removes the expired job's builders and keeps the live one's.
//
// One thing the overlay adds that a real cluster does not need: the local cluster has no
// kube-proxy, so the janitor's pod is pointed at the API server's bridge address.
func TestIntegrationJanitorCronJob(t *testing.T) {
	c := localcluster.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	in := newInstaller(ctx, t, c, "janitor-cron")
	admin, ns := in.admin, in.ns
	server, err := url.Parse(c.Info.Server)
	if err != nil || server.Port() == "" {
		t.Fatalf("API server URL %q: %v", c.Info.Server, err)
	}
	overlay := writeDeployOverlay(t, ns, c.Info.Images["buildkit"], fmt.Sprintf(`  - target: {kind: CronJob}
    patch: |
      - {op: add, path: /spec/jobTemplate/spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_HOST, value: %q}}
      - {op: add, path: /spec/jobTemplate/spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_PORT, value: %q}}
`, server.Hostname(), server.Port()))
	in.cleanup(t, "kubectl", "delete", "-k", overlay, "--ignore-not-found")
	in.run(ctx, t, "kubectl", "apply", "-k", overlay)

	cronName := "setup-ephemeral-buildkit-janitor-" + ns
	cron, err := admin.BatchV1().CronJobs(ns).Get(ctx, cronName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	image := cron.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Image
	if want := "ghcr.io/org/setup-ephemeral-buildkit:" + chartAppVersion(t); image != want {
		t.Fatalf("deploy/'s janitor runs %s, want %s (the chart's default)", image, want)
	}

	// Two jobs' builders, owned by a live runner pod: "expired" is then put past its deadline,
	// as max-lifetime would leave it (its shortest, a minute, is longer than this test wants).
	w := newFaultWorldIn(ctx, t, c, ns)
	// The job's token is bound to its runner pod, as the kubelet mounts it (the policy deploy/
	// installs refuses owned builders to a token bound to no pod).
	c.WritePodServiceAccountKubeconfig(ctx, t, w.runner, w.kubeconfig)
	for _, job := range []string{"expired", "live"} {
		w.mustUp(ctx, t, filepath.Join(w.dir, "state-"+job), job)
	}
	keys := builderKeys(ctx, t, w)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, k8sprov.AnnotationExpiresAt, past))
	sel := metav1.ListOptions{LabelSelector: k8sprov.JobSelector(k8sprov.JobKey(keys["expired"]))}
	pods, err := admin.CoreV1().Pods(ns).List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := admin.CoreV1().Secrets(ns).List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if _, err := admin.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range secrets.Items {
		if _, err := admin.CoreV1().Secrets(ns).Patch(ctx, s.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// Two cache volumes no builder holds: one last claimed 8 days ago, past the CronJob's
	// --cache-max-unused=168h, one an hour ago.
	cacheVolume := func(lineage string, lastUsed time.Time) string {
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{
				Name: k8sprov.CacheVolumeName(lineage, 0),
				Labels: map[string]string{k8sprov.LabelManagedBy: k8sprov.ManagedBy, k8sprov.LabelName: k8sprov.NameBuildkit,
					k8sprov.LabelCacheLineage: lineage, k8sprov.LabelCacheSlot: "0", k8sprov.LabelCacheTrust: "trusted"},
				Annotations: map[string]string{k8sprov.AnnotationCacheLastUsed: lastUsed.UTC().Format(time.RFC3339)},
			},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}
		if _, err := admin.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return pvc.Name
	}
	staleVolume := cacheVolume("00000000000000000001", time.Now().Add(-8*24*time.Hour))
	recentVolume := cacheVolume("00000000000000000002", time.Now().Add(-time.Hour))

	started := time.Now()
	in.run(ctx, t, "kubectl", "-n", ns, "create", "job", "--from=cronjob/"+cronName, "janitor-now")
	var job *batchv1.Job
	waitFor(ctx, t, "the janitor's Job to finish", func() bool {
		job, err = admin.BatchV1().Jobs(ns).Get(ctx, "janitor-now", metav1.GetOptions{})
		return err == nil && (job.Status.Succeeded > 0 || job.Status.Failed > 0)
	})
	log := in.run(ctx, t, "kubectl", "-n", ns, "logs", "job/janitor-now")
	if job.Status.Succeeded == 0 {
		t.Fatalf("the janitor's Job failed:\n%s", log)
	}
	t.Logf("the janitor ran from its image in %v", time.Since(started).Round(100*time.Millisecond))
	jobPods, err := admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=janitor-now"})
	if err != nil || len(jobPods.Items) != 1 {
		t.Fatalf("the janitor's pods: %v (%v)", jobPods, err)
	}
	st := jobPods.Items[0].Status.ContainerStatuses[0]
	t.Logf("janitor pod: image %s, image ID %s", st.Image, st.ImageID)
	if sc := jobPods.Items[0].Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("the janitor's pod security context %+v, want runAsUser 65532", sc)
	}

	for _, tc := range []struct {
		job      string
		wantGone bool
	}{{"expired", true}, {"live", false}} {
		key := keys[tc.job]
		if !strings.Contains(log, key) {
			t.Errorf("the janitor's log does not name job %s (key %s)", tc.job, key)
		}
		sel := metav1.ListOptions{LabelSelector: k8sprov.JobSelector(k8sprov.JobKey(key))}
		pods, err := admin.CoreV1().Pods(ns).List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		secrets, err := admin.CoreV1().Secrets(ns).List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		alive := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				alive++
			}
		}
		if gone := alive == 0 && len(secrets.Items) == 0; gone != tc.wantGone {
			t.Errorf("after the janitor: job %s has %d live builder pods and %d Secrets; want gone=%v", tc.job, alive, len(secrets.Items), tc.wantGone)
		}
	}
	for name, wantGone := range map[string]bool{staleVolume: true, recentVolume: false} {
		pvc, err := admin.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		gone := apierrors.IsNotFound(err) || err == nil && pvc.DeletionTimestamp != nil
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		if gone != wantGone || !strings.Contains(log, name) {
			t.Errorf("after the janitor: cache volume %s gone=%v, want %v (named in its log: %v)", name, gone, wantGone, strings.Contains(log, name))
		}
	}
	// The live job ends as jobs do.
	requireSuccess(t, "down", w.down(ctx, t, filepath.Join(w.dir, "state-live")))
	if err := admin.BatchV1().Jobs(ns).Delete(ctx, "janitor-now", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}); err != nil && !apierrors.IsNotFound(err) {
		t.Error(err)
	}
}

// builderKeys maps each job name (the --job-name of up) to its builders' job key.
func builderKeys(ctx context.Context, t *testing.T, w *faultWorld) map[string]string {
	t.Helper()
	pods, err := w.admin.CoreV1().Pods(w.ns).List(ctx, metav1.ListOptions{LabelSelector: k8sprov.ManagedSelector()})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, p := range pods.Items {
		keys[p.Annotations[k8sprov.AnnotationJobName]] = p.Labels[k8sprov.LabelJobKey]
	}
	return keys
}
