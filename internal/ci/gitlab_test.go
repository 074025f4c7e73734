package ci

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

func gitlabEnv(prefix string, extra map[string]string) func(string) string {
	env := map[string]string{
		"CI_PROJECT_PATH": "group/sub/app",
		"CI_PIPELINE_ID":  "4711",
		"CI_JOB_ID":       "123456",
		"CI_JOB_NAME":     "image: [linux/arm64]",
		"CI_COMMIT_SHA":   "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
		"CI_JOB_URL":      "https://gitlab.example.com/group/sub/app/-/jobs/123456",
	}
	for k, v := range extra {
		env[k] = v
	}
	return func(k string) string {
		name, ok := strings.CutPrefix(k, prefix)
		if !ok {
			return ""
		}
		return env[name]
	}
}

func TestGitLabJob(t *testing.T) {
	for _, prefix := range []string{"", GitLabCustomExecutorPrefix} {
		job := GitLabJob(gitlabEnv(prefix, nil), prefix)
		want := cijob.Identity{CIPlatform: "gitlab", Repository: "group/sub/app", RunID: "4711", JobID: "123456",
			JobName: "image: [linux/arm64]", Commit: "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
			URL: "https://gitlab.example.com/group/sub/app/-/jobs/123456"}
		if job != want {
			t.Errorf("prefix %q: %+v, want %+v", prefix, job, want)
		}
	}
	// Unprefixed variables are not the job's under the custom executor.
	if job := GitLabJob(gitlabEnv("", nil), GitLabCustomExecutorPrefix); job.JobID != "" {
		t.Errorf("read %q without the prefix", job.JobID)
	}
}

