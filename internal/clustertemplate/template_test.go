package clustertemplate

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// exampleTemplate is the template in deploy/cluster-template.yaml, the one the README shows.
func exampleTemplate(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../../deploy/cluster-template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(data, &cm); err != nil {
		t.Fatalf("deploy/cluster-template.yaml: %v", err)
	}
	if cm.Name != DefaultName || cm.Data[DataKey] == "" {
		t.Fatalf("deploy/cluster-template.yaml: ConfigMap %q with keys %v, want %q with %q", cm.Name, cm.Data, DefaultName, DataKey)
	}
	return []byte(cm.Data[DataKey])
}

var testJob = cijob.Identity{CIPlatform: cijob.GitHub, Repository: "org/app", RunID: "1", RunAttempt: "1", JobID: "2"}

// apply parses in as a job's inputs and applies tmpl.
func apply(t *testing.T, tmpl *Template, in k8sprov.Inputs) (k8sprov.Options, error) {
	t.Helper()
	opts, err := k8sprov.ParseOptions(testJob, in)
	if err != nil {
		t.Fatalf("ParseOptions(%+v): %v", in, err)
	}
	return tmpl.Apply(in, opts)
}

func TestExampleTemplate(t *testing.T) {
	tmpl, err := Parse(exampleTemplate(t), "ci/setup-ephemeral-buildkit")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	opts, err := apply(t, tmpl, k8sprov.Inputs{Platforms: "linux/amd64,linux/arm64"})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	// Defaults inherited.
	if opts.Image != "docker.io/moby/buildkit:v0.34.2" || opts.Rootless || opts.MaxLifetime != 2*time.Hour || opts.TerminationGracePeriod != 15*time.Minute {
		t.Errorf("image %q rootless %v lifetime %s grace %s", opts.Image, opts.Rootless, opts.MaxLifetime, opts.TerminationGracePeriod)
	}
	if got := k8sprov.FormatResourceList(opts.Resources.Requests); got != "cpu=1,memory=2Gi" {
		t.Errorf("requests %s", got)
	}
	// The memory limit is the default; cpu and ephemeral-storage, left open, are the maximum.
	if got := k8sprov.FormatResourceList(opts.Resources.Limits); got != "cpu=4,ephemeral-storage=50Gi,memory=4Gi" {
		t.Errorf("limits %s", got)
	}
	selector, tolerations := opts.ScheduleFor(platform.MustParse("linux/arm64"))
	if selector["node.example.com/pool"] != "arm64" || len(tolerations) != 1 || tolerations[0].Key != "arch" {
		t.Errorf("arm64 scheduling: %v %v", selector, tolerations)
	}
	if selector, tolerations := opts.ScheduleFor(platform.MustParse("linux/amd64")); len(selector) != 2 || len(tolerations) != 0 {
		t.Errorf("amd64 scheduling: %v %v", selector, tolerations)
	}
	arm := opts.Pod.SchedulingFor(platform.MustParse("linux/arm64"))
	if arm.Affinity == nil || len(arm.TopologySpreadConstraints) != 1 {
		t.Errorf("arm64 affinity %v spread %v", arm.Affinity, arm.TopologySpreadConstraints)
	}
	if !strings.Contains(opts.BuildkitdConfig, "max-parallelism") || len(opts.BuildkitdFlags) != 1 {
		t.Errorf("buildkitd config %q flags %q", opts.BuildkitdConfig, opts.BuildkitdFlags)
	}

	// A job within the limits adds to them.
	opts, err = apply(t, tmpl, k8sprov.Inputs{Requests: "cpu=2", Limits: "memory=8Gi", MaxLifetime: "3h", BuildkitdFlags: "--debug"})
	if err != nil {
		t.Fatalf("Apply within limits: %v", err)
	}
	if got := k8sprov.FormatResourceList(opts.Resources.Requests); got != "cpu=2,memory=2Gi" {
		t.Errorf("requests %s", got)
	}
	if opts.MaxLifetime != 3*time.Hour || strings.Join(opts.BuildkitdFlags, " ") != "--oci-worker-gc-keepstorage=20000 --debug" {
		t.Errorf("lifetime %s flags %q", opts.MaxLifetime, opts.BuildkitdFlags)
	}
}

