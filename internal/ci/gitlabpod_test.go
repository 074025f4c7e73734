package ci

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// The annotations GitLab Runner's Kubernetes executor writes, as its own tests show them.
func gitlabPodAnnotations() map[string]string {
	return map[string]string{
		GitLabPodAnnotationJobID:           "8080",
		GitLabPodAnnotationJobURL:          "https://gitlab.example.com/group/app/-/jobs/8080",
		GitLabPodAnnotationCommit:          "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
		"job.runner.gitlab.com/before_sha": "0000000000000000000000000000000000000000",
		"job.runner.gitlab.com/ref":        "main",
		GitLabPodAnnotationJobName:         "image",
		GitLabPodAnnotationProjectID:       "42",
		"unrelated.example.com/x":          "y",
	}
}

func TestJobFromGitLabPodOverridesVariables(t *testing.T) {
	fromVariables := cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", RunID: "4711", JobID: "9999", JobName: "forged",
		Commit: "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd"}
	got, taken, notes := JobFromGitLabPod(fromVariables, gitlabPodAnnotations(), nil)
	want := cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", RepositoryID: "42", RunID: "4711", JobID: "8080", JobName: "image",
		Commit: "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd", URL: "https://gitlab.example.com/group/app/-/jobs/8080"}
	if got != want {
		t.Errorf("identity\n got %+v\nwant %+v", got, want)
	}
	slices.Sort(taken)
	if wantTaken := []string{JobFieldCommit, JobFieldJobID, JobFieldJobName, JobFieldURL, JobFieldRepositoryID}; !reflect.DeepEqual(taken, sorted(wantTaken)) {
		t.Errorf("taken %v, want %v", taken, sorted(wantTaken))
	}
	// Each disagreement is reported; agreement and filling an empty field are not.
	if len(notes) != 2 || !strings.Contains(notes[0], `"8080" replaces "9999"`) || !strings.Contains(notes[1], `"image" replaces "forged"`) {
		t.Errorf("notes %q, want the job id and name disagreements", notes)
	}
}

func TestJobFromGitLabPodKeepsExplicitFields(t *testing.T) {
	explicit := cijob.Identity{CIPlatform: "gitlab", JobID: "77", URL: "https://gitlab.example.com/x/-/jobs/77"}
	got, taken, notes := JobFromGitLabPod(explicit, gitlabPodAnnotations(), func(field string) bool { return field == JobFieldJobID })
	if got.JobID != "77" || got.URL != "https://gitlab.example.com/group/app/-/jobs/8080" || got.RepositoryID != "42" {
		t.Errorf("identity %+v: want the explicit job id kept and the rest from the pod", got)
	}
	if slices.Contains(taken, JobFieldJobID) {
		t.Errorf("taken %v includes the explicit job id", taken)
	}
	if len(notes) == 0 || !strings.Contains(notes[0], `kept --job-id="77"`) || !strings.Contains(notes[0], GitLabPodAnnotationJobID) {
		t.Errorf("notes %q, want one saying the explicit job id was kept over the annotation", notes)
	}
}

func TestJobFromGitLabPodIgnoresPlaceholdersAndMalformedValues(t *testing.T) {
	base := cijob.Identity{CIPlatform: "gitlab", JobID: "5", Commit: "abcdef1", URL: "https://gitlab.example.com/a/-/jobs/5", JobName: "build"}
	annotations := map[string]string{
		GitLabPodAnnotationJobID:     "0", // GitLab Runner's value when it knows no id
		GitLabPodAnnotationProjectID: "",
		GitLabPodAnnotationCommit:    "main",
		GitLabPodAnnotationJobURL:    "/-/jobs/0",
		GitLabPodAnnotationJobName:   "two\nlines",
	}
	got, taken, notes := JobFromGitLabPod(base, annotations, nil)
	if got != base || len(taken) != 0 {
		t.Errorf("identity %+v taken %v, want the variables' identity unchanged", got, taken)
	}
	for _, want := range []string{GitLabPodAnnotationCommit + `="main": not a commit hash`, GitLabPodAnnotationJobURL, GitLabPodAnnotationJobName} {
		if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("notes %q: none mentions %s", notes, want)
		}
	}
	if _, _, notes := JobFromGitLabPod(base, map[string]string{GitLabPodAnnotationJobName: strings.Repeat("x", 2000)}, nil); len(notes) != 1 {
		t.Errorf("an over-long annotation: notes %q, want one", notes)
	}
	if got, taken, notes := JobFromGitLabPod(base, nil, nil); got != base || taken != nil || notes != nil {
		t.Errorf("a pod without annotations changed the identity: %+v %v %v", got, taken, notes)
	}
}

func TestShellJobFromRunnerPod(t *testing.T) {
	job := cijob.Identity{CIPlatform: "gitlab", Repository: "group/app", JobID: "1"}
	plain, err := NewShell(ShellConfig{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	if taken, _ := plain.JobFromRunnerPod(gitlabPodAnnotations()); taken != nil || plain.Job() != job {
		t.Errorf("without JobFromRunnerPod configured the shell took %v: %+v", taken, plain.Job())
	}
	refining, err := NewShell(ShellConfig{Job: job, JobFromRunnerPod: func(j cijob.Identity, a map[string]string) (cijob.Identity, []string, []string) {
		return JobFromGitLabPod(j, a, nil)
	}})
	if err != nil {
		t.Fatal(err)
	}
	taken, _ := refining.JobFromRunnerPod(gitlabPodAnnotations())
	if len(taken) != 5 || refining.Job().JobID != "8080" || refining.Job().RepositoryID != "42" || refining.Job().CIPlatform != "gitlab" {
		t.Errorf("taken %v, Job() %+v: want the pod's job 8080 of project 42", taken, refining.Job())
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
