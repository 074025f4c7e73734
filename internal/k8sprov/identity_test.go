package k8sprov

import (
	"errors"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

func TestJobKeyIsStableShortAndDistinct(t *testing.T) {
	key := KeyOf(testJob)
	if key != KeyOf(testJob) {
		t.Fatal("key differs between two computations")
	}
	if len(key) != jobKeyLength || len(validation.IsDNS1123Label(string(key))) > 0 || len(validation.IsValidLabelValue(string(key))) > 0 {
		t.Errorf("key %q is not a short DNS label and label value", key)
	}
	descriptive := testJob
	descriptive.JobName, descriptive.Commit, descriptive.URL, descriptive.RepositoryID = "renamed", "ffffffff", "https://elsewhere.example/", "99"
	if KeyOf(descriptive) != key {
		t.Error("descriptive fields changed the key: correcting them would orphan builders")
	}
	seen := map[JobKey]string{key: "original"}
	for name, change := range map[string]func(*cijob.Identity){
		"ci platform": func(id *cijob.Identity) { id.CIPlatform = "gitlab" },
		"repository":  func(id *cijob.Identity) { id.Repository = "org/other" },
		"run":         func(id *cijob.Identity) { id.RunID = "1" },
		"attempt":     func(id *cijob.Identity) { id.RunAttempt = "2" },
		"job":         func(id *cijob.Identity) { id.JobID = "2" },
		"boundaries":  func(id *cijob.Identity) { id.Repository, id.RunID = id.Repository+id.RunID[:1], id.RunID[1:] },
	} {
		id := testJob
		change(&id)
		if other, dup := seen[KeyOf(id)]; dup {
			t.Errorf("changing the %s gives the same key as %s", name, other)
		}
		seen[KeyOf(id)] = name
	}
}

func TestJobIdentityValidate(t *testing.T) {
	if err := ValidateJob(testJob); err != nil {
		t.Fatalf("valid identity refused: %v", err)
	}
	for field, change := range map[string]func(*cijob.Identity){
		IdentityCIPlatform: func(id *cijob.Identity) { id.CIPlatform = "GitHub" },
		IdentityJobID:      func(id *cijob.Identity) { id.JobID = "" },
		IdentityCommit:     func(id *cijob.Identity) { id.Commit = "main" },
		IdentityURL:        func(id *cijob.Identity) { id.URL = "/relative" },
		IdentityJobName:    func(id *cijob.Identity) { id.JobName = "two\nlines" },
		IdentityRepoID:     func(id *cijob.Identity) { id.RepositoryID = "group/app" },
	} {
		id := testJob
		change(&id)
		err := ValidateJob(id)
		var inputErr *InputError
		if !errors.As(err, &inputErr) || inputErr.Input != field {
			t.Errorf("%s: Validate = %v, want an InputError for it", field, err)
		}
	}
}