func TestApplyRefusesPastTheTemplate(t *testing.T) {
	tmpl, err := Parse(exampleTemplate(t), "ci/setup-ephemeral-buildkit")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	_, err = apply(t, tmpl, k8sprov.Inputs{
		Requests: "cpu=8", Limits: "memory=32Gi", MaxLifetime: "12h", Image: "evil.example/buildkit:latest",
		Rootless: "true", TerminationGracePeriod: "5m", NodeSelector: "linux/arm64=node.example.com/pool=gpu",
	})
	if err == nil {
		t.Fatal("Apply past the template succeeded")
	}
	msg := err.Error()
	for _, want := range []string{
		`input "requests": "cpu=8": above the maximum cpu=4 of cluster template ci/setup-ephemeral-buildkit (resources.maximum) (accepted: at most cpu=4 per builder)`,
		`input "limits": "memory=32Gi": above the maximum memory=16Gi`,
		`input "max-lifetime": "12h": above the maximum 6h0m0s of cluster template ci/setup-ephemeral-buildkit (maxLifetime.maximum)`,
		`input "image": "evil.example/buildkit:latest": cluster template ci/setup-ephemeral-buildkit does not let jobs set image (jobInputs)`,
		`input "rootless": "true": cluster template ci/setup-ephemeral-buildkit does not let jobs set rootless`,
		`input "termination-grace-period": "5m"`,
		`input "node-selector"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	var inputErr *k8sprov.InputError
	if !errors.As(err, &inputErr) {
		t.Errorf("not an *InputError: %T", err)
	}
}

// Cache settings: jobs inherit the template's, may set only the cache inputs jobInputs lists,
// and are refused past its maximums, naming the input, the value, the template and the limit.
func TestApplyCache(t *testing.T) {
	tmpl, err := Parse(exampleTemplate(t), "ci/setup-ephemeral-buildkit")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := apply(t, tmpl, k8sprov.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	if c := opts.Cache; c.Mode != k8sprov.CacheOff || c.StorageClass != "standard-rwo" || c.Size.String() != "20Gi" || c.MaxSlots != 4 {
		t.Errorf("inherited cache settings %+v, want off, standard-rwo, 20Gi, 4 slots", c)
	}
	opts, err = apply(t, tmpl, k8sprov.Inputs{Cache: "volume", CacheKey: "api", CacheSize: "100Gi"})
	if err != nil {
		t.Fatal(err)
	}
	if c := opts.Cache; c.Mode != k8sprov.CacheVolume || c.Key != "api" || c.Size.String() != "100Gi" || c.StorageClass != "standard-rwo" {
		t.Errorf("a job's cache inputs within the template: %+v", c)
	}
	_, err = apply(t, tmpl, k8sprov.Inputs{Cache: "volume", CacheSize: "200Gi", CacheStorageClass: "fast", CacheMaxSlots: "2"})
	for _, want := range []string{
		`input "cache-size": "200Gi": above the maximum 100Gi of cluster template ci/setup-ephemeral-buildkit (cache.size.maximum) (accepted: at most 100Gi)`,
		`input "cache-storage-class": "fast": cluster template ci/setup-ephemeral-buildkit does not let jobs set cache-storage-class (jobInputs)`,
		`input "cache-max-slots": "2": cluster template ci/setup-ephemeral-buildkit does not let jobs set cache-max-slots`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	// No jobInputs: every cache input, within the maximums; the slots are a maximum too. A
	// default above the maximum is capped (the product's 10Gi by a 5Gi maximum).
	open, err := Parse([]byte("apiVersion: "+APIVersion+"\nkind: "+Kind+"\ncache:\n  mode: volume\n  size: {maximum: 5Gi}\n  maxSlots: 2\n"), "ci/t")
	if err != nil {
		t.Fatal(err)
	}
	opts, err = apply(t, open, k8sprov.Inputs{CacheStorageClass: "fast"})
	if err != nil {
		t.Fatal(err)
	}
	if c := opts.Cache; c.Mode != k8sprov.CacheVolume || c.Size.String() != "5Gi" || c.MaxSlots != 2 || c.StorageClass != "fast" {
		t.Errorf("open template: %+v, want volume, 5Gi, 2 slots, class fast", c)
	}
	_, err = apply(t, open, k8sprov.Inputs{CacheMaxSlots: "3"})
	if err == nil || !strings.Contains(err.Error(), `input "cache-max-slots": "3": above the maximum 2 of cluster template ci/t (cache.maxSlots) (accepted: at most 2)`) {
		t.Errorf("slots past the template: %v", err)
	}
	if opts, err := apply(t, open, k8sprov.Inputs{Cache: "off"}); err != nil || opts.Cache.Mode != k8sprov.CacheOff {
		t.Errorf("a job turning the cache off: %+v %v", opts.Cache, err)
	}
}

func TestApplyNodeSelectorAndImages(t *testing.T) {
	tmpl, err := Parse([]byte(`apiVersion: setup-ephemeral-buildkit.io/v1alpha1
kind: ClusterTemplate
image: registry.example/buildkit:v1
allowedImages: ["registry.example/mirror/*"]
platforms:
  linux/arm64:
    nodeSelector: {pool: arm}
`), "ci/t")
	if err != nil {
		t.Fatal(err)
	}
	// No jobInputs: every input, within the limits; a job may add node labels, not change the template's.
	if _, err := apply(t, tmpl, k8sprov.Inputs{NodeSelector: "linux/arm64=disk=ssd;*=team=ci", Image: "registry.example/mirror/buildkit:v2"}); err != nil {
		t.Errorf("adding labels, an allowed image: %v", err)
	}
	_, err = apply(t, tmpl, k8sprov.Inputs{NodeSelector: "*=pool-,team=ci"})
	if err == nil || !strings.Contains(err.Error(), "changes node label pool, which cluster template ci/t sets for linux/arm64") {
		t.Errorf("dropping the template's label: %v", err)
	}
	_, err = apply(t, tmpl, k8sprov.Inputs{Image: "docker.io/moby/buildkit:v0.34.2"})
	if err == nil || !strings.Contains(err.Error(), "accepted: registry.example/buildkit:v1, docker.io/moby/buildkit:v0.34.2-rootless, registry.example/mirror/*") {
		t.Errorf("an image outside the template: %v", err)
	}
	// Rootless chosen by the job gets the product's rootless image, which the template admits.
	opts, err := apply(t, tmpl, k8sprov.Inputs{Rootless: "true"})
	if err != nil || opts.Image != k8sprov.DefaultRootlessImage {
		t.Errorf("rootless: %q, %v", opts.Image, err)
	}
	var nilTemplate *Template
	if opts, err := apply(t, nilTemplate, k8sprov.Inputs{Image: "x.example/y:z"}); err != nil || opts.Image != "x.example/y:z" {
		t.Errorf("no template: %q %v", opts.Image, err)
	}
}

func TestParseErrorsSayWhere(t *testing.T) {
	const head = "apiVersion: setup-ephemeral-buildkit.io/v1alpha1\nkind: ClusterTemplate\n"
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown key", head + "image: docker.io/moby/buildkit:v0.34.2\nimagePullPolcy: Always\n",
			"cluster template ci/t, line 4: field imagePullPolcy is not part of the schema setup-ephemeral-buildkit.io/v1alpha1"},
		{"unknown key in a Kubernetes type", head + "platforms:\n  linux/arm64:\n    tolerations:\n      - key: arch\n        efect: NoSchedule\n",
			`cluster template ci/t, line 7: unknown field "[0].efect"`},
		{"bad type", head + "debug: maybe\n", "cluster template ci/t, line 3: cannot unmarshal !!str `maybe` into bool"},
		{"duplicate key", head + "mode: rootful\nmode: rootless\n", `line 4: mapping key "mode" already defined at line 3`},
		{"version", "apiVersion: setup-ephemeral-buildkit.io/v2\nkind: ClusterTemplate\n",
			`cluster template ci/t, line 1 (apiVersion): apiVersion "setup-ephemeral-buildkit.io/v2", want setup-ephemeral-buildkit.io/v1alpha1`},
		{"user namespaces", head + "mode: user-namespaces\n", "line 3 (mode): mode user-namespaces (hostUsers: false) is not supported"},
		{"maximum below default", head + "resources:\n  default:\n    limits: {memory: 8Gi}\n  maximum: {memory: 4Gi}\n",
			"line 5 (resources.default.limits): memory=8Gi is above the maximum 4Gi"},
		{"bad quantity", head + "resources:\n  maximum: {cpu: lots}\n", "line 4 (resources.maximum)"},
		{"bad platform", head + "platforms:\n  arm64:\n    nodeSelector: {a: b}\n", `line 4 (platforms.arm64): "arm64"`},
		{"bad toleration", head + "platforms:\n  \"*\":\n    tolerations: [{key: a, effect: Sometimes}]\n", "line 5 (platforms.*.tolerations)"},
		{"bad duration", head + "maxLifetime:\n  default: 1 week\n", "line 4 (maxLifetime.default)"},
		{"lifetime bounds", head + "maxLifetime: {default: 8h, maximum: 6h}\n", "line 3 (maxLifetime.default): default 8h0m0s is above the maximum 6h0m0s"},
		{"not governed", head + "jobInputs: [platforms]\n", `line 3 (jobInputs.[0]): "platforms" is not an input a template governs`},
		{"config names a file", head + "buildkitdConfig: |\n  [registry.\"r.example\"]\n    ca = [\"/etc/ca.pem\"]\n", "(buildkitdConfig)"},
		{"two documents", head + "---\n" + head, "more than one YAML document"},
		{"not YAML", head + "image: [\n", "cluster template ci/t, line 3: did not find expected node content"},
		{"empty", "", "empty; a template starts with apiVersion"},
		{"cache mode", head + "cache:\n  mode: always\n", `line 4 (cache.mode): "always", want off or volume`},
		{"cache size", head + "cache:\n  size: {maximum: 2Ti}\n", "line 4 (cache.size.maximum): 2Ti is out of range: a quantity from 1Gi to 500Gi"},
		{"cache size bounds", head + "cache:\n  size: {default: 50Gi, maximum: 20Gi}\n", "line 4 (cache.size.default): default 50Gi is above the maximum 20Gi"},
		{"cache slots", head + "cache:\n  maxSlots: 100\n", "line 4 (cache.maxSlots): 100 is out of range: a whole number from 1 to 64"},
		{"cache storage class", head + "cache:\n  storageClass: Fast_SSD\n", "line 4 (cache.storageClass)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "ci/t")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse = %v\nwant %q", err, tc.want)
			}
		})
	}
}
