// Package deploy holds the tests of what a platform team installs: the plain manifests in this
// directory, their kustomization, and the Helm chart in chart/setup-ephemeral-buildkit.
//
// One source of truth, checked rather than generated: the chart rendered with its default values
// must be, object for object, the plain manifests here, and `kubectl kustomize deploy/` must be
// them too. The plain files stay hand-written because they are read: their comments are the
// kubectl user's documentation, and other tests apply them as the shipped RBAC and policy. The
// chart templates their content field for field, so a change to a file here fails
// TestChartDefaultsAreDeploy with the object and the field until the template carries it.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart, seen from this package's directory.
const chartDir = "chart/setup-ephemeral-buildkit"

// defaultRelease is the release name the README installs with: it gives deploy/'s names.
const defaultRelease = "setup-ephemeral-buildkit"

// instanceLabel is the one label the chart adds to deploy/'s objects: which release they are of.
const instanceLabel = "app.kubernetes.io/instance"

// tool returns the path of a tool hack/build-tools.sh builds into $CACHE_DIR/bin.
func tool(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("CACHE_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "setup-ephemeral-buildkit")
	}
	path := filepath.Join(dir, "bin", name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s missing (TOOLS=%s hack/build-tools.sh builds it): %v", name, name, err)
	}
	return path
}

// run runs a tool and returns its stdout, or its error with stderr.
func run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tool(t, name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// helm keeps caches and a registry config under HOME; keep the machine's out of the test.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "HELM_CACHE_HOME="+home+"/cache",
		"HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// object is one Kubernetes object as JSON decodes it.
type object = map[string]any

// parseObjects decodes a stream of YAML documents, skipping empty ones.
func parseObjects(t testing.TB, what string, data []byte) []object {
	t.Helper()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objects []object
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objects
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var obj object
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, doc)
		}
		if obj != nil {
			objects = append(objects, obj)
		}
	}
}

// key names an object: kind, namespace (if any) and name.
func key(obj object) string {
	meta, _ := obj["metadata"].(object)
	k := fmt.Sprint(obj["kind"], " ")
	if ns, ok := meta["namespace"]; ok {
		k += fmt.Sprint(ns, "/")
	}
	return k + fmt.Sprint(meta["name"])
}

// byKey indexes objects by key, failing on duplicates.
func byKey(t testing.TB, what string, objects []object) map[string]object {
	t.Helper()
	m := map[string]object{}
	for _, obj := range objects {
		k := key(obj)
		if _, dup := m[k]; dup {
			t.Fatalf("%s: %s twice", what, k)
		}
		m[k] = obj
	}
	return m
}

// template renders the chart as `helm template` does, with a release name, a namespace and
// --set style values.
func template(t testing.TB, release, namespace string, set ...string) (string, error) {
	t.Helper()
	return templateChart(t, chartDir, release, namespace, set...)
}

func templateChart(t testing.TB, chart, release, namespace string, set ...string) (string, error) {
	t.Helper()
	args := []string{"template", release, chart, "--namespace", namespace}
	for _, s := range set {
		args = append(args, "--set-json", s)
	}
	return run(t, "helm", args...)
}

func mustTemplate(t testing.TB, release, namespace string, set ...string) []object {
	t.Helper()
	out, err := template(t, release, namespace, set...)
	if err != nil {
		t.Fatal(err)
	}
	return parseObjects(t, "helm template", []byte(out))
}

// deployObjects reads the plain manifests of deploy/ in dir.
func deployObjects(t testing.TB, dir string) []object {
	t.Helper()
	var objects []object
	for _, file := range []string{"rbac.yaml", "admission-policy.yaml", "janitor-cronjob.yaml"} {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		objects = append(objects, parseObjects(t, file, data)...)
	}
	return objects
}

// asDeploy removes from a rendered object what deploy/ leaves to the installer: the namespace
// (kubectl -n) and the release label, everywhere it occurs (the CronJob's pod template too).
func asDeploy(obj object) object {
	var strip func(any)
	strip = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if meta, ok := v["metadata"].(map[string]any); ok {
				delete(meta, "namespace")
				if labels, ok := meta["labels"].(map[string]any); ok {
					delete(labels, instanceLabel)
				}
			}
			for _, child := range v {
				strip(child)
			}
		case []any:
			for _, child := range v {
				strip(child)
			}
		}
	}
	strip(obj)
	return obj
}

