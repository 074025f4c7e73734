package localcluster

import (
	"context"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// CreateNamespace creates a namespace named prefix-<random>, deletes it when the test ends, and
// returns once its default ServiceAccount exists (the ServiceAccount admission plugin rejects
// pods until then).
func (c *Cluster) CreateNamespace(ctx context.Context, t testing.TB, prefix string) string {
	t.Helper()
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	ns, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	w, err := admin.CoreV1().ServiceAccounts(ns.Name).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "default").String()})
	if err != nil {
		t.Fatalf("watching serviceaccounts: %v", err)
	}
	defer w.Stop()
	if _, err := admin.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{}); err == nil {
		return ns.Name
	}
	for ev := range w.ResultChan() {
		if ev.Type == watch.Added {
			return ns.Name
		}
	}
	t.Fatalf("default serviceaccount never appeared in %s: %v", ns.Name, ctx.Err())
	return ""
}

// ApplyShippedRBAC creates ServiceAccount sa in ns and the Role and RoleBinding of the manifest
// at rbacPath (the project's deploy/rbac.yaml) bound to it, so a test runs with exactly the
// rights users grant their runners.
func (c *Cluster) ApplyShippedRBAC(ctx context.Context, t testing.TB, ns, sa, rbacPath string) {
	t.Helper()
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	data, err := os.ReadFile(rbacPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "Role":
			var role rbacv1.Role
			if err := yaml.UnmarshalStrict([]byte(doc), &role); err != nil {
				t.Fatal(err)
			}
			if _, err := admin.RbacV1().Roles(ns).Create(ctx, &role, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		case "RoleBinding":
			var binding rbacv1.RoleBinding
			if err := yaml.UnmarshalStrict([]byte(doc), &binding); err != nil {
				t.Fatal(err)
			}
			binding.Subjects[0].Name = sa
			binding.Subjects[0].Namespace = ns
			if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// WriteServiceAccountKubeconfig writes to path a kubeconfig that authenticates as ServiceAccount
// sa with a fresh token, its context's namespace ns, as a pod's own service account would.
func (c *Cluster) WriteServiceAccountKubeconfig(ctx context.Context, t testing.TB, ns, sa, path string) {
	t.Helper()
	cfg, err := c.ServiceAccountConfig(ctx, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	writeKubeconfig(t, cfg, ns, sa, path)
}

// WritePodServiceAccountKubeconfig writes to path a kubeconfig that authenticates as pod's
// ServiceAccount with a token bound to pod (see PodServiceAccountConfig): what a job inside that
// pod holds.
func (c *Cluster) WritePodServiceAccountKubeconfig(ctx context.Context, t testing.TB, pod *corev1.Pod, path string) {
	t.Helper()
	cfg, err := c.PodServiceAccountConfig(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	writeKubeconfig(t, cfg, pod.Namespace, pod.Spec.ServiceAccountName, path)
}

func writeKubeconfig(t testing.TB, cfg *rest.Config, ns, sa, path string) {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthority: cfg.TLSClientConfig.CAFile}
	kc.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts[sa] = &clientcmdapi.Context{Cluster: "local", AuthInfo: sa, Namespace: ns}
	kc.CurrentContext = sa
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

// CreateRunnerPod creates a stand-in for a CI runner pod: the pause image, running as
// ServiceAccount sa, so builders can be owned by it and tests can delete it like a dying runner.
func (c *Cluster) CreateRunnerPod(ctx context.Context, t testing.TB, ns, name, sa string) *corev1.Pod {
	t.Helper()
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "runner", Image: c.Info.Images["pause"], ImagePullPolicy: corev1.PullNever}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating runner pod %s/%s: %v", ns, name, err)
	}
	return pod
}
