package k8sprov

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Labels every object the provisioner creates carries. Teardown and the janitor select on them
// and refuse to delete anything without LabelManagedBy=ManagedBy.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// LabelJobKey holds the JobKey: all objects of one job attempt.
	LabelJobKey = reservedPrefix + "job-key"
	// LabelArch holds the platform's Slug ("arm64", "arm-v7") on pods.
	LabelArch = reservedPrefix + "arch"

	// NameBuildkit is the value of LabelName.
	NameBuildkit = "buildkit"
	// ManagedBy is the value of LabelManagedBy.
	ManagedBy = "setup-ephemeral-buildkit"
)

// Annotations with the job identity and lifetime. A person can tell from them, on any builder,
// whose it is and until when it may live; the janitor reads AnnotationExpiresAt.
const (
	AnnotationCIPlatform = reservedPrefix + "ci-platform"
	AnnotationRepository = reservedPrefix + "repository"
	// AnnotationRepositoryID is the numeric project or repository id, which survives renames.
	AnnotationRepositoryID = reservedPrefix + "repository-id"
	AnnotationRunID        = reservedPrefix + "run-id"
	AnnotationRunAttempt   = reservedPrefix + "run-attempt"
	AnnotationJobID        = reservedPrefix + "job-id"
	AnnotationJobName      = reservedPrefix + "job-name"
	AnnotationCommit       = reservedPrefix + "commit"
	AnnotationJobURL       = reservedPrefix + "job-url"
	// AnnotationPlatform holds the full platform ("linux/arm/v7"), which a label cannot.
	AnnotationPlatform = reservedPrefix + "platform"
	// AnnotationCreatedAt and AnnotationExpiresAt are RFC 3339 times in UTC.
	AnnotationCreatedAt = reservedPrefix + "created-at"
	AnnotationExpiresAt = reservedPrefix + "expires-at"
)

// reservedPrefix is the prefix of our own label and annotation keys; user inputs may not use it.
const reservedPrefix = "setup-ephemeral-buildkit.io/"

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

// RunnerPod is the pod the CI job runs in, which owns the builders. UID is required: an owner
// reference with a wrong UID makes the garbage collector delete the builders at once.
type RunnerPod struct {
	Name      string
	Namespace string
	UID       types.UID
	// Annotations are the runner pod's annotations when it was looked up, for CI systems that
	// describe the job there (GitLab's Kubernetes executor: job.runner.gitlab.com/*). Not kept
	// in the job's state: only the main phase reads them.
	Annotations map[string]string `json:"-"`
}

// Resolution is what the provisioner learns from the cluster before rendering.
type Resolution struct {
	// Namespace of the builders.
	Namespace string
	// Owner is the runner pod; nil exactly when Options.Owner.None is set.
	Owner *RunnerPod
	// DefaultPlatform is the platform of the runner pod's node, used when Options.Platforms is
	// empty.
	DefaultPlatform platform.Platform
	// CreatedAt is when provisioning started; expiry annotations and certificates count from it.
	CreatedAt time.Time
}

// Plan is everything needed to render one job's objects: validated options plus what was
// resolved from the cluster. Build it with NewPlan.
type Plan struct {
	Options   Options
	Key       JobKey
	Namespace string
	// Owner is nil when the builders have no owner reference.
	Owner *RunnerPod
	// Platforms are the platforms to provision, never empty.
	Platforms []platform.Platform
	CreatedAt time.Time
}