// compareObjects reports every object missing on one side or different, with both as JSON.
func compareObjects(t *testing.T, wantWhat string, want []object, gotWhat string, got []object) {
	t.Helper()
	wantBy, gotBy := byKey(t, wantWhat, want), byKey(t, gotWhat, got)
	for k, w := range wantBy {
		g, ok := gotBy[k]
		if !ok {
			t.Errorf("%s has %s, %s does not", wantWhat, k, gotWhat)
			continue
		}
		wj, _ := json.MarshalIndent(w, "", "  ")
		gj, _ := json.MarshalIndent(g, "", "  ")
		if !bytes.Equal(wj, gj) {
			t.Errorf("%s differs between %s and %s:\n%s", k, wantWhat, gotWhat, lineDiff(string(wj), string(gj)))
		}
	}
	for k := range gotBy {
		if _, ok := wantBy[k]; !ok {
			t.Errorf("%s has %s, %s does not", gotWhat, k, wantWhat)
		}
	}
}

// lineDiff shows the lines of want and got that differ, each with its neighbours.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  -%s\n  +%s\n", i+1, wl, gl)
		}
	}
	return b.String()
}

// TestChartDefaultsAreDeploy: the chart with default values installs what `kubectl apply -f
// deploy/` installs, and `kubectl kustomize deploy/` lists all of it.
func TestChartDefaultsAreDeploy(t *testing.T) {
	t.Parallel()
	checkChartIsDeploy(t, ".")
}

// TestReleaseStampKeepsChartAndDeployEqual: a release commit, stamped by
// hack/release/stamp.sh, still has a chart equal to deploy/ (both name the release's image).
func TestReleaseStampKeepsChartAndDeployEqual(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if out, err := exec.Command("cp", "-r", ".", filepath.Join(root, "deploy")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	stamp := exec.Command("../hack/release/stamp.sh", "v1.2.3")
	stamp.Env = append(os.Environ(), "ROOT="+root)
	if out, err := stamp.CombinedOutput(); err != nil {
		t.Fatalf("stamp.sh: %v\n%s", err, out)
	}
	dir := filepath.Join(root, "deploy")
	checkChartIsDeploy(t, dir)
	cron := find(t, deployObjects(t, dir), "CronJob", "", defaultRelease+"-janitor")
	if got := field(cron, "spec", "jobTemplate", "spec", "template", "spec", "containers", 0, "image"); !strings.HasSuffix(fmt.Sprint(got), ":v1.2.3") {
		t.Errorf("the stamped janitor image is %v, want tag v1.2.3", got)
	}
}

// checkChartIsDeploy compares the chart in dir with default values, the plain manifests in dir
// and `kubectl kustomize dir`.
func checkChartIsDeploy(t *testing.T, dir string) {
	t.Helper()
	out, err := templateChart(t, filepath.Join(dir, chartDir), defaultRelease, "ci")
	if err != nil {
		t.Fatal(err)
	}
	rendered := parseObjects(t, "helm template", []byte(out))
	for _, obj := range rendered {
		meta := obj["metadata"].(object)
		labels, _ := meta["labels"].(object)
		if labels[instanceLabel] != defaultRelease {
			t.Errorf("%s: label %s = %v, want the release %s", key(obj), instanceLabel, labels[instanceLabel], defaultRelease)
		}
		if obj["kind"] == "ValidatingAdmissionPolicy" || obj["kind"] == "ValidatingAdmissionPolicyBinding" {
			if _, ok := meta["namespace"]; ok {
				t.Errorf("%s: cluster-scoped, but rendered with a namespace", key(obj))
			}
		} else if meta["namespace"] != "ci" {
			t.Errorf("%s: namespace %v, want the release's (ci)", key(obj), meta["namespace"])
		}
		asDeploy(obj)
	}
	plain := deployObjects(t, dir)
	compareObjects(t, "deploy/*.yaml", plain, "the chart with default values", rendered)

	out, err = run(t, "kubectl", "kustomize", dir)
	if err != nil {
		t.Fatal(err)
	}
	built := parseObjects(t, "kubectl kustomize", []byte(out))
	for _, obj := range append(slices.Clone(plain), built...) {
		mapStrings(obj, func(s string) string { return strings.ReplaceAll(s, "\n\n", "\n") })
	}
	compareObjects(t, "deploy/*.yaml", plain, "kubectl kustomize deploy/", built)
}

// mapStrings replaces every string value in v by f of it. kustomize re-emits a folded scalar
// (>-) whose lines are indented more than its first as one with a blank line before each of
// them: the policy's CEL then has "\n\n" where the file has "\n". CEL reads both as blank
// space, so the kustomize comparison folds them back on both sides.
func mapStrings(v any, f func(string) string) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			if s, ok := child.(string); ok {
				v[k] = f(s)
			} else {
				mapStrings(child, f)
			}
		}
	case []any:
		for i, child := range v {
			if s, ok := child.(string); ok {
				v[i] = f(s)
			} else {
				mapStrings(child, f)
			}
		}
	}
}

