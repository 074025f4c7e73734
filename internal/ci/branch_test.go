package ci

import (
	"errors"
	"testing"
)

func TestGitHubOnTrustedDefaultBranch(t *testing.T) {
	payload := map[string][]byte{"/event.json": []byte(`{"repository":{"default_branch":"main"}}`)}
	readFile := func(p string) ([]byte, error) {
		if data, ok := payload[p]; ok {
			return data, nil
		}
		return nil, errors.New("no such file")
	}
	for _, c := range []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/main", "GITHUB_EVENT_PATH": "/event.json"}, true},
		{map[string]string{"GITHUB_EVENT_NAME": "schedule", "GITHUB_REF": "refs/heads/main", "GITHUB_EVENT_PATH": "/event.json"}, true},
		{map[string]string{"GITHUB_EVENT_NAME": "pull_request", "GITHUB_REF": "refs/pull/7/merge", "GITHUB_EVENT_PATH": "/event.json"}, false},
		{map[string]string{"GITHUB_EVENT_NAME": "pull_request_target", "GITHUB_REF": "refs/heads/main", "GITHUB_EVENT_PATH": "/event.json"}, false},
		{map[string]string{"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/feature", "GITHUB_EVENT_PATH": "/event.json"}, false},
		{map[string]string{"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/tags/v1", "GITHUB_EVENT_PATH": "/event.json"}, false},
		{map[string]string{"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/main", "GITHUB_EVENT_PATH": "/missing.json"}, false},
	} {
		g := NewGitHub(WithGetenv(func(k string) string { return c.env[k] }), WithReadFile(readFile))
		got, why := g.OnTrustedDefaultBranch()
		if got != c.want || why == "" {
			t.Errorf("%v: OnTrustedDefaultBranch() = %v, %q; want %v with a reason", c.env, got, why, c.want)
		}
	}
}

func TestGitLabOnTrustedDefaultBranch(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": "push"}, true},
		{map[string]string{"CI_COMMIT_BRANCH": "feature", "CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": "push"}, false},
		{map[string]string{"CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": "merge_request_event"}, false},
		{map[string]string{"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": "merge_request_event"}, false},
		{map[string]string{"CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": "push"}, false},
	} {
		// The custom-executor hook reads the job's variables with their CUSTOM_ENV_ prefix.
		getenv := func(k string) string { return c.env[k[len(GitLabCustomExecutorPrefix):]] }
		g, err := NewGitLab(GitLabConfig{Getenv: getenv, VarPrefix: GitLabCustomExecutorPrefix})
		if err != nil {
			t.Fatal(err)
		}
		got, why := g.OnTrustedDefaultBranch()
		if got != c.want || why == "" {
			t.Errorf("%v: OnTrustedDefaultBranch() = %v, %q; want %v with a reason", c.env, got, why, c.want)
		}
	}
}

func TestShellOnTrustedDefaultBranch(t *testing.T) {
	sh, err := NewShell(ShellConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if got, why := sh.OnTrustedDefaultBranch(); got || why == "" {
		t.Errorf("a plain shell: %v, %q; want false with a reason", got, why)
	}
	sh, _ = NewShell(ShellConfig{DefaultBranch: func() (bool, string) { return true, "told" }})
	if got, _ := sh.OnTrustedDefaultBranch(); !got {
		t.Error("ShellConfig.DefaultBranch was not asked")
	}
}
