package k8sprov

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// ServiceAccountNamespaceFile is where a pod's own namespace is mounted with its token.
const ServiceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// OwnerLookup is what owner discovery may consult. Every source is injected so tests need no
// environment, files or hostname of their own.
type OwnerLookup struct {
	// Selection is the user's choice: an explicit name, none, or discovery.
	Selection OwnerSelection
	// Namespace is the explicit namespace input; empty means discover.
	Namespace string
	// Candidates are the names the CI system gives the runner pod, best first (the CI adapter's
	// RunnerCandidates: ACTIONS_RUNNER_POD_NAME, RUNNER_NAME on GitHub).
	Candidates []cijob.RunnerCandidate
	// Getenv reads the environment: the Kubernetes downward API's conventional POD_NAME and
	// POD_NAMESPACE, which any pod may set whatever CI system runs in it.
	Getenv func(string) string
	// Hostname is the machine's hostname (a pod's hostname is its name).
	Hostname string
	// ReadFile reads ServiceAccountNamespaceFile; nil means os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// KubeconfigNamespace is the namespace of the kubeconfig's current context, the last resort.
	KubeconfigNamespace string
}

// OwnerNotFoundError says which candidates were tried for the runner pod and why each failed.
type OwnerNotFoundError struct {
	Namespace string
	Tried     []string
}

func (e *OwnerNotFoundError) Error() string {
	return fmt.Sprintf("runner pod not found in namespace %q; tried: %s. Set the %s input to the runner pod's name, "+
		"or to \"none\" when the runner does not run in this cluster (cleanup then relies on the pod deadline and the janitor)",
		e.Namespace, strings.Join(e.Tried, "; "), InputOwnerPod)
}

// ResolveNamespace picks the builders' namespace: explicit, POD_NAMESPACE, the in-cluster
// service-account namespace file, the kubeconfig context. It says where the answer came from.
func ResolveNamespace(l OwnerLookup) (namespace, source string, err error) {
	if l.Namespace != "" {
		return l.Namespace, "the namespace input", nil
	}
	getenv := l.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if ns := strings.TrimSpace(getenv("POD_NAMESPACE")); ns != "" {
		return ns, "POD_NAMESPACE", nil
	}
	read := l.ReadFile
	if read == nil {
		read = os.ReadFile
	}
	if data, err := read(ServiceAccountNamespaceFile); err == nil && strings.TrimSpace(string(data)) != "" {
		return strings.TrimSpace(string(data)), ServiceAccountNamespaceFile, nil
	}
	if l.KubeconfigNamespace != "" {
		return l.KubeconfigNamespace, "the kubeconfig context", nil
	}
	return "", "", errors.New("no namespace: set the namespace input, or POD_NAMESPACE, or run in a pod with a service account, " +
		"or use a kubeconfig context with a namespace")
}

// ResolveOwner finds the runner pod that will own the builders, in this order: the explicit
// name, the CI system's candidates, POD_NAME, then the hostname; the first that names an
// existing pod wins. Its UID is read from the API; an explicit name that does not exist is an error,
// not a fallback. It returns nil when the selection is none.
func ResolveOwner(ctx context.Context, client kubernetes.Interface, namespace string, l OwnerLookup) (*RunnerPod, error) {
	if l.Selection.None {
		return nil, nil
	}
	getenv := l.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var candidates []cijob.RunnerCandidate
	if l.Selection.Name != "" {
		candidates = []cijob.RunnerCandidate{{Name: l.Selection.Name, Source: "the " + InputOwnerPod + " input"}}
	} else {
		candidates = append(candidates, l.Candidates...)
		if v := strings.TrimSpace(getenv("POD_NAME")); v != "" {
			candidates = append(candidates, cijob.RunnerCandidate{Name: v, Source: "POD_NAME"})
		}
		if l.Hostname != "" {
			candidates = append(candidates, cijob.RunnerCandidate{Name: l.Hostname, Source: "the hostname"})
		}
	}
	notFound := &OwnerNotFoundError{Namespace: namespace}
	if len(candidates) == 0 {
		notFound.Tried = []string{InputOwnerPod + " input (empty)", "the CI system's runner names (none)", "POD_NAME (unset)", "hostname (unknown)"}
		return nil, notFound
	}
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c.Name] {
			continue
		}
		seen[c.Name] = true
		pod, err := client.CoreV1().Pods(namespace).Get(ctx, c.Name, metav1.GetOptions{})
		switch {
		case err == nil:
			if pod.DeletionTimestamp != nil {
				notFound.Tried = append(notFound.Tried, fmt.Sprintf("%s=%q (being deleted)", c.Source, c.Name))
				continue
			}
			return &RunnerPod{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, Annotations: pod.Annotations}, nil
		case apierrors.IsNotFound(err):
			notFound.Tried = append(notFound.Tried, fmt.Sprintf("%s=%q (no such pod)", c.Source, c.Name))
		default:
			return nil, explainAPIError(err, "get", "pods", namespace, fmt.Sprintf("looking up runner pod %q (from %s)", c.Name, c.Source))
		}
	}
	return nil, notFound
}
