package k8sprov

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