// NewPlan validates opts and the resolution against each other and returns the plan rendering
// works from. It refuses an owner in another namespace than the builders, or without a UID,
// because the garbage collector would delete the builders immediately.
func NewPlan(opts Options, res Resolution) (Plan, error) {
	if err := opts.Validate(); err != nil {
		return Plan{}, fmt.Errorf("planning builders: %w", err)
	}
	if res.Namespace == "" {
		return Plan{}, errors.New("planning builders: no namespace resolved")
	}
	if opts.Namespace != "" && opts.Namespace != res.Namespace {
		return Plan{}, fmt.Errorf("planning builders: resolved namespace %q differs from input namespace %q", res.Namespace, opts.Namespace)
	}
	if msgs := validation.IsDNS1123Label(res.Namespace); len(msgs) > 0 {
		return Plan{}, fmt.Errorf("planning builders: namespace %q: %v", res.Namespace, msgs)
	}
	switch {
	case opts.Owner.None && res.Owner != nil:
		return Plan{}, errors.New("planning builders: owner none was asked for, but an owner was resolved")
	case !opts.Owner.None && res.Owner == nil:
		return Plan{}, errors.New("planning builders: no runner pod resolved as owner (set owner to none to run without one)")
	case res.Owner != nil:
		owner := res.Owner
		if owner.Name == "" || owner.UID == "" {
			return Plan{}, fmt.Errorf("planning builders: owner %q has no name or no UID", owner.Name)
		}
		if owner.Namespace != res.Namespace {
			return Plan{}, fmt.Errorf("planning builders: owner pod %s/%s is not in the builders' namespace %q; "+
				"the garbage collector would delete the builders at once", owner.Namespace, owner.Name, res.Namespace)
		}
		if opts.Owner.Name != "" && opts.Owner.Name != owner.Name {
			return Plan{}, fmt.Errorf("planning builders: resolved owner %q differs from input owner %q", owner.Name, opts.Owner.Name)
		}
	}
	platforms := opts.Platforms
	if len(platforms) == 0 {
		if res.DefaultPlatform.IsZero() {
			return Plan{}, errors.New("planning builders: no platforms given and no default platform resolved")
		}
		if err := validatePlatforms([]platform.Platform{res.DefaultPlatform}); err != nil {
			return Plan{}, fmt.Errorf("planning builders: default platform: %w", err)
		}
		platforms = []platform.Platform{res.DefaultPlatform}
	}
	if res.CreatedAt.IsZero() {
		return Plan{}, errors.New("planning builders: no creation time")
	}
	var owner *RunnerPod
	if res.Owner != nil {
		ownerCopy := *res.Owner
		owner = &ownerCopy
	}
	return Plan{
		Options:   opts,
		Key:       KeyOf(opts.Job),
		Namespace: res.Namespace,
		Owner:     owner,
		Platforms: append([]platform.Platform(nil), platforms...),
		CreatedAt: res.CreatedAt.UTC().Truncate(time.Second),
	}, nil
}

// ExpiresAt is when the builders' deadline ends.
func (p Plan) ExpiresAt() time.Time { return p.CreatedAt.Add(p.Options.MaxLifetime) }

// PodName returns the name of the builder pod for platform pl: "buildkit-<jobkey>-<slug>", at
// most 30 characters, a valid DNS label.
func (p Plan) PodName(pl platform.Platform) string { return PodName(p.Key, pl) }

// PodName returns the name of the builder pod of job key for platform p.
func PodName(key JobKey, p platform.Platform) string {
	return "buildkit-" + string(key) + "-" + p.Slug()
}

// SecretName returns the name of this attempt's Secret, "buildkit-<jobkey>-<nonce>-tls". The
// nonce comes from the plan's creation time: a retry of the same job gets a new Secret name, so a
// kubelet that still caches the killed attempt's (immutable) Secret for a terminating pod can
// never hand the old certificates to the new pod. Teardown finds Secrets by label, not by name.
func (p Plan) SecretName() string {
	sum := sha256.Sum256([]byte(p.CreatedAt.UTC().Format(time.RFC3339Nano)))
	return "buildkit-" + string(p.Key) + "-" + strings.ToLower(jobKeyEncoding.EncodeToString(sum[:])[:5]) + "-tls"
}

// JobSelector returns the label selector matching exactly the objects of job key.
func JobSelector(key JobKey) string {
	return LabelManagedBy + "=" + ManagedBy + "," + LabelJobKey + "=" + string(key)
}

// ManagedSelector returns the label selector matching every object the provisioner created, for
// the janitor.
func ManagedSelector() string { return LabelManagedBy + "=" + ManagedBy }

// IsManaged reports whether obj was created by the provisioner, the check teardown and the
// janitor make before deleting anything.
func IsManaged(obj metav1.Object) bool {
	return obj.GetLabels()[LabelManagedBy] == ManagedBy && obj.GetLabels()[LabelJobKey] != ""
}