// TestChartLint runs `helm lint --strict` with the default values and with every value set.
func TestChartLint(t *testing.T) {
	t.Parallel()
	for _, values := range [][]string{nil, everyValue} {
		args := []string{"lint", "--strict", chartDir, "--namespace", "ci"}
		for _, s := range values {
			args = append(args, "--set-json", s)
		}
		out, err := run(t, "helm", args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
			t.Errorf("helm lint %v:\n%s", values, out)
		}
	}
}

// everyValue sets every value away from its default.
var everyValue = []string{
	`runners.namespaces=["ci-a","ci-b"]`,
	`runners.serviceAccounts=["runner","gitlab-job"]`,
	`image={"repository":"10.213.0.1:5000/platform/setup-ephemeral-buildkit","tag":"v1.2.3","pullPolicy":"Always"}`,
	`admissionPolicy={"enabled":true,"validationActions":["Warn","Audit"],"images":["registry.example/mirror/buildkit:*"],"allowPrivileged":false,"maxCacheSize":"50Gi","namespaceSelector":{"matchLabels":{"ci":"true"}}}`,
	`clusterTemplate={"name":"builders","template":"apiVersion: setup-ephemeral-buildkit.io/v1alpha1\nkind: ClusterTemplate\nmode: rootless\n"}`,
	`janitor={"enabled":true,"schedule":"*/5 * * * *","dryRun":true,"cache":{"maxUnused":"72h","maxCount":40,"maxSize":"1Ti"},"extraArgs":["--kubeconfig=/k"],"tokenSecret":"tokens","githubApiUrl":"https://ghe.example/api/v3","gitlabUrl":"https://gitlab.example","jobStatusTimeout":"5s","resources":{"requests":{"cpu":"50m"}}}`,
}

// find returns the object of kind and name in namespace ns ("" for cluster-scoped).
func find(t *testing.T, objects []object, kind, ns, name string) object {
	t.Helper()
	want := kind + " " + name
	if ns != "" {
		want = kind + " " + ns + "/" + name
	}
	for _, obj := range objects {
		if key(obj) == want {
			return obj
		}
	}
	var keys []string
	for _, obj := range objects {
		keys = append(keys, key(obj))
	}
	t.Fatalf("no %s among %v", want, keys)
	return nil
}

// field walks obj along path (map keys, or list indexes as ints).
func field(obj any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, _ := obj.(object)
			obj = m[p]
		case int:
			l, _ := obj.([]any)
			if p >= len(l) {
				return nil
			}
			obj = l[p]
		}
	}
	return obj
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// policyVariable returns the expression of the policy's variable name.
func policyVariable(policy object, name string) string {
	for _, v := range field(policy, "spec", "variables").([]any) {
		if field(v, "name") == name {
			return fmt.Sprint(field(v, "expression"))
		}
	}
	return ""
}