func TestGitLabInputs(t *testing.T) {
	getenv := gitlabEnv(GitLabCustomExecutorPrefix, map[string]string{
		"BUILDKIT_PLATFORMS":     " linux/amd64,linux/arm64 ",
		"BUILDKIT_NAMESPACE":     "kube-system",
		"BUILDKIT_NODE_SELECTOR": "linux/arm64=pool=arm",
	})
	admin := map[string]string{"namespace": "ci", "platforms": "linux/amd64", "image": "registry.local/buildkit:v1"}

	g, err := NewGitLab(GitLabConfig{Getenv: getenv, VarPrefix: GitLabCustomExecutorPrefix, Inputs: admin, JobInputs: []string{"platforms"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"platforms":     "linux/amd64,linux/arm64", // the job may choose
		"namespace":     "ci",                      // the job may not
		"node-selector": "",                        // nor this
		"image":         "registry.local/buildkit:v1",
	} {
		if got := g.Input(name); got != want {
			t.Errorf("Input(%q) = %q, want %q", name, got, want)
		}
	}
	if g.Name() != "gitlab" || g.Job().JobID != "123456" || g.Job().CIPlatform != "gitlab" {
		t.Errorf("Name %q, Job %+v", g.Name(), g.Job())
	}

	all, err := NewGitLab(GitLabConfig{Getenv: getenv, VarPrefix: GitLabCustomExecutorPrefix, Inputs: admin})
	if err != nil {
		t.Fatal(err)
	}
	if got := all.Input("namespace"); got != "kube-system" {
		t.Errorf("JobInputs nil: Input(namespace) = %q", got)
	}
	if got := all.Input("node-selector"); got != "linux/arm64=pool=arm" {
		t.Errorf("Input(node-selector) = %q", got)
	}
	none, err := NewGitLab(GitLabConfig{Getenv: getenv, VarPrefix: GitLabCustomExecutorPrefix, Inputs: admin, JobInputs: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if got := none.Input("platforms"); got != "linux/amd64" {
		t.Errorf("JobInputs empty: Input(platforms) = %q", got)
	}
}

func TestGitLabExplicitJobAndState(t *testing.T) {
	dir := t.TempDir()
	exports := &bytes.Buffer{}
	explicit := cijob.Identity{CIPlatform: "other", Repository: "group/app", JobID: "9"}
	up, err := NewGitLab(GitLabConfig{Getenv: gitlabEnv("", nil), Job: explicit, StateDir: dir, Exports: exports})
	if err != nil {
		t.Fatal(err)
	}
	if job := up.Job(); job.JobID != "9" || job.CIPlatform != "gitlab" {
		t.Errorf("Job = %+v", job)
	}
	if err := up.SaveState("builder", "ephemeral-abc"); err != nil {
		t.Fatal(err)
	}
	if err := up.ExportEnv("BUILDX_BUILDER", "ephemeral-abc"); err != nil {
		t.Fatal(err)
	}
	if err := up.SetOutput("platforms", "linux/amd64"); err != nil {
		t.Fatal(err)
	}
	if got, want := exports.String(), "export BUILDX_BUILDER='ephemeral-abc'\nexport EPHEMERAL_BUILDKIT_PLATFORMS='linux/amd64'\n"; got != want {
		t.Errorf("exports = %q, want %q", got, want)
	}
	down, err := NewGitLab(GitLabConfig{Getenv: gitlabEnv("", nil), StateDir: dir, Post: true})
	if err != nil {
		t.Fatal(err)
	}
	if !down.IsPost() || down.State("builder") != "ephemeral-abc" || down.TempDir() != dir {
		t.Errorf("IsPost %v, State %q, TempDir %q", down.IsPost(), down.State("builder"), down.TempDir())
	}
}

func TestGitLabSections(t *testing.T) {
	log := &bytes.Buffer{}
	now := time.Unix(1700000000, 0)
	g, err := NewGitLab(GitLabConfig{Getenv: gitlabEnv("", nil), Log: log, Sections: true, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	end := g.Group("Provision builders: linux/amd64")
	g.Infof("pod buildkit-abc running")
	end()
	end()
	want := "\x1b[0Ksection_start:1700000000:ephemeral_buildkit_1_provision_builders_linux_amd64[collapsed=true]\r\x1b[0KProvision builders: linux/amd64\n" +
		"pod buildkit-abc running\n" +
		"\x1b[0Ksection_end:1700000000:ephemeral_buildkit_1_provision_builders_linux_amd64\r\x1b[0K\n"
	if got := log.String(); got != want {
		t.Errorf("log =\n%q\nwant\n%q", got, want)
	}

	plain := &bytes.Buffer{}
	p, err := NewGitLab(GitLabConfig{Getenv: gitlabEnv("", nil), Log: plain})
	if err != nil {
		t.Fatal(err)
	}
	p.Group("Remove builders")()
	if got := plain.String(); got != "==> Remove builders\n" {
		t.Errorf("plain group = %q", got)
	}
}

func TestGitLabDebug(t *testing.T) {
	g, err := NewGitLab(GitLabConfig{Getenv: gitlabEnv(GitLabCustomExecutorPrefix, map[string]string{"CI_DEBUG_TRACE": "true"}), VarPrefix: GitLabCustomExecutorPrefix})
	if err != nil {
		t.Fatal(err)
	}
	if !g.Debug() {
		t.Error("CI_DEBUG_TRACE=true: Debug() = false")
	}
}

// A merge request from a fork (source project not the target) is untrusted.
func TestGitLabJobMarksForkMergeRequestsUntrusted(t *testing.T) {
	for _, tc := range []struct {
		source, target string
		untrusted      bool
	}{{"", "", false}, {"7", "7", false}, {"8", "7", true}} {
		env := map[string]string{"CI_MERGE_REQUEST_SOURCE_PROJECT_ID": tc.source, "CI_MERGE_REQUEST_PROJECT_ID": tc.target}
		if got := GitLabJob(func(k string) string { return env[k] }, "").Untrusted; got != tc.untrusted {
			t.Errorf("source %q target %q: Untrusted = %v, want %v", tc.source, tc.target, got, tc.untrusted)
		}
	}
}
