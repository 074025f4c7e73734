package k8sprov

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Fixed facts of every builder pod.
const (
	// BuildkitPort is where buildkitd serves mutual TLS on the pod IP.
	BuildkitPort = 1234
	// ContainerName is the name of the buildkitd container, for logs and diagnosis.
	ContainerName = "buildkitd"
	// SocketAddress is buildkitd's local unix socket, used by the readiness probe; it needs no
	// TLS and is not reachable from outside the container.
	SocketAddress = "unix:///run/buildkit/buildkitd.sock"

	socketDir       = "/run/buildkit"
	configDir       = "/etc/buildkit"
	tlsDir          = configDir + "/tls"
	configFile      = configDir + "/buildkitd.toml"
	rootfulStateDir = "/var/lib/buildkit"
	// rootlessStateDir is where the rootless image keeps BuildKit's state; an emptyDir there
	// avoids the image's VOLUME, which fails on nodes that mount it nosuid,nodev.
	rootlessStateDir = "/home/user/.local/share/buildkit"
	// rootlessUID is the user the rootless image is built for; it cannot be changed without
	// rebuilding the image.
	rootlessUID = 1000

	volumeState  = "buildkit-state"
	volumeSocket = "buildkit-run"
	volumeConfig = "buildkit-config"
)

// Keys of the Secret. The CA certificate and, if given, buildkitd.toml are shared; each builder has
// its own server key pair under its platform's slug, and its pod mounts only its own.
const (
	SecretKeyCA     = "ca.pem"
	SecretKeyConfig = "buildkitd.toml"
)

// SecretKeyCert is the Secret key of the server certificate of p's builder.
func SecretKeyCert(p platform.Platform) string { return p.Slug() + ".cert.pem" }

// SecretKeyKey is the Secret key of the server private key of p's builder.
func SecretKeyKey(p platform.Platform) string { return p.Slug() + ".key.pem" }

// Endpoint returns the BuildKit address of a builder pod with the given IP, "tcp://IP:1234"
// (IPv6 addresses in brackets).
func Endpoint(podIP string) string {
	return "tcp://" + net.JoinHostPort(podIP, strconv.Itoa(BuildkitPort))
}

// RenderSecret returns the job's Secret: the CA certificate, every builder's server key pair and,
// if set, buildkitd.toml, owned by the runner pod. It is immutable (nothing updates it, and the
// kubelet then need not watch it); a retried job replaces it.
//
// buildkitd.toml lives in this Secret rather than in a ConfigMap: one object to create, own and
// delete per job, one less resource in the Role the runners need, and every builder's files
// arrive in one volume. It may hold registry mirrors' settings that are nobody else's business.
func RenderSecret(p Plan, creds *Credentials) (*corev1.Secret, error) {
	if creds == nil || len(creds.CACertPEM) == 0 {
		return nil, errors.New("rendering secret: no CA certificate")
	}
	data := map[string][]byte{SecretKeyCA: creds.CACertPEM}
	for _, pl := range p.Platforms {
		pair, ok := creds.Servers[pl]
		if !ok || len(pair.CertPEM) == 0 || len(pair.KeyPEM) == 0 {
			return nil, fmt.Errorf("rendering secret: no server certificate for %s", pl)
		}
		data[SecretKeyCert(pl)] = pair.CertPEM
		data[SecretKeyKey(pl)] = pair.KeyPEM
	}
	if p.Options.BuildkitdConfig != "" {
		data[SecretKeyConfig] = []byte(p.Options.BuildkitdConfig)
	}
	for name, content := range p.Options.BuildkitdFiles {
		data[name] = content
	}
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:            p.SecretName(),
			Namespace:       p.Namespace,
			Labels:          p.labels(),
			Annotations:     p.annotations(),
			OwnerReferences: p.ownerReferences(),
		},
		Type:      corev1.SecretTypeOpaque,
		Immutable: ptr.To(true),
		Data:      data,
	}, nil
}