// TestChartValues: each value reaches the objects it is for.
func TestChartValues(t *testing.T) {
	t.Parallel()
	objects := mustTemplate(t, "ci-builders", "ops", everyValue...)
	const name, janitor = "ci-builders-setup-ephemeral-buildkit", "ci-builders-setup-ephemeral-buildkit-janitor"
	for _, ns := range []string{"ci-a", "ci-b"} {
		binding := find(t, objects, "RoleBinding", ns, name)
		if got, want := jsonOf(field(binding, "subjects")), `[{"kind":"ServiceAccount","name":"runner"},{"kind":"ServiceAccount","name":"gitlab-job"}]`; got != want {
			t.Errorf("%s subjects = %s, want %s", ns, got, want)
		}
		role := find(t, objects, "Role", ns, name)
		if got, want := jsonOf(field(role, "rules", 5)), `{"apiGroups":[""],"resourceNames":["builders"],"resources":["configmaps"],"verbs":["get"]}`; got != want {
			t.Errorf("%s Role's template rule = %s, want %s", ns, got, want)
		}
		template := find(t, objects, "ConfigMap", ns, "builders")
		if got, want := jsonOf(field(template, "data")), `{"template.yaml":"apiVersion: setup-ephemeral-buildkit.io/v1alpha1\nkind: ClusterTemplate\nmode: rootless\n"}`; got != want {
			t.Errorf("%s template ConfigMap data = %s, want %s", ns, got, want)
		}
		cron := find(t, objects, "CronJob", ns, janitor)
		container := field(cron, "spec", "jobTemplate", "spec", "template", "spec", "containers", 0)
		checks := map[string][2]string{
			"schedule":   {jsonOf(field(cron, "spec", "schedule")), `"*/5 * * * *"`},
			"image":      {jsonOf(field(container, "image")), `"10.213.0.1:5000/platform/setup-ephemeral-buildkit:v1.2.3"`},
			"pullPolicy": {jsonOf(field(container, "imagePullPolicy")), `"Always"`},
			"args":       {jsonOf(field(container, "args")), `["gc","--namespace","$(POD_NAMESPACE)","--dry-run","--cache-max-unused=72h","--cache-max-count=40","--cache-max-size=1Ti","--kubeconfig=/k"]`},
			"token":      {jsonOf(field(container, "env", 1, "valueFrom", "secretKeyRef", "name")), `"tokens"`},
			"github":     {jsonOf(field(container, "env", 2, "value")), `"https://ghe.example/api/v3"`},
			"gitlab":     {jsonOf(field(container, "env", 4, "value")), `"https://gitlab.example"`},
			"timeout":    {jsonOf(field(container, "env", 5, "value")), `"5s"`},
			"resources":  {jsonOf(field(container, "resources")), `{"limits":{"memory":"128Mi"},"requests":{"cpu":"50m","memory":"32Mi"}}`},
		}
		for what, c := range checks {
			if c[0] != c[1] {
				t.Errorf("%s janitor %s = %s, want %s", ns, what, c[0], c[1])
			}
		}
	}
	for _, obj := range objects {
		if ns := field(obj, "metadata", "namespace"); ns == "ops" {
			t.Errorf("%s is in the release namespace, which is not a runner namespace", key(obj))
		}
	}
	policy := find(t, objects, "ValidatingAdmissionPolicy", "", name)
	if got := fmt.Sprint(field(policy, "spec", "matchConditions", 0, "expression")); !strings.HasPrefix(got, "['runner', 'gitlab-job'].exists(") {
		t.Errorf("policy accounts: %s", got)
	}
	if got, want := policyVariable(policy, "images"), "['registry.example/mirror/buildkit:*']"; got != want {
		t.Errorf("policy images = %s, want %s", got, want)
	}
	if got := policyVariable(policy, "allowPrivileged"); got != "false" {
		t.Errorf("policy allowPrivileged = %s, want false", got)
	}
	if got, want := policyVariable(policy, "maxCacheSize"), "'50Gi'"; got != want {
		t.Errorf("policy maxCacheSize = %s, want %s", got, want)
	}
	binding := find(t, objects, "ValidatingAdmissionPolicyBinding", "", name)
	if got, want := jsonOf(field(binding, "spec")), `{"matchResources":{"namespaceSelector":{"matchLabels":{"ci":"true"}}},"policyName":"`+name+`","validationActions":["Warn","Audit"]}`; got != want {
		t.Errorf("policy binding spec = %s, want %s", got, want)
	}

	// Off switches leave their objects out; the image tag defaults to the chart's appVersion.
	objects = mustTemplate(t, defaultRelease, "ci", `admissionPolicy.enabled=false`, `janitor.enabled=false`)
	var kinds []string
	for _, obj := range objects {
		kinds = append(kinds, fmt.Sprint(obj["kind"]))
	}
	if slices.Sort(kinds); !slices.Equal(kinds, []string{"Role", "RoleBinding"}) {
		t.Errorf("with the policy and the janitor off: %v, want the runners' Role and RoleBinding", kinds)
	}
	chart, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct{ AppVersion string }
	if err := yaml.Unmarshal(chart, &meta); err != nil {
		t.Fatal(err)
	}
	cron := find(t, mustTemplate(t, defaultRelease, "ci"), "CronJob", "ci", defaultRelease+"-janitor")
	if got, want := field(cron, "spec", "jobTemplate", "spec", "template", "spec", "containers", 0, "image"), "ghcr.io/org/setup-ephemeral-buildkit:"+meta.AppVersion; got != want {
		t.Errorf("default janitor image %v, want %s (the chart's appVersion)", got, want)
	}
}

