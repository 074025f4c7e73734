// Package release tests how a release is cut: every workflow of the repository passes
// actionlint, the GitLab pipeline publishes only release commits whose component pins its own
// image, and the build steps of .github/workflows/release.yml run under act and make the release
// commit the README describes. stamp.sh beside it writes a version into the tree.
package release

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// repoRoot is the repository, seen from this package's directory.
const repoRoot = "../.."

func cacheDir() string {
	if dir := os.Getenv("CACHE_DIR"); dir != "" {
		return dir
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "setup-ephemeral-buildkit")
}

// tool returns the path of a tool hack/build-tools.sh builds into $CACHE_DIR/bin.
func tool(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(cacheDir(), "bin", name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s missing (TOOLS=%s hack/build-tools.sh builds it): %v", name, name, err)
	}
	return path
}

// workflows lists every GitHub Actions workflow in the repository: the files of each
// .github/workflows and examples/workflows directory, test data included.
func workflows(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules" || path == filepath.Join(repoRoot, "hack", "tools")) {
			return filepath.SkipDir
		}
		dir := filepath.Dir(path)
		if !d.IsDir() && filepath.Base(dir) == "workflows" &&
			(filepath.Base(filepath.Dir(dir)) == ".github" || filepath.Base(filepath.Dir(dir)) == "examples") &&
			(strings.HasSuffix(path, ".yml") || strings.HasSuffix(path, ".yaml")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// actionlint runs actionlint, with shellcheck on the run: scripts, over files from dir.
func actionlint(t *testing.T, dir string, files ...string) (string, error) {
	t.Helper()
	shellcheck, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatalf("shellcheck is not on PATH (hack/install-deps.sh installs it): %v", err)
	}
	args := append([]string{"-no-color", "-shellcheck", shellcheck, "-pyflakes", ""}, files...)
	cmd := exec.Command(tool(t, "actionlint"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestWorkflowsPassActionlint lints every workflow of the repository, the release workflow and
// the examples users copy among them, and fails on any finding.
func TestWorkflowsPassActionlint(t *testing.T) {
	t.Parallel()
	files := workflows(t)
	var rel []string
	for _, f := range files {
		r, err := filepath.Rel(repoRoot, f)
		if err != nil {
			t.Fatal(err)
		}
		rel = append(rel, r)
	}
	for _, want := range []string{".github/workflows/release.yml", "examples/workflows/multi-arch.yml"} {
		if !slices.Contains(rel, want) {
			t.Fatalf("the workflows found (%v) lack %s", rel, want)
		}
	}
	out, err := actionlint(t, repoRoot, rel...)
	if err != nil {
		t.Fatalf("actionlint %v: %v\n%s", rel, err, out)
	}
	t.Logf("actionlint: no finding in %d workflows: %v", len(rel), rel)
}

// TestActionlintFindsProblems keeps the lint honest: a workflow with a typo in an expression, a
// shell bug and an unknown runner label fails it, naming each.
func TestActionlintFindsProblems(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".github", "workflows"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := "on: push\njobs:\n  a:\n    runs-on: arc-runner\n    steps:\n" +
		"      - run: echo ${{ github.refname }}\n" +
		"      - run: if [ $X = 1 ]; then echo; fi\n"
	if err := os.WriteFile(filepath.Join(dir, ".github", "workflows", "bad.yml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := actionlint(t, dir, ".github/workflows/bad.yml")
	if err == nil {
		t.Fatalf("actionlint passed a broken workflow:\n%s", out)
	}
	for _, want := range []string{`property "refname" is not defined`, `label "arc-runner" is unknown`, "SC2086"} {
		if !strings.Contains(out, want) {
			t.Errorf("actionlint's findings lack %q:\n%s", want, out)
		}
	}
}

// gitlabPipeline is the part of .gitlab-ci.yml this test reads.
type gitlabPipeline struct {
	Workflow struct {
		Rules []struct {
			If string `json:"if"`
		} `json:"rules"`
	} `json:"workflow"`
	Variables map[string]string `json:"variables"`
	Check     struct {
		Image  string   `json:"image"`
		Script []string `json:"script"`
	} `json:"component-pins-its-image"`
	Publish struct {
		Release struct {
			TagName string `json:"tag_name"`
		} `json:"release"`
	} `json:"publish-component"`
}

// TestGitLabPipelinePublishesReleaseCommits: the GitLab pipeline runs for version tags only,
// publishes the tag it runs for, and its check passes exactly on a tree stamp.sh stamped with
// that version (the release commit), not on the tree between releases.
func TestGitLabPipelinePublishesReleaseCommits(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(repoRoot, ".gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var p gitlabPipeline
	if err := yaml.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Workflow.Rules) != 1 {
		t.Fatalf("workflow rules %+v, want the one tag rule", p.Workflow.Rules)
	}
	m := regexp.MustCompile(`^\$CI_COMMIT_TAG =~ /(.*)/$`).FindStringSubmatch(p.Workflow.Rules[0].If)
	if m == nil {
		t.Fatalf("workflow rule %q is not a tag match", p.Workflow.Rules[0].If)
	}
	tags := regexp.MustCompile(strings.ReplaceAll(m[1], `\d`, `[0-9]`))
	for tag, want := range map[string]bool{"v1.2.3": true, "v10.0.12": true, "v1": false, "v1.2": false, "v1.2.3-rc.1": false, "latest": false} {
		if got := tags.MatchString(tag); got != want {
			t.Errorf("tag %s runs the pipeline: %v, want %v", tag, got, want)
		}
	}
	if p.Publish.Release.TagName != "$CI_COMMIT_TAG" {
		t.Errorf("publish-component releases %q, want $CI_COMMIT_TAG", p.Publish.Release.TagName)
	}
	if want := "$JOB_IMAGE:$CI_COMMIT_TAG"; p.Check.Image != want {
		t.Errorf("the check runs in %q, want the pinned job image %s", p.Check.Image, want)
	}

	// The check's grep, run over the tree as it is and as stamp.sh leaves it.
	check := func(root, tag string) error {
		var script strings.Builder
		fmt.Fprintf(&script, "set -e\nJOB_IMAGE=%s\nCI_COMMIT_TAG=%s\n", p.Variables["JOB_IMAGE"], tag)
		for _, line := range p.Check.Script {
			if strings.Contains(line, "templates/buildkit.yml") {
				script.WriteString(line + "\n")
			}
		}
		cmd := exec.Command("bash", "-c", script.String())
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	if err := check(repoRoot, "v1.2.3"); err == nil {
		t.Error("the check passes on the tree between releases; it must want the release commit")
	}
	stamped := stampedCopy(t, "v1.2.3")
	if err := check(stamped, "v1.2.3"); err != nil {
		t.Errorf("the check fails on a tree stamped v1.2.3: %v", err)
	}
	if err := check(stamped, "v1.2.4"); err == nil {
		t.Error("the check passes v1.2.4 on a tree stamped v1.2.3")
	}
}

// stampedCopy copies what stamp.sh writes to into a temporary tree and stamps it.
func stampedCopy(t *testing.T, version string) string {
	t.Helper()
	root := t.TempDir()
	for _, dir := range []string{"deploy", "templates"} {
		cmd := exec.Command("cp", "-r", filepath.Join(repoRoot, dir), filepath.Join(root, dir))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	cmd := exec.Command("./stamp.sh", version)
	cmd.Env = append(os.Environ(), "ROOT="+root)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("stamp.sh %s: %v\n%s", version, err, out)
	}
	return root
}

// TestStamp: stamp.sh writes the version everywhere a release names its images, and refuses
// what is not a version.
func TestStamp(t *testing.T) {
	t.Parallel()
	root := stampedCopy(t, "v1.2.3")
	for file, want := range map[string][]string{
		"deploy/chart/setup-ephemeral-buildkit/Chart.yaml": {"\nversion: 1.2.3\n", "\nappVersion: \"v1.2.3\"\n"},
		"deploy/janitor-cronjob.yaml":                      {"/setup-ephemeral-buildkit:v1.2.3\n"},
		"templates/buildkit.yml":                           {"image: ghcr.io/org/setup-ephemeral-buildkit-job:v1.2.3\n"},
	} {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !bytes.Contains(data, []byte(w)) {
				t.Errorf("%s after stamp.sh v1.2.3 lacks %q", file, w)
			}
		}
	}
	for _, bad := range []string{"1.2.3", "v1.2", "v1.2.3-rc.1", "v1.2.3; rm -rf /"} {
		cmd := exec.Command("./stamp.sh", bad)
		cmd.Env = append(os.Environ(), "ROOT="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "is not vMAJOR.MINOR.PATCH") {
			t.Errorf("stamp.sh %q: %v %s; want a refusal naming the format", bad, err, out)
		}
	}
}

// actSteps are the steps of release.yml that run under act, and why the others do not.
var (
	actSteps    = []string{"checkout", "version", "dist", "stamp", "commit", "chart"}
	notUnderAct = map[string]string{
		"setup-go":   "downloads an action and a Go toolchain; the machine's Go stands in",
		"images":     "pushes to a registry with the workflow's token (make release-images, the image build's)",
		"chart-push": "publishes (only on a pushed tag)",
		"tags":       "publishes (only on a pushed tag)",
	}
)

// releaseWorkflow is the part of release.yml this test rewrites.
type releaseWorkflow map[string]any

// buildOnly returns release.yml with only the steps in actSteps, in their order, and fails when
// a step is neither run nor explained.
func buildOnly(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, ".github", "workflows", "release.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var wf releaseWorkflow
	if err := yaml.Unmarshal(data, &wf); err != nil {
		t.Fatal(err)
	}
	// YAML 1.1 reads the key `on` as the boolean true; give the event triggers their name back.
	if on, ok := wf["true"]; ok {
		wf["on"] = on
		delete(wf, "true")
	}
	job := wf["jobs"].(map[string]any)["release"].(map[string]any)
	var kept []any
	for _, step := range job["steps"].([]any) {
		id, _ := step.(map[string]any)["id"].(string)
		switch {
		case slices.Contains(actSteps, id):
			kept = append(kept, step)
		case notUnderAct[id] != "":
			t.Logf("release.yml step %s not run under act: %s", id, notUnderAct[id])
		default:
			t.Errorf("release.yml step %q is neither run under act nor explained in notUnderAct", id)
		}
	}
	// Test-only: act removes its copy of the repository when the job ends, so a last step keeps
	// it for the test to look at.
	kept = append(kept, map[string]any{"name": "Keep the workspace for the test", "run": `cp -a "$GITHUB_WORKSPACE" "$RELEASE_RESULTS/repo"`})
	job["steps"] = kept
	out, err := yaml.Marshal(wf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// git runs git in dir with no user or system configuration.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestReleaseWorkflowUnderAct rehearses a release (workflow_dispatch, version v1.2.3) with the
// build steps of release.yml under act in host mode, in a copy of the working tree (helm builds
// again there, from the shared Go build cache): the release
// commit sits on the tagged commit and carries both binaries, stamped with the version, and the
// stamped chart and manifests; the chart packages at that version.
func TestReleaseWorkflowUnderAct(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binaries for two architectures")
	}
	t.Parallel()
	act := tool(t, "act")
	work := t.TempDir()
	repo := filepath.Join(work, "repo")
	// The working tree as it is (tracked and new files, not ignored ones), committed.
	files := git(t, repoRoot, "ls-files", "-co", "--exclude-standard", "-z")
	for _, f := range strings.Split(strings.TrimRight(files, "\x00"), "\x00") {
		src := filepath.Join(repoRoot, f)
		info, err := os.Lstat(src)
		if err != nil {
			continue // deleted in the working tree
		}
		dst := filepath.Join(repo, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, dst); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	workflow := filepath.Join(work, "release-build.yml")
	if err := os.WriteFile(workflow, buildOnly(t), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, repo, "init", "-q", "-b", "main")
	git(t, repo, "add", "-A")
	git(t, repo, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", "main")
	tagged := git(t, repo, "rev-parse", "HEAD")

	home, results := filepath.Join(work, "home"), filepath.Join(work, "results")
	if err := os.MkdirAll(results, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(act, "workflow_dispatch",
		"-W", workflow,
		"-P", "ubuntu-latest=-self-hosted",
		"--input", "version=v1.2.3",
		"--action-offline-mode", "--pull=false", "--no-cache-server",
		"--action-cache-path", filepath.Join(work, "act-cache"),
		"--env", "RELEASE_RESULTS="+results)
	cmd.Dir = repo
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"XDG_CACHE_HOME=" + filepath.Join(home, ".cache"),
		"GOCACHE=" + goEnv(t, "GOCACHE"),
		"GOMODCACHE=" + goEnv(t, "GOMODCACHE"),
		"GOFLAGS=" + os.Getenv("GOFLAGS"),
		"GOPROXY=" + goEnv(t, "GOPROXY"),
		"ACT_DISABLE_VERSION_CHECK=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_CONFIG_NOSYSTEM=1",
		"TMPDIR=" + os.TempDir(),
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("act: %v\n%s", err, out)
	}
	t.Logf("act:\n%s", lastLinesOf(string(out), 40))
	// In host mode act runs the job in its own copy of the repository (checkout of the local
	// repository copies it), which the last step kept: the release commit is there.
	repo = filepath.Join(results, "repo")

	if got := git(t, repo, "log", "-1", "--format=%s"); got != "Release v1.2.3" {
		t.Errorf("HEAD is %q, want the release commit", got)
	}
	if parent := git(t, repo, "rev-parse", "HEAD^"); parent != tagged {
		t.Errorf("the release commit's parent is %s, want the tagged commit %s", parent, tagged)
	}
	committed := strings.Split(git(t, repo, "diff", "--name-only", "HEAD^", "HEAD"), "\n")
	for _, want := range []string{
		"dist/setup-ephemeral-buildkit-linux-amd64", "dist/setup-ephemeral-buildkit-linux-arm64",
		"deploy/chart/setup-ephemeral-buildkit/Chart.yaml", "deploy/janitor-cronjob.yaml", "templates/buildkit.yml",
	} {
		if !slices.Contains(committed, want) {
			t.Errorf("the release commit lacks %s (it has %v)", want, committed)
		}
	}
	for _, arch := range []string{"amd64", "arm64"} {
		bin, err := os.ReadFile(filepath.Join(repo, "dist", "setup-ephemeral-buildkit-linux-"+arch))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(bin, []byte("v1.2.3")) {
			t.Errorf("dist/setup-ephemeral-buildkit-linux-%s does not carry the version v1.2.3", arch)
		}
	}
	if chart := git(t, repo, "show", "HEAD:deploy/chart/setup-ephemeral-buildkit/Chart.yaml"); !strings.Contains(chart, `appVersion: "v1.2.3"`) {
		t.Errorf("the release commit's Chart.yaml:\n%s", chart)
	}
	if !strings.Contains(string(out), "setup-ephemeral-buildkit-1.2.3.tgz") {
		t.Errorf("the chart step did not package setup-ephemeral-buildkit-1.2.3.tgz")
	}
	if status := git(t, repo, "status", "--porcelain", "--untracked-files=no"); status != "" {
		t.Errorf("the release left tracked files modified outside its commit:\n%s", status)
	}
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