// RenderPod returns the builder pod for platform pl.
//
// The pod runs buildkitd listening on a unix socket (for the readiness probe) and on
// tcp://0.0.0.0:1234 with mutual TLS (for the job), with its state in an emptyDir, or on the
// cache volume the plan names for pl (then with buildkitd's garbage collection sized to it). It is
// scheduled by nodeSelector on nodes of pl's architecture (see Options.ScheduleFor), owned by the
// runner pod, ends at the latest after MaxLifetime (activeDeadlineSeconds), gets no service
// account token and no service links, and is never restarted: a builder that died has lost its
// state and running builds, and failing visibly is better than a silent fresh start mid-job.
//
// Rootful (the default) runs a privileged container, as BuildKit's own Kubernetes examples do.
// Rootless runs the -rootless image as user 1000 with seccomp and AppArmor unconfined (needed for
// the user namespaces rootlesskit creates) and BuildKit's --oci-worker-no-process-sandbox; the
// nodes must allow unprivileged user namespaces, and the namespace's Pod Security level must be
// privileged, since baseline forbids unconfined profiles.
//
// The container keeps the image's entrypoint (buildkitd, or rootlesskit buildkitd) and only sets
// its arguments.
func RenderPod(p Plan, pl platform.Platform) (*corev1.Pod, error) {
	if !slices.Contains(p.Platforms, pl) {
		return nil, fmt.Errorf("rendering pod: platform %s is not in the plan (%s)", pl, platform.FormatList(p.Platforms))
	}
	opts := p.Options
	labels := p.labels()
	labels[LabelArch] = pl.Slug()
	annotations := p.annotations()
	annotations[AnnotationPlatform] = pl.String()
	nodeSelector, tolerations := opts.ScheduleFor(pl)
	claim := p.CacheVolumes[pl]
	args, configItems := buildkitdArgs(opts, pl, claim != "")
	stateVolume := corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	if claim != "" {
		stateVolume = corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}
		annotations[AnnotationCacheVolume] = claim
	}
	container := buildkitdContainer(opts, args)
	podSecurity, secretMode := securityContexts(opts, &container)
	scheduling := opts.Pod.SchedulingFor(pl)

	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name:            p.PodName(pl),
			Namespace:       p.Namespace,
			Labels:          labels,
			Annotations:     annotations,
			OwnerReferences: p.ownerReferences(),
		},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{container},
			RestartPolicy:                 corev1.RestartPolicyNever,
			NodeSelector:                  nodeSelector,
			Tolerations:                   tolerations,
			Affinity:                      scheduling.Affinity,
			PriorityClassName:             scheduling.PriorityClassName,
			TopologySpreadConstraints:     scheduling.TopologySpreadConstraints,
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			ActiveDeadlineSeconds:         ptr.To(ceilSeconds(opts.MaxLifetime)),
			TerminationGracePeriodSeconds: ptr.To(ceilSeconds(opts.TerminationGracePeriod)),
			SecurityContext:               podSecurity,
			Volumes: []corev1.Volume{
				{Name: volumeState, VolumeSource: stateVolume},
				{Name: volumeSocket, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
					Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("1Mi")),
				}}},
				{Name: volumeConfig, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName:  p.SecretName(),
					Items:       configItems,
					DefaultMode: ptr.To(secretMode),
				}}},
			},
		},
	}, nil
}

