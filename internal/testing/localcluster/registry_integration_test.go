package localcluster

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/testing/ociregistry"
)

// TestIntegrationRegistry checks the cluster's registry and the node's image resolution: the
// registry answers over TLS with the cluster's registry CA and holds the base images for both
// platforms, with configs that say so; a pod whose image is Docker Hub's debian runs, pulled by
// the node's containerd from the local registry; and a pod whose image exists nowhere fails to
// pull with the local registry's answer, which shows that the name was resolved here.
func TestIntegrationRegistry(t *testing.T) {
	c := ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	reg, err := ociregistry.NewClient(c.Info.Registry, c.Info.RegistryCAFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Info.BaseImages) == 0 {
		t.Fatal("the cluster pushed no base images (make images writes them)")
	}
	for _, name := range c.Info.BaseImages {
		repo, tag, err := ociregistry.RepoTag(name)
		if err != nil {
			t.Fatal(err)
		}
		imgs, err := reg.Platforms(ctx, repo, tag)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := ociregistry.CheckPlatforms(imgs, []string{"linux/amd64", "linux/arm64"}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Without the CA, TLS is refused: the registry is not plain HTTP, nor trusted by accident.
	if _, _, err := (&ociregistry.Client{Base: reg.Base, HTTP: &http.Client{Timeout: 10 * time.Second}}).Manifest(ctx, "library/debian", "bookworm"); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without the registry's CA: %v, want a certificate error", err)
	}

	client := kubernetes.NewForConfigOrDie(c.AdminConfig())
	ns := c.CreateNamespace(ctx, t, "registry")
	pod := func(name, image string) {
		t.Helper()
		_, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{
				AutomountServiceAccountToken:  ptr.To(false),
				TerminationGracePeriodSeconds: ptr.To[int64](0),
				Containers: []corev1.Container{{
					Name: "main", Image: image, ImagePullPolicy: corev1.PullAlways,
					Command: []string{"sleep", "300"},
				}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating pod %s: %v", name, err)
		}
	}
	const nowhere = "registry.example.invalid/no/such-image:1"
	pod("debian", "docker.io/library/debian:bookworm-slim")
	pod("nowhere", nowhere)

	if _, err := waitForPod(ctx, client, ns, "debian", func(p *corev1.Pod) (bool, error) {
		return p.Status.Phase == corev1.PodRunning, nil
	}); err != nil {
		t.Errorf("the debian pod never ran: %v", err)
	}
	p, err := waitForPod(ctx, client, ns, "nowhere", func(p *corev1.Pod) (bool, error) {
		for _, s := range p.Status.ContainerStatuses {
			if w := s.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
				return true, nil
			}
		}
		return p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("the pod of an image that exists nowhere: %v", err)
	}
	msg := p.Status.ContainerStatuses[0].State.Waiting.Message
	// containerd asked the local registry, which said it has no such manifest: not a failed DNS
	// lookup or connection, which would mean the name went to the host's resolver.
	if !strings.Contains(msg, "not found") || strings.Contains(msg, "lookup") || strings.Contains(msg, "dial tcp") {
		t.Errorf("the pull of %s failed with %q; want the local registry's not found", nowhere, msg)
	}
	logData, err := os.ReadFile(filepath.Join(c.StateDir, "logs", "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logData), "/v2/no/such-image/manifests/1") {
		t.Errorf("the registry's log has no request for no/such-image:1")
	}
}