// TestChartRefusesBadValues: values.schema.json stops a bad value before anything is rendered,
// naming the value.
func TestChartRefusesBadValues(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ set, want string }{
		{`runners.serviceAccounts=[]`, "at '/runners/serviceAccounts': minItems"},
		{`runners.serviceAccounts=["ci:runner"]`, "at '/runners/serviceAccounts/0': 'ci:runner' does not match"},
		{`runners.serviceAccounts=["it's"]`, "at '/runners/serviceAccounts/0'"},
		{`runners.namespaces=["CI"]`, "at '/runners/namespaces/0': 'CI' does not match"},
		{`runners.nameSpaces=["ci"]`, "additional properties 'nameSpaces' not allowed"},
		{`image.repository="ghcr.io/org/seb:v1"`, "at '/image/repository'"},
		{`image.pullPolicy="Sometimes"`, "at '/image/pullPolicy': value must be one of"},
		{`admissionPolicy.validationActions=["Deny","Warn"]`, "admissionPolicy.validationActions: Deny and Warn do not go together"},
		{`admissionPolicy.validationActions=["Refuse"]`, "at '/admissionPolicy/validationActions/0': value must be one of 'Deny', 'Warn', 'Audit'"},
		{`admissionPolicy.images=["docker.io/moby/buildkit:v0.34.2']+['x"]`, "at '/admissionPolicy/images/0'"},
		{`admissionPolicy.allowPrivileged="yes"`, "at '/admissionPolicy/allowPrivileged': got string, want boolean"},
		{`janitor.schedule="every ten minutes"`, "at '/janitor/schedule'"},
		{`janitor.jobStatusTimeout="20"`, "at '/janitor/jobStatusTimeout'"},
		{`janitor.extraArgs=["gc"]`, "at '/janitor/extraArgs/0'"},
		{`admissionPolicy.maxCacheSize="500G'] + ['x"`, "at '/admissionPolicy/maxCacheSize'"},
		{`admissionPolicy.maxCacheSize="lots"`, "at '/admissionPolicy/maxCacheSize'"},
		{`janitor.cache.maxUnused="7d"`, "at '/janitor/cache/maxUnused'"},
		{`janitor.cache.maxCount=-1`, "at '/janitor/cache/maxCount'"},
		{`janitor.cache.maxSize="1TB"`, "at '/janitor/cache/maxSize'"},
	} {
		out, err := template(t, defaultRelease, "ci", c.set)
		switch {
		case err == nil:
			t.Errorf("--set-json %s: rendered, want a refusal saying %s:\n%.300s", c.set, c.want, out)
		case !strings.Contains(err.Error(), c.want):
			t.Errorf("--set-json %s: %v; want a refusal saying %s", c.set, err, c.want)
		default:
			t.Logf("--set-json %s: %v", c.set, lastLines(err.Error(), 2))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
