package k8sprov

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Cache volumes: a builder may keep BuildKit's state directory on a PersistentVolumeClaim that
// outlives the job, so the next job of the same lineage (cache key, platform, trust) starts warm.
// A lineage has up to CacheMaxSlots claims ("slots"); each is used by at most one builder at a
// time. A slot's holder annotation names the builder pod (name and UID) that uses it; the slot is
// free as soon as that pod no longer exists, whatever ended the job, so no step has to run to
// release it. Claims are taken by a compare-and-swap on that annotation (an update checked
// against the resourceVersion read), and the claims are ReadWriteOncePod, so the kubelet refuses a
// second pod on one volume even if the annotation were wrong.
//
// The claims have no owner: the janitor (CollectCacheVolumes) removes those unused for a while
// and keeps a namespace within a budget.

// Names of the cache inputs.
const (
	InputCache             = "cache"
	InputCacheKey          = "cache-key"
	InputCacheSize         = "cache-size"
	InputCacheStorageClass = "cache-storage-class"
	InputCacheMaxSlots     = "cache-max-slots"
)

// CacheMode says where a builder keeps BuildKit's state.
type CacheMode string

// The cache modes.
const (
	// CacheOff keeps the state in an emptyDir: every job starts cold.
	CacheOff CacheMode = "off"
	// CacheVolume keeps it on a cache volume of the job's lineage.
	CacheVolume CacheMode = "volume"
)

// Defaults and limits of the cache settings.
const (
	DefaultCacheMaxSlots = 4
	maxCacheMaxSlots     = 64
	// DefaultCacheAttachTimeout bounds how long a builder on a cache volume may take to be
	// scheduled, attached and ready before the job goes on with a cold builder instead. Real
	// clouds attach a volume in tens of seconds (p50 19.5 s measured on one).
	DefaultCacheAttachTimeout = 45 * time.Second
	maxCacheKeyLength         = 256
	// cacheClaimGrace is how long a claim whose pod has not been created yet still holds its
	// slot: the time between the compare-and-swap and the pod's creation, which a killed
	// process may never finish.
	cacheClaimGrace = 2 * time.Minute
)

// DefaultCacheSize is the size of a cache volume when cache-size is empty.
var DefaultCacheSize = resource.MustParse("10Gi")

// Bounds of cache-size: a volume smaller than minCacheSize cannot hold one base image; the
// maximum is the admission policy's.
var (
	minCacheSize = resource.MustParse("1Gi")
	maxCacheSize = resource.MustParse("500Gi")
)

// Texts of what the cache inputs accept, for errors and documentation.
const (
	AcceptedCache         = "off or volume"
	AcceptedCacheKey      = "up to 256 printable characters naming a cache lineage (e.g. a Dockerfile or a branch family); empty for the repository"
	AcceptedCacheSize     = "a quantity from 1Gi to 500Gi, e.g. 20Gi"
	AcceptedStorageClass  = "a StorageClass name, or empty for the cluster's default class"
	AcceptedCacheMaxSlots = "a whole number from 1 to 64"
)

// Labels and annotations of cache volumes.
const (
	// LabelCacheLineage holds the lineage's hash (CacheSettings.Lineage): all slots of one key,
	// platform and trust.
	LabelCacheLineage = reservedPrefix + "cache-lineage"
	// LabelCacheSlot is the slot's index within its lineage.
	LabelCacheSlot = reservedPrefix + "cache-slot"
	// LabelCacheTrust is "trusted" or "untrusted" (jobs from forks).
	LabelCacheTrust = reservedPrefix + "cache-trust"
	// AnnotationCacheHolder names the builder pod using the slot (CacheHolder as JSON).
	AnnotationCacheHolder = reservedPrefix + "cache-holder"
	// AnnotationCacheHolderOwner is the UID of the runner pod that owns the holder, or
	// CacheHolderOwnerNone: the admission policy reads it (it cannot parse the holder's JSON) to
	// let a job mark slots as held by its own builders only.
	AnnotationCacheHolderOwner = reservedPrefix + "cache-holder-owner"
	// AnnotationCacheLastUsed is when a builder last claimed the slot, for the janitor.
	AnnotationCacheLastUsed = reservedPrefix + "cache-last-used"
	// AnnotationCacheKey is the lineage in words: key, platform and trust.
	AnnotationCacheKey = reservedPrefix + "cache-key"
	// AnnotationCacheVolume on a builder pod names the claim it mounts.
	AnnotationCacheVolume = reservedPrefix + "cache-volume"
)