// ExpiresAt reads obj's expiry annotation; ok is false when it is missing or unreadable.
func ExpiresAt(obj metav1.Object) (expires time.Time, ok bool) {
	t, err := time.Parse(time.RFC3339, obj.GetAnnotations()[AnnotationExpiresAt])
	return t, err == nil
}

// Endpoint returns the BuildKit address of a builder pod with the given IP, "tcp://IP:1234"
// (IPv6 addresses in brackets).
func Endpoint(podIP string) string {
	return "tcp://" + net.JoinHostPort(podIP, strconv.Itoa(BuildkitPort))
}

// labels returns the labels of the job's objects: user labels first, ours over them.
func (p Plan) labels() map[string]string {
	labels := maps.Clone(p.Options.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelName] = NameBuildkit
	labels[LabelManagedBy] = ManagedBy
	labels[LabelJobKey] = string(p.Key)
	return labels
}

// annotations returns the annotations of the job's objects: user annotations first, the job
// identity and times over them. Empty identity fields are left out.
func (p Plan) annotations() map[string]string {
	annotations := maps.Clone(p.Options.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	job := p.Options.Job
	for key, value := range map[string]string{
		AnnotationCIPlatform:   job.CIPlatform,
		AnnotationRepository:   job.Repository,
		AnnotationRepositoryID: job.RepositoryID,
		AnnotationRunID:        job.RunID,
		AnnotationRunAttempt:   job.RunAttempt,
		AnnotationJobID:        job.JobID,
		AnnotationJobName:      job.JobName,
		AnnotationCommit:       job.Commit,
		AnnotationJobURL:       job.URL,
	} {
		if value != "" {
			annotations[key] = value
		}
	}
	annotations[AnnotationCreatedAt] = p.CreatedAt.Format(time.RFC3339)
	annotations[AnnotationExpiresAt] = p.ExpiresAt().Format(time.RFC3339)
	return annotations
}

// ownerReferences returns the reference to the runner pod, or nil without owner. Controller and
// BlockOwnerDeletion stay unset: the runner pod is no controller of the builders, and blocking
// its deletion would need delete rights on it, which the runner's Role does not grant.
func (p Plan) ownerReferences() []metav1.OwnerReference {
	if p.Owner == nil {
		return nil
	}
	return []metav1.OwnerReference{{
		APIVersion: "v1",
		Kind:       "Pod",
		Name:       p.Owner.Name,
		UID:        p.Owner.UID,
	}}
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
// tcp://0.0.0.0:1234 with mutual TLS (for the job), with its state in an emptyDir. It is
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

	stateDir := rootfulStateDir
	if opts.Rootless {
		stateDir = rootlessStateDir
	}
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
	}
	if opts.Rootless {
		// Without a privileged container, BuildKit cannot mount a fresh /proc for build steps.
		args = append(args, "--oci-worker-no-process-sandbox")
	}
	args = append(args, opts.BuildkitdFlags...)

	container := corev1.Container{
		Name:            ContainerName,
		Image:           opts.Image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            args,
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

	// Secret files are readable by their owner (root) only; the rootless user reads them through
	// fsGroup, which also gives it the emptyDirs.
	secretMode := int32(0o400)
	var podSecurity *corev1.PodSecurityContext
	if opts.Rootless {
		secretMode = 0o440
		podSecurity = &corev1.PodSecurityContext{FSGroup: ptr.To(int64(rootlessUID))}
		container.SecurityContext = &corev1.SecurityContext{
			RunAsUser:       ptr.To(int64(rootlessUID)),
			RunAsGroup:      ptr.To(int64(rootlessUID)),
			RunAsNonRoot:    ptr.To(true),
			SeccompProfile:  &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
			AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
		}
	} else {
		container.SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	}

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
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			ActiveDeadlineSeconds:         ptr.To(ceilSeconds(opts.MaxLifetime)),
			TerminationGracePeriodSeconds: ptr.To(ceilSeconds(opts.TerminationGracePeriod)),
			SecurityContext:               podSecurity,
			Volumes: []corev1.Volume{
				{Name: volumeState, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
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