// buildkitdArgs returns buildkitd's arguments for pl's builder and the Secret's files its
// config volume mounts. On a cache volume, buildkitd's own garbage collection is sized to it, so
// the volume never fills up; the user's flags come after and may override it.
func buildkitdArgs(opts Options, pl platform.Platform, onCacheVolume bool) ([]string, []corev1.KeyToPath) {
	args := []string{
		"--addr", SocketAddress,
		"--addr", "tcp://0.0.0.0:" + strconv.Itoa(BuildkitPort),
		"--tlscacert", tlsDir + "/" + SecretKeyCA,
		"--tlscert", tlsDir + "/cert.pem",
		"--tlskey", tlsDir + "/key.pem",
	}
	configItems := []corev1.KeyToPath{
		{Key: SecretKeyCA, Path: "tls/" + SecretKeyCA},
		{Key: SecretKeyCert(pl), Path: "tls/cert.pem"},
		{Key: SecretKeyKey(pl), Path: "tls/key.pem"},
	}
	if opts.BuildkitdConfig != "" {
		args = append(args, "--config", configFile)
		configItems = append(configItems, corev1.KeyToPath{Key: SecretKeyConfig, Path: SecretKeyConfig})
		for _, name := range slices.Sorted(maps.Keys(opts.BuildkitdFiles)) {
			configItems = append(configItems, corev1.KeyToPath{Key: name, Path: filesSubdir + "/" + name})
		}
	}
	if opts.Pod.Debug {
		args = append(args, "--debug")
	}
	if opts.Rootless {
		// Without a privileged container, BuildKit cannot mount a fresh /proc for build steps.
		args = append(args, "--oci-worker-no-process-sandbox")
	}
	if onCacheVolume {
		args = append(args, "--oci-worker-gc=true", "--oci-worker-gc-keepstorage="+gcKeepStorage(opts.Cache.Size))
	}
	return append(args, opts.BuildkitdFlags...), configItems
}

// buildkitdContainer returns the buildkitd container with args, without its security context.
func buildkitdContainer(opts Options, args []string) corev1.Container {
	stateDir := rootfulStateDir
	if opts.Rootless {
		stateDir = rootlessStateDir
	}
	pullPolicy := opts.Pod.ImagePullPolicy
	if pullPolicy == "" {
		pullPolicy = corev1.PullIfNotPresent
	}
	var env []corev1.EnvVar
	for _, e := range opts.Pod.Env {
		env = append(env, *e.DeepCopy())
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           opts.Image,
		ImagePullPolicy: pullPolicy,
		Args:            args,
		Env:             env,
		Ports: []corev1.ContainerPort{{
			Name:          "buildkit",
			ContainerPort: BuildkitPort,
			Protocol:      corev1.ProtocolTCP,
		}},
		// Probing every second from the start: BuildKit is typically ready within a second or
		// two, and the job waits for exactly this.
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
				Command: []string{"buildctl", "--addr", SocketAddress, "debug", "workers"},
			}},
			InitialDelaySeconds: 0,
			PeriodSeconds:       1,
			TimeoutSeconds:      5,
			SuccessThreshold:    1,
			FailureThreshold:    3,
		},
		Lifecycle: &corev1.Lifecycle{
			PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
				Command: drainHookCommand(opts.DrainQuietPeriod, opts.TerminationGracePeriod),
			}},
		},
		Resources: *opts.Resources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: volumeState, MountPath: stateDir},
			{Name: volumeSocket, MountPath: socketDir},
			{Name: volumeConfig, MountPath: configDir, ReadOnly: true},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// securityContexts sets the container's security context and returns the pod's and the mode of
// the Secret's files. Secret files are readable by their owner (root) only; the rootless user
// reads them through fsGroup, which also gives it the emptyDirs.
func securityContexts(opts Options, container *corev1.Container) (*corev1.PodSecurityContext, int32) {
	if !opts.Rootless {
		container.SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		return nil, 0o400
	}
	container.SecurityContext = &corev1.SecurityContext{
		RunAsUser:       ptr.To(int64(rootlessUID)),
		RunAsGroup:      ptr.To(int64(rootlessUID)),
		RunAsNonRoot:    ptr.To(true),
		SeccompProfile:  &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
		AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
	}
	return &corev1.PodSecurityContext{FSGroup: ptr.To(int64(rootlessUID))}, 0o440
}
