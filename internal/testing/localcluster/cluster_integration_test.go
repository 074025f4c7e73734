package localcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// TestIntegrationEnvironment proves the local cluster does what every other real-cluster test
// relies on: a privileged buildkitd pod owned by another pod becomes Ready, the host reaches it
// over TCP and builds a Dockerfile with a RUN step for amd64 and (emulated) arm64, and deleting
// the owner makes the garbage collector remove the pod and the kubelet stop its container, while
// the bridge keeps its address.
func TestIntegrationEnvironment(t *testing.T) {
	c := ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	client := kubernetes.NewForConfigOrDie(c.AdminConfig())
	ns := c.CreateNamespace(ctx, t, "env")

	owner, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "runner"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "runner", Image: c.Info.Images["pause"], ImagePullPolicy: corev1.PullNever}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating owner pod: %v", err)
	}
	builder, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "buildkitd",
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: owner.Name, UID: owner.UID,
			}},
		},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](5),
			Containers: []corev1.Container{{
				Name:            "buildkitd",
				Image:           c.Info.Images["buildkit"],
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"--addr", "unix:///run/buildkit/buildkitd.sock", "--addr", "tcp://0.0.0.0:1234"},
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"buildctl", "debug", "workers"}}},
					PeriodSeconds: 1,
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "state", MountPath: "/var/lib/buildkit"}},
			}},
			Volumes: []corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating buildkitd pod: %v", err)
	}
	ready, err := waitForPod(ctx, client, ns, builder.Name, func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod failed: %s", p.Status.Message)
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("waiting for buildkitd to be ready: %v", err)
	}
	addr := "tcp://" + ready.Status.PodIP + ":1234"

	workers, err := exec.CommandContext(ctx, "buildctl", "--addr", addr, "debug", "workers", "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("buildctl debug workers from the host: %v\n%s", err, workers)
	}
	for _, platform := range []string{"linux/amd64", "linux/arm64"} {
		if !strings.Contains(string(workers), platform) {
			t.Errorf("worker platforms do not include %s:\n%s", platform, workers)
		}
	}

	for _, arch := range []string{"amd64", "arm64"} {
		t.Run("build-"+arch, func(t *testing.T) {
			dir := t.TempDir()
			build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "archprobe"), "./testdata/archprobe")
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("building the probe for %s: %v\n%s", arch, err, out)
			}
			dockerfile := "FROM scratch\nCOPY archprobe /archprobe\nRUN [\"/archprobe\", \"/result\"]\n"
			if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			cmd := exec.CommandContext(ctx, "buildctl", "--addr", addr, "build", "--frontend", "dockerfile.v0",
				"--local", "context="+dir, "--local", "dockerfile="+dir, "--opt", "platform=linux/"+arch,
				"--output", "type=local,dest="+out)
			if log, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("buildctl build for %s: %v\n%s", arch, err, log)
			}
			got, err := os.ReadFile(filepath.Join(out, "result"))
			if err != nil {
				t.Fatalf("the RUN step left no result: %v", err)
			}
			if strings.TrimSpace(string(got)) != "linux/"+arch {
				t.Fatalf("RUN step reported %q, want linux/%s", got, arch)
			}
		})
	}

	// Deleting the owner must make the garbage collector delete the builder, and the kubelet must
	// then stop its container.
	if err := client.CoreV1().Pods(ns).Delete(ctx, owner.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatalf("deleting owner: %v", err)
	}
	if err := waitForPodGone(ctx, client, ns, builder.Name); err != nil {
		t.Fatalf("garbage collector did not remove the builder: %v", err)
	}
	for {
		pids := podProcesses(string(ready.UID))
		if len(pids) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container processes of the deleted builder still run: %v", pids)
		case <-time.After(200 * time.Millisecond):
		}
	}

	// Pods came and went on the bridge: its address (the pods' gateway to the node) stayed the
	// one set at start. A bridge that took its ports' lowest address would have changed it
	// under the other pods, cutting them off from the API server until their ARP entry expired.
	// addr_assign_type 3 is NET_ADDR_SET: set by hand, not taken from a port.
	for file, want := range map[string]string{"address": bridgeMAC, "addr_assign_type": "3"} {
		got, err := os.ReadFile(filepath.Join("/sys/class/net", bridgeName, file))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(got)) != want {
			t.Errorf("bridge %s: %s is %q after pods came and went, want %q", bridgeName, file, strings.TrimSpace(string(got)), want)
		}
	}
}

// podProcesses lists processes whose cgroup belongs to the pod with the given UID.
func podProcesses(uid string) []string {
	var pids []string
	matches, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err == nil && strings.Contains(string(data), "pod"+uid) {
			pids = append(pids, strings.Split(m, "/")[2])
		}
	}
	return pids
}

// waitForPod watches one pod until done says so, returns an error, or ctx ends.
func waitForPod(ctx context.Context, client kubernetes.Interface, ns, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	selector := fields.OneTermEqualSelector("metadata.name", name).String()
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		return nil, err
	}
	if len(list.Items) == 1 {
		if ok, err := done(&list.Items[0]); ok || err != nil {
			return &list.Items[0], err
		}
	}
	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: selector, ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, fmt.Errorf("watch on pod %s/%s closed", ns, name)
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				continue
			}
			if ok, err := done(pod); ok || err != nil {
				return pod, err
			}
		}
	}
}

func waitForPodGone(ctx context.Context, client kubernetes.Interface, ns, name string) error {
	selector := fields.OneTermEqualSelector("metadata.name", name).String()
	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		return err
	}
	defer w.Stop()
	if _, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("watch closed")
			}
			if ev.Type == watch.Deleted {
				return nil
			}
		}
	}
}
