package ci

import (
	"encoding/json"
	"fmt"
	"strings"
)

// DefaultBranchJob is implemented by a System that can tell whether the job runs on the
// repository's default branch, started by an event only people with write access cause (a
// push, a schedule, a manual run): the jobs that may write a shared cache. Pull and merge
// requests, forks' above all, never are.
type DefaultBranchJob interface {
	// OnTrustedDefaultBranch reports whether the job is such a job, and why, for the log.
	OnTrustedDefaultBranch() (bool, string)
}

// githubTrustedEvents are the events that run a workflow with the repository's own rights and
// code: a push, a schedule, a manual run.
var githubTrustedEvents = map[string]bool{"push": true, "schedule": true, "workflow_dispatch": true}

// OnTrustedDefaultBranch reads GITHUB_EVENT_NAME, GITHUB_REF and the default branch from the
// event's payload (GITHUB_EVENT_PATH, repository.default_branch), the one place GitHub names it.
func (g *GitHub) OnTrustedDefaultBranch() (bool, string) {
	event, ref := g.getenv("GITHUB_EVENT_NAME"), g.getenv("GITHUB_REF")
	if !githubTrustedEvents[event] {
		return false, fmt.Sprintf("event %q is not a push, schedule or workflow_dispatch", event)
	}
	branch, ok := strings.CutPrefix(ref, "refs/heads/")
	if !ok {
		return false, fmt.Sprintf("%s is not a branch", ref)
	}
	path := g.getenv("GITHUB_EVENT_PATH")
	data, err := g.readFile(path)
	if err != nil {
		return false, fmt.Sprintf("the event payload (GITHUB_EVENT_PATH) is unreadable: %v", err)
	}
	var payload struct {
		Repository struct {
			DefaultBranch string `json:"default_branch"`
		} `json:"repository"`
	}
	if err := json.Unmarshal(data, &payload); err != nil || payload.Repository.DefaultBranch == "" {
		return false, fmt.Sprintf("the event payload %s names no repository.default_branch", path)
	}
	if branch != payload.Repository.DefaultBranch {
		return false, fmt.Sprintf("%s of branch %s, not the default branch %s", event, branch, payload.Repository.DefaultBranch)
	}
	return true, fmt.Sprintf("%s to %s, the default branch", event, branch)
}

// GitLabOnTrustedDefaultBranch reads GitLab's CI/CD variables (each prefixed with prefix): a
// branch pipeline (CI_COMMIT_BRANCH, unset in merge request and tag pipelines) of the default
// branch (CI_DEFAULT_BRANCH) that no merge request started (CI_PIPELINE_SOURCE).
func GitLabOnTrustedDefaultBranch(getenv func(string) string, prefix string) (bool, string) {
	v := func(name string) string { return strings.TrimSpace(getenv(prefix + name)) }
	branch, def, source := v("CI_COMMIT_BRANCH"), v("CI_DEFAULT_BRANCH"), v("CI_PIPELINE_SOURCE")
	switch {
	case strings.Contains(source, "merge_request") || strings.Contains(source, "pull_request"):
		return false, fmt.Sprintf("a %s pipeline", source)
	case branch == "":
		return false, "not a branch pipeline (CI_COMMIT_BRANCH is unset)"
	case branch != def:
		return false, fmt.Sprintf("branch %s, not the default branch %q", branch, def)
	}
	return true, fmt.Sprintf("a %s pipeline of %s, the default branch", source, branch)
}

// OnTrustedDefaultBranch reads the job's variables (CUSTOM_ENV_-prefixed in a custom-executor
// stage), which the runner sets from the pipeline: a job cannot redefine predefined variables
// of its own pipeline's source.
func (g *GitLab) OnTrustedDefaultBranch() (bool, string) {
	return GitLabOnTrustedDefaultBranch(g.getenv, g.cfg.VarPrefix)
}

// OnTrustedDefaultBranch asks ShellConfig.DefaultBranch (the CLI sets it in a GitLab job);
// otherwise a shell is not known to be one.
func (s *Shell) OnTrustedDefaultBranch() (bool, string) {
	if s.cfg.DefaultBranch == nil {
		return false, "the CLI outside a CI system it reads branches of"
	}
	return s.cfg.DefaultBranch()
}

var (
	_ DefaultBranchJob = (*GitHub)(nil)
	_ DefaultBranchJob = (*GitLab)(nil)
	_ DefaultBranchJob = (*Shell)(nil)
)
