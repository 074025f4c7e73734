// Package cijob is the vocabulary the CI side and the provisioner share: which CI job is running
// (Identity), the names of the CI systems, and the names the runner pod may have (RunnerCandidate).
//
// It is a leaf, as package platform is for CPU platforms: the CI adapters (package ci) fill these
// values and the provisioner (package k8sprov) records them on the builders, and neither of the
// two may import the other. Validation and the job key are the provisioner's (k8sprov.ValidateJob,
// k8sprov.KeyOf): they are rules about what may be written on Kubernetes objects.
package cijob

// Names of the CI systems, as Identity.CIPlatform and the builders' ci-platform annotation spell
// them. The janitor asks the system of that name whether a job is over.
const (
	// GitHub is GitHub Actions, also under actions-runner-controller and act.
	GitHub = "github"
	// GitLab is GitLab CI: the custom-executor hook, or the CLI in a job.
	GitLab = "gitlab"
	// Shell is the plain CLI outside any CI system the program knows.
	Shell = "shell"
)

// Identity says which CI job is running. The CI adapter fills it; the provisioner writes it into
// the builders' annotations (so a person can tell, from any builder pod, whose it is) and derives
// the job key from its key fields.
type Identity struct {
	// CIPlatform names the CI system: GitHub, GitLab, Shell, or another short name given on the
	// CLI. Lower-case letters, digits and dashes. Required.
	CIPlatform string
	// Repository is the repository or project, e.g. "org/app".
	Repository string
	// RepositoryID is the CI system's numeric id of Repository (GITHUB_REPOSITORY_ID,
	// CI_PROJECT_ID); empty when unknown. Descriptive, not part of the key; the janitor prefers
	// it to the path, which changes when a project is renamed or moved.
	RepositoryID string
	// RunID is the workflow run or pipeline id.
	RunID string
	// RunAttempt is the attempt of the run (GitHub re-runs); empty where the CI system has none.
	RunAttempt string
	// JobID identifies the job uniquely within the run attempt. Required. For GitHub, the job's
	// check-run id, not GITHUB_JOB, which matrix jobs share.
	JobID string
	// JobName is the human name of the job, for annotations only.
	JobName string
	// Commit is the commit being built (hex, 7 to 64 digits).
	Commit string
	// URL points to the run's (or job's) page.
	URL string
	// Untrusted marks a job that may not write a cache trusted jobs read: a GitHub pull request
	// or a GitLab merge request from a fork. Its builders get cache volumes of their own.
	Untrusted bool
}

// RunnerCandidate is a name the runner pod may have, as the CI system tells it, and where that
// name came from (for the error that lists what was tried).
type RunnerCandidate struct {
	// Name is the pod name to look up.
	Name string
	// Source names where it came from, e.g. "ACTIONS_RUNNER_POD_NAME".
	Source string
}
