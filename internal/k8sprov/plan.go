package k8sprov

import (
	"errors"
	"fmt"
	"maps"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

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
	// CacheVolumes names the cache volume each platform's builder mounts at BuildKit's state
	// directory; a platform not in it starts cold. The provisioner fills it when it claims slots.
	CacheVolumes map[platform.Platform]string
	// SecretSlotOffset moves the Secret's name off the slot preferred for CreatedAt (SecretName).
	SecretSlotOffset int
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

// SecretName returns the name of this attempt's Secret, one of SecretNames(p.Key): the slot
// preferred for the plan's creation time, moved on by SecretSlotOffset. Provision sets the offset
// so that a retry never reuses a name a pod of the killed attempt mounts.
func (p Plan) SecretName() string {
	return secretNameForSlot(p.Key, (preferredSecretSlot(p.CreatedAt)+p.SecretSlotOffset)%SecretSlots)
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
