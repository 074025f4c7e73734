package k8sprov

import (
	"errors"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestJobKeyIsStableShortAndDistinct(t *testing.T) {
	key := testJob.Key()
	if key != testJob.Key() {
		t.Fatal("key differs between two computations")
	}
	if len(key) != jobKeyLength || len(validation.IsDNS1123Label(string(key))) > 0 || len(validation.IsValidLabelValue(string(key))) > 0 {
		t.Errorf("key %q is not a short DNS label and label value", key)
	}
	descriptive := testJob
	descriptive.JobName, descriptive.Commit, descriptive.URL, descriptive.RepositoryID = "renamed", "ffffffff", "https://elsewhere.example/", "99"
	if descriptive.Key() != key {
		t.Error("descriptive fields changed the key: correcting them would orphan builders")
	}
	seen := map[JobKey]string{key: "original"}
	for name, change := range map[string]func(*JobIdentity){
		"ci platform": func(id *JobIdentity) { id.CIPlatform = "gitlab" },
		"repository":  func(id *JobIdentity) { id.Repository = "org/other" },
		"run":         func(id *JobIdentity) { id.RunID = "1" },
		"attempt":     func(id *JobIdentity) { id.RunAttempt = "2" },
		"job":         func(id *JobIdentity) { id.JobID = "2" },
		"boundaries":  func(id *JobIdentity) { id.Repository, id.RunID = id.Repository+id.RunID[:1], id.RunID[1:] },
	} {
		id := testJob
		change(&id)
		if other, dup := seen[id.Key()]; dup {
			t.Errorf("changing the %s gives the same key as %s", name, other)
		}
		seen[id.Key()] = name
	}
}

func TestJobIdentityValidate(t *testing.T) {
	if err := testJob.Validate(); err != nil {
		t.Fatalf("valid identity refused: %v", err)
	}
	for field, change := range map[string]func(*JobIdentity){
		IdentityCIPlatform: func(id *JobIdentity) { id.CIPlatform = "GitHub" },
		IdentityJobID:      func(id *JobIdentity) { id.JobID = "" },
		IdentityCommit:     func(id *JobIdentity) { id.Commit = "main" },
		IdentityURL:        func(id *JobIdentity) { id.URL = "/relative" },
		IdentityJobName:    func(id *JobIdentity) { id.JobName = "two\nlines" },
		IdentityRepoID:     func(id *JobIdentity) { id.RepositoryID = "group/app" },
	} {
		id := testJob
		change(&id)
		err := id.Validate()
		var inputErr *InputError
		if !errors.As(err, &inputErr) || inputErr.Input != field {
			t.Errorf("%s: Validate = %v, want an InputError for it", field, err)
		}
	}
}