// CacheSettings are the validated cache inputs.
type CacheSettings struct {
	Mode CacheMode
	// Key is the lineage's key; empty means the repository (its numeric id where the CI system
	// has one).
	Key          string
	Size         resource.Quantity
	StorageClass string
	MaxSlots     int
	// AttachTimeout is DefaultCacheAttachTimeout unless a test lowers it; not an input.
	AttachTimeout time.Duration
}

// ParseCacheMode reads the cache input.
func ParseCacheMode(s string) (CacheMode, error) {
	switch m := CacheMode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", CacheOff:
		return CacheOff, nil
	case CacheVolume:
		return m, nil
	}
	return "", inputErrorf(s, AcceptedCache, "unknown cache mode")
}

// parseCacheInputs reads the cache inputs into s and returns every problem.
func parseCacheInputs(in Inputs) (CacheSettings, []error) {
	var s CacheSettings
	var errs []error
	var err error
	if s.Mode, err = ParseCacheMode(in.Cache); err != nil {
		errs = append(errs, named(InputCache, in.Cache, err))
	}
	s.Key = strings.TrimSpace(in.CacheKey)
	s.StorageClass = strings.TrimSpace(in.CacheStorageClass)
	if text := strings.TrimSpace(in.CacheSize); text != "" {
		if s.Size, err = resource.ParseQuantity(text); err != nil {
			errs = append(errs, &InputError{Input: InputCacheSize, Value: in.CacheSize, Err: errors.New("not a quantity"), Accepted: AcceptedCacheSize})
		}
	}
	if text := strings.TrimSpace(in.CacheMaxSlots); text != "" {
		if s.MaxSlots, err = strconv.Atoi(text); err != nil {
			errs = append(errs, &InputError{Input: InputCacheMaxSlots, Value: in.CacheMaxSlots, Err: errors.New("not a whole number"), Accepted: AcceptedCacheMaxSlots})
		} else if s.MaxSlots < 1 {
			// Zero would silently mean the default below.
			errs = append(errs, &InputError{Input: InputCacheMaxSlots, Value: in.CacheMaxSlots, Err: errors.New("out of range"), Accepted: AcceptedCacheMaxSlots})
		}
	}
	return s, errs
}

// withDefaults fills in the unset cache settings.
func (s CacheSettings) withDefaults() CacheSettings {
	if s.Mode == "" {
		s.Mode = CacheOff
	}
	if s.Size.IsZero() {
		s.Size = DefaultCacheSize.DeepCopy()
	}
	if s.MaxSlots == 0 {
		s.MaxSlots = DefaultCacheMaxSlots
	}
	if s.AttachTimeout == 0 {
		s.AttachTimeout = DefaultCacheAttachTimeout
	}
	return s
}

// validate checks the cache settings against each other and the job.
func (s CacheSettings) validate(job cijob.Identity) error {
	var errs []error
	if s.Mode != CacheOff && s.Mode != CacheVolume {
		errs = append(errs, &InputError{Input: InputCache, Value: string(s.Mode), Err: errors.New("unknown cache mode"), Accepted: AcceptedCache})
	}
	if len(s.Key) > maxCacheKeyLength || strings.ContainsFunc(s.Key, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		errs = append(errs, &InputError{Input: InputCacheKey, Value: s.Key, Err: errors.New("too long or not printable"), Accepted: AcceptedCacheKey})
	}
	if err := ValidateCacheSize(s.Size); err != nil {
		errs = append(errs, &InputError{Input: InputCacheSize, Value: s.Size.String(), Err: err, Accepted: AcceptedCacheSize})
	}
	if err := ValidateStorageClass(s.StorageClass); err != nil {
		errs = append(errs, &InputError{Input: InputCacheStorageClass, Value: s.StorageClass, Err: err, Accepted: AcceptedStorageClass})
	}
	if err := ValidateCacheMaxSlots(s.MaxSlots); err != nil {
		errs = append(errs, &InputError{Input: InputCacheMaxSlots, Value: strconv.Itoa(s.MaxSlots), Err: err, Accepted: AcceptedCacheMaxSlots})
	}
	if s.Mode == CacheVolume && s.Key == "" && job.RepositoryID == "" && job.Repository == "" {
		errs = append(errs, &InputError{Input: InputCacheKey, Value: "", Err: errors.New("empty, and the job names no repository to default to"), Accepted: AcceptedCacheKey})
	}
	if s.AttachTimeout < 0 {
		errs = append(errs, errors.New("cache attach timeout is negative"))
	}
	return errors.Join(errs...)
}

