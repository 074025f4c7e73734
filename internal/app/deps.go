package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/org/setup-ephemeral-buildkit/internal/buildx"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// Deps is everything the flow uses from outside itself. DefaultDeps returns the real ones; tests
// replace any of them. Nil functions fall back to the real implementation.
type Deps struct {
	// Getenv reads the environment (owner discovery, KUBECONFIG, GitHub's variables).
	Getenv func(string) string
	// Stdout and Stderr are the CLI's streams: exports and reports go to Stdout, logs to Stderr.
	// The GitHub adapter writes to the runner through its own writer.
	Stdout, Stderr io.Writer
	// Hostname is the machine's host name; a pod's is its name.
	Hostname func() (string, error)
	// Now is the clock.
	Now func() time.Time
	// ReadFile reads files: buildkitd-config and, in owner discovery, the service-account
	// namespace file.
	ReadFile func(string) ([]byte, error)
	// Kube returns the Kubernetes client for the kubeconfig input ("" means in-cluster, else
	// KUBECONFIG or ~/.kube/config).
	Kube func(ctx context.Context, kubeconfig string) (*KubeClient, error)
	// Runner runs the docker CLI for buildx.
	Runner buildx.Runner
	// Docker is the docker CLI program; empty means "docker" from PATH.
	Docker string
	// Arch is the runner's own architecture (GOARCH), the default platform's.
	Arch string
	// Version is the program's version, for the log.
	Version string

	// Verify and VerifyInterval replace the provisioner's gRPC readiness check (tests with fake
	// clusters); nil means the real ListWorkers over mutual TLS.
	Verify         func(ctx context.Context, endpoint string, tlsConfig *tls.Config) (k8sprov.WorkerReport, error)
	VerifyInterval time.Duration
}

// KubeClient is a Kubernetes client and what its configuration says about the namespace.
type KubeClient struct {
	Client kubernetes.Interface
	// Namespace is the namespace of the kubeconfig's current context, or "" when it sets none.
	Namespace string
	// Source says where the configuration came from, for the log.
	Source string
}

// DefaultDeps returns the real dependencies: the process environment, standard streams, the
// wall clock, client-go and child processes.
func DefaultDeps(version string) Deps {
	return Deps{
		Getenv:   os.Getenv,
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
		Hostname: os.Hostname,
		Now:      time.Now,
		ReadFile: os.ReadFile,
		Runner:   buildx.ExecRunner{},
		Arch:     runtime.GOARCH,
		Version:  version,
	}
}

// withDefaults fills every unset dependency with the real one.
func (d Deps) withDefaults() Deps {
	if d.Getenv == nil {
		d.Getenv = os.Getenv
	}
	if d.Stdout == nil {
		d.Stdout = os.Stdout
	}
	if d.Stderr == nil {
		d.Stderr = os.Stderr
	}
	if d.Hostname == nil {
		d.Hostname = os.Hostname
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.ReadFile == nil {
		d.ReadFile = os.ReadFile
	}
	if d.Kube == nil {
		getenv := d.Getenv
		version := d.Version
		d.Kube = func(_ context.Context, kubeconfig string) (*KubeClient, error) {
			return NewKubeClient(kubeconfig, getenv, version)
		}
	}
	if d.Runner == nil {
		d.Runner = buildx.ExecRunner{}
	}
	if d.Arch == "" {
		d.Arch = runtime.GOARCH
	}
	if d.Version == "" {
		d.Version = "dev"
	}
	return d
}

// NewKubeClient builds the client the flow uses, from the first of: the kubeconfig file given
// explicitly, the pod's service account (in-cluster), KUBECONFIG, ~/.kube/config.
func NewKubeClient(kubeconfig string, getenv func(string) string, version string) (*KubeClient, error) {
	var (
		cfg    *rest.Config
		kc     = &KubeClient{}
		err    error
		reason string
	)
	switch {
	case kubeconfig != "":
		kc.Source = "kubeconfig " + kubeconfig
		reason = "loading the kubeconfig input " + kubeconfig
		// clientcmd skips a missing file silently and then reports an empty configuration.
		if _, err = os.Stat(kubeconfig); err == nil {
			cfg, kc.Namespace, err = loadKubeconfig([]string{kubeconfig})
		}
	case getenv("KUBERNETES_SERVICE_HOST") != "" && getenv("KUBERNETES_SERVICE_PORT") != "":
		cfg, err = rest.InClusterConfig()
		kc.Source = "the pod's service account (in-cluster)"
		reason = "loading the in-cluster configuration"
	default:
		var paths []string
		if env := getenv(clientcmd.RecommendedConfigPathEnvVar); env != "" {
			paths = filepath.SplitList(env)
			kc.Source = clientcmd.RecommendedConfigPathEnvVar + "=" + env
		} else {
			paths = []string{clientcmd.RecommendedHomeFile}
			kc.Source = clientcmd.RecommendedHomeFile
		}
		cfg, kc.Namespace, err = loadKubeconfig(paths)
		reason = "loading " + kc.Source + " (no kubeconfig input, not running in a pod with a service account)"
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", reason, err)
	}
	cfg.UserAgent = "setup-ephemeral-buildkit/" + version
	cfg.QPS, cfg.Burst = 50, 100
	kc.Client, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the Kubernetes client from %s: %w", kc.Source, err)
	}
	return kc, nil
}

// loadKubeconfig reads kubeconfig files (merged in order) and returns the current context's
// client configuration and namespace.
func loadKubeconfig(paths []string) (*rest.Config, string, error) {
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: paths}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	raw, err := loader.RawConfig()
	if err != nil {
		return nil, "", err
	}
	if len(raw.Contexts) == 0 {
		return nil, "", errors.New("no contexts in the kubeconfig")
	}
	cfg, err := loader.ClientConfig()
	if err != nil {
		return nil, "", err
	}
	namespace := ""
	if current, ok := raw.Contexts[raw.CurrentContext]; ok {
		namespace = current.Namespace
	}
	return cfg, namespace, nil
}