// MaxCacheSize is the largest cache-size the product accepts, the admission policy's default
// maxCacheSize.
func MaxCacheSize() resource.Quantity { return maxCacheSize.DeepCopy() }

// ValidateCacheSize checks a cache volume's size against the product's bounds (AcceptedCacheSize).
func ValidateCacheSize(q resource.Quantity) error {
	if q.Cmp(minCacheSize) < 0 || q.Cmp(maxCacheSize) > 0 {
		return errors.New("out of range")
	}
	return nil
}

// ValidateStorageClass checks a StorageClass name; empty is the cluster's default class.
func ValidateStorageClass(name string) error {
	if name == "" {
		return nil
	}
	if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// ValidateCacheMaxSlots checks cache-max-slots against the product's bounds (AcceptedCacheMaxSlots).
func ValidateCacheMaxSlots(n int) error {
	if n < 1 || n > maxCacheMaxSlots {
		return errors.New("out of range")
	}
	return nil
}

// lineageText is a lineage in words: trust, the repository (its numeric id where the CI system
// has one, else its path), the key, and the platform. The repository is always part of it, so a
// job that names another repository's key never reaches that repository's volumes; the key only
// splits a repository's lineages. Untrusted jobs (forks) get lineages of their own, so they never
// mount a volume a trusted job uses, and the other way round.
func (s CacheSettings) lineageText(job cijob.Identity, pl platform.Platform) string {
	repo := job.Repository
	if job.RepositoryID != "" {
		repo = "id " + job.RepositoryID
	}
	text := trustOf(job) + " " + job.CIPlatform + " repository " + repo
	if s.Key != "" {
		text += " key " + s.Key
	}
	return text + " " + pl.String()
}

func trustOf(job cijob.Identity) string {
	if job.Untrusted {
		return "untrusted"
	}
	return "trusted"
}

// Lineage is the label value naming one lineage's slots: a hash of lineageText, 20 hex digits.
func (s CacheSettings) Lineage(job cijob.Identity, pl platform.Platform) string {
	sum := sha256.Sum256([]byte(s.lineageText(job, pl)))
	return hex.EncodeToString(sum[:10])
}

// CacheVolumeName is the name of a lineage's slot: "buildkit-cache-<lineage>-<slot>".
func CacheVolumeName(lineage string, slot int) string {
	return "buildkit-cache-" + lineage + "-" + strconv.Itoa(slot)
}

// CacheSelector selects every cache volume.
func CacheSelector() string { return ManagedSelector() + "," + LabelCacheLineage }

// LineageSelector selects the slots of one lineage.
func LineageSelector(lineage string) string {
	return ManagedSelector() + "," + LabelCacheLineage + "=" + lineage
}

// CacheHolderOwnerNone is AnnotationCacheHolderOwner for builders without an owner (owner-pod: none).
const CacheHolderOwnerNone = "none"

// holderOwner is AnnotationCacheHolderOwner for p's builders.
func (p Plan) holderOwner() string {
	if p.Owner == nil {
		return CacheHolderOwnerNone
	}
	return string(p.Owner.UID)
}

// CacheHolder is who uses a slot: the builder pod's name and, once it exists, its UID. Since is
// when the claim was made: a claim without UID holds the slot only for cacheClaimGrace.
type CacheHolder struct {
	Pod   string    `json:"pod"`
	UID   types.UID `json:"uid,omitempty"`
	Since time.Time `json:"since"`
}

// holderOf reads a slot's holder; ok is false when the slot has none (or an unreadable one,
// which is treated as none: only our code writes it, and a slot must not stay stuck).
func holderOf(pvc *corev1.PersistentVolumeClaim) (CacheHolder, bool) {
	text := pvc.Annotations[AnnotationCacheHolder]
	if text == "" {
		return CacheHolder{}, false
	}
	var h CacheHolder
	if err := json.Unmarshal([]byte(text), &h); err != nil || h.Pod == "" {
		return CacheHolder{}, false
	}
	return h, true
}

func (h CacheHolder) String() string {
	data, _ := json.Marshal(h)
	return string(data)
}

// PodState is what a slot's check learns about its holder's pod.
type PodState struct {
	Exists bool
	UID    types.UID
}

// slotFree says whether a slot may be claimed, and why not. pod is the state of the holder's pod.
func slotFree(pvc *corev1.PersistentVolumeClaim, pod PodState, now time.Time) (bool, string) {
	if pvc.DeletionTimestamp != nil {
		return false, "being deleted"
	}
	if pvc.Status.Phase == corev1.ClaimLost {
		return false, "its volume is lost"
	}
	h, ok := holderOf(pvc)
	if !ok {
		return true, "no holder"
	}
	switch {
	case h.UID == "" && pod.Exists:
		return false, "held by pod " + h.Pod + " (starting)"
	case h.UID == "" && now.Sub(h.Since) < cacheClaimGrace:
		return false, "claimed for pod " + h.Pod + " " + now.Sub(h.Since).Truncate(time.Second).String() + " ago"
	case h.UID == "":
		return true, "claim for pod " + h.Pod + " never completed"
	case pod.Exists && pod.UID == h.UID:
		return false, "held by pod " + h.Pod
	}
	return true, "holder pod " + h.Pod + " is gone"
}

// slotIndex is a claim's slot label, -1 if unreadable.
func slotIndex(pvc *corev1.PersistentVolumeClaim) int {
	i, err := strconv.Atoi(pvc.Labels[LabelCacheSlot])
	if err != nil || i < 0 {
		return -1
	}
	return i
}

// lastUsed is when a slot was last claimed (its creation when never).
func lastUsed(pvc *corev1.PersistentVolumeClaim) time.Time {
	if t, err := time.Parse(time.RFC3339, pvc.Annotations[AnnotationCacheLastUsed]); err == nil {
		return t
	}
	return pvc.CreationTimestamp.Time
}

// orderSlots sorts a lineage's slots for claiming: the most recently used first (the warmest,
// and the one a job of the same branch most likely filled), then by index.
func orderSlots(pvcs []corev1.PersistentVolumeClaim) {
	slices.SortStableFunc(pvcs, func(a, b corev1.PersistentVolumeClaim) int {
		if c := lastUsed(&b).Compare(lastUsed(&a)); c != 0 {
			return c
		}
		return slotIndex(&a) - slotIndex(&b)
	})
}

// freeSlotIndex is the lowest slot index not in use below max, or -1 when all are.
func freeSlotIndex(pvcs []corev1.PersistentVolumeClaim, max int) int {
	used := map[int]bool{}
	for i := range pvcs {
		used[slotIndex(&pvcs[i])] = true
	}
	for i := 0; i < max; i++ {
		if !used[i] {
			return i
		}
	}
	return -1
}

// RenderCacheVolume returns a new slot of lineage for p's builder for pl, held by that builder's
// pod from now on. It has no owner: it outlives the job. ReadWriteOncePod makes the kubelet refuse
// a second pod on it.
func RenderCacheVolume(p Plan, pl platform.Platform, lineage string, slot int, now time.Time) *corev1.PersistentVolumeClaim {
	c := p.Options.Cache
	labels := maps.Clone(p.Options.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelName] = NameBuildkit
	labels[LabelManagedBy] = ManagedBy
	labels[LabelCacheLineage] = lineage
	labels[LabelCacheSlot] = strconv.Itoa(slot)
	labels[LabelCacheTrust] = trustOf(p.Options.Job)
	annotations := map[string]string{
		AnnotationCacheKey:         c.lineageText(p.Options.Job, pl),
		AnnotationCacheHolder:      CacheHolder{Pod: p.PodName(pl), Since: now.UTC().Truncate(time.Second)}.String(),
		AnnotationCacheHolderOwner: p.holderOwner(),
		AnnotationCacheLastUsed:    now.UTC().Format(time.RFC3339),
		AnnotationPlatform:         pl.String(),
	}
	var class *string
	if c.StorageClass != "" {
		class = &c.StorageClass
	}
	return &corev1.PersistentVolumeClaim{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        CacheVolumeName(lineage, slot),
			Namespace:   p.Namespace,
			Labels:      labels,
			Annotations: annotations,
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod},
			StorageClassName: class,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: c.Size.DeepCopy()},
			},
		},
	}
}

// gcKeepStorage is buildkitd's --oci-worker-gc-keepstorage for a cache volume of size bytes, in
// MB as buildkitd reads it ("reserved,minFree,maxUsed"): garbage collection starts once the
// cache passes 80% of the volume or less than 10% of it is free, and keeps 10% however old, so a
// volume never fills up.
func gcKeepStorage(size resource.Quantity) string {
	mb := size.Value() / 1e6
	return fmt.Sprintf("%d,%d,%d", mb/10, mb/10, mb*8/10)
}
