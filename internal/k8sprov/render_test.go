package k8sprov

import (
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with the current output")

var (
	fixedTime  = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	testRunner = &RunnerPod{Name: "arc-runner-x7k2p-runner-9zq4m", Namespace: "ci", UID: "3f1c2b9a-5d4e-4c3b-9a8f-7e6d5c4b3a21"}
	testJob    = cijob.Identity{
		CIPlatform:   "github",
		Repository:   "org/app",
		RepositoryID: "1296269",
		RunID:        "9876543210",
		RunAttempt:   "1",
		JobID:        "27182818284",
		JobName:      "image (linux/amd64,linux/arm64)",
		Commit:       "0123456789abcdef0123456789abcdef01234567",
		URL:          "https://github.example/org/app/actions/runs/9876543210/job/27182818284",
	}
)

// testPlan parses inputs for testJob and plans them against testRunner at fixedTime.
func testPlan(t *testing.T, in Inputs) Plan {
	t.Helper()
	opts, err := ParseOptions(testJob, in)
	if err != nil {
		t.Fatalf("ParseOptions: %v", err)
	}
	res := Resolution{Namespace: "ci", Owner: testRunner, CreatedAt: fixedTime, DefaultPlatform: platform.MustParse("linux/amd64")}
	if opts.Owner.None {
		res.Owner = nil
	}
	plan, err := NewPlan(opts, res)
	if err != nil {
		t.Fatalf("NewPlan: %v", err)
	}
	return plan
}

func assertGolden(t *testing.T, name string, obj any) {
	t.Helper()
	got, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatalf("marshalling %s: %v", name, err)
	}
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run go test -run %s -update to create it): %v", t.Name(), err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the golden file; if the change is intended, run go test ./internal/k8sprov -run %s -update\n%s",
			path, t.Name(), lineDiff(string(want), string(got)))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+), enough to spot a change.
func lineDiff(want, got string) string {
	wantLines, gotLines := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range wantLines {
		if !slices.Contains(gotLines, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range gotLines {
		if !slices.Contains(wantLines, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

func renderPod(t *testing.T, plan Plan, p string) *corev1.Pod {
	t.Helper()
	pod, err := RenderPod(plan, platform.MustParse(p))
	if err != nil {
		t.Fatalf("RenderPod(%s): %v", p, err)
	}
	assertPodInvariants(t, plan, pod)
	return pod
}

func TestRenderPodGolden(t *testing.T) {
	for _, tc := range []struct {
		golden   string
		platform string
		inputs   Inputs
	}{
		{"pod-amd64.yaml", "linux/amd64", Inputs{Platforms: "linux/amd64,linux/arm64"}},
		{"pod-arm64-custom.yaml", "linux/arm64", Inputs{
			Platforms:              "linux/amd64,linux/arm64",
			Requests:               "cpu=2,memory=4Gi",
			Limits:                 "memory=8Gi,ephemeral-storage=20Gi",
			NodeSelector:           "linux/arm64=node.example.com/pool=arm-builders,disk=ssd;*=team=ci",
			Tolerations:            "linux/arm64=arch=arm64:NoSchedule,dedicated:NoSchedule;*=spot=true:NoExecute:300",
			Labels:                 "team=platform,cost-center=ci",
			Annotations:            "example.com/contact=platform@example.com\nexample.com/note=built for a, b and c",
			BuildkitdFlags:         `--debug --oci-worker-gc-keepstorage="10000"`,
			BuildkitdConfig:        "[registry.\"docker.io\"]\n  mirrors = [\"mirror.example.com\"]\n[registry.\"mirror.example.com\"]\n  ca = [\"" + filesDir + "/file-0-ca.pem\"]\n",
			BuildkitdFiles:         map[string][]byte{"file-0-ca.pem": []byte("CA")},
			Timeout:                "60s",
			MaxLifetime:            "2h",
			TerminationGracePeriod: "10m",
		}},
		{"pod-amd64-owner-none.yaml", "linux/amd64", Inputs{OwnerPod: "none"}},
		{"pod-arm64-rootless.yaml", "linux/arm64", Inputs{Platforms: "linux/arm64", Rootless: "true"}},
		{"pod-arm-v7.yaml", "linux/arm/v7", Inputs{Platforms: "linux/arm/v7"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			plan := testPlan(t, tc.inputs)
			assertGolden(t, tc.golden, renderPod(t, plan, tc.platform))
		})
	}
}

// assertPodInvariants checks what every builder pod must have, whatever the inputs.
func assertPodInvariants(t *testing.T, plan Plan, pod *corev1.Pod) {
	t.Helper()
	if msgs := validation.IsDNS1123Label(pod.Name); len(msgs) > 0 {
		t.Errorf("pod name %q is not a DNS label: %v", pod.Name, msgs)
	}
	if pod.Namespace != plan.Namespace {
		t.Errorf("pod namespace %q, plan namespace %q", pod.Namespace, plan.Namespace)
	}
	for key, want := range map[string]string{LabelName: NameBuildkit, LabelManagedBy: ManagedBy, LabelJobKey: string(plan.Key)} {
		if got := pod.Labels[key]; got != want {
			t.Errorf("label %s = %q, want %q", key, got, want)
		}
	}
	if !IsManaged(pod) {
		t.Error("IsManaged(pod) is false")
	}
	if expires, ok := ExpiresAt(pod); !ok || !expires.Equal(plan.ExpiresAt()) {
		t.Errorf("ExpiresAt(pod) = %v, %v; want %v", expires, ok, plan.ExpiresAt())
	}
	if plan.Owner == nil {
		if len(pod.OwnerReferences) != 0 {
			t.Errorf("owner none, but owner references %v", pod.OwnerReferences)
		}
	} else {
		if len(pod.OwnerReferences) != 1 {
			t.Fatalf("owner references %v, want exactly the runner pod", pod.OwnerReferences)
		}
		ref := pod.OwnerReferences[0]
		if ref.APIVersion != "v1" || ref.Kind != "Pod" || ref.Name != plan.Owner.Name || ref.UID != plan.Owner.UID {
			t.Errorf("owner reference %+v does not name the runner pod %+v", ref, plan.Owner)
		}
		if ref.BlockOwnerDeletion != nil || ref.Controller != nil && *ref.Controller {
			t.Errorf("owner reference %+v sets blockOwnerDeletion or controller", ref)
		}
	}
	spec := pod.Spec
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("service account token is mounted")
	}
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Error("service links are enabled")
	}
	if spec.ActiveDeadlineSeconds == nil || *spec.ActiveDeadlineSeconds != int64(plan.Options.MaxLifetime/time.Second) {
		t.Errorf("activeDeadlineSeconds %v, want the max lifetime %s", spec.ActiveDeadlineSeconds, plan.Options.MaxLifetime)
	}
	arch := pod.Labels[LabelArch]
	p := platform.MustParse(pod.Annotations[AnnotationPlatform])
	if arch != p.Slug() || spec.NodeSelector[corev1.LabelArchStable] == "" {
		t.Errorf("arch label %q, platform annotation %q, node selector %v", arch, p, spec.NodeSelector)
	}
	c := spec.Containers[0]
	if c.ReadinessProbe.InitialDelaySeconds != 0 || c.ReadinessProbe.PeriodSeconds != 1 {
		t.Errorf("readiness probe is not immediate and every second: %+v", c.ReadinessProbe)
	}
	// Each pod mounts its own server key and nobody else's.
	for _, v := range spec.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, item := range v.Secret.Items {
			if strings.HasSuffix(item.Key, ".key.pem") && item.Key != SecretKeyKey(p) {
				t.Errorf("pod for %s mounts %s", p, item.Key)
			}
		}
	}
}

func TestRenderPodRefusesPlatformOutsideThePlan(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64"})
	if _, err := RenderPod(plan, platform.MustParse("linux/arm64")); err == nil {
		t.Fatal("RenderPod rendered a pod for a platform that was not asked for")
	}
}

func TestPodNamesAreShortAndDistinct(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64,linux/amd64/v3,linux/arm64,linux/arm/v6,linux/arm/v7,linux/mips64le,linux/ppc64le"})
	seen := map[string]bool{}
	for _, p := range plan.Platforms {
		name := plan.PodName(p)
		if len(name) > 63 || seen[name] {
			t.Errorf("pod name %q is too long or not unique", name)
		}
		seen[name] = true
		if !strings.HasPrefix(name, "buildkit-"+string(plan.Key)+"-") {
			t.Errorf("pod name %q does not start with the job key", name)
		}
	}
}

func TestDefaultPlatformComesFromTheResolution(t *testing.T) {
	opts, err := ParseOptions(testJob, Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(opts, Resolution{Namespace: "ci", Owner: testRunner, CreatedAt: fixedTime, DefaultPlatform: platform.MustParse("linux/arm64")})
	if err != nil {
		t.Fatal(err)
	}
	if got := platform.FormatList(plan.Platforms); got != "linux/arm64" {
		t.Errorf("platforms = %s, want the runner node's linux/arm64", got)
	}
}

func TestNewPlanRefuses(t *testing.T) {
	opts, err := ParseOptions(testJob, Inputs{Platforms: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	noneOpts, err := ParseOptions(testJob, Inputs{Platforms: "linux/amd64", OwnerPod: "none"})
	if err != nil {
		t.Fatal(err)
	}
	namedOpts, err := ParseOptions(testJob, Inputs{Platforms: "linux/amd64", OwnerPod: "someone-else", Namespace: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	otherNamespace := *testRunner
	otherNamespace.Namespace = "runners"
	noUID := *testRunner
	noUID.UID = ""
	for name, tc := range map[string]struct {
		opts Options
		res  Resolution
		want string
	}{
		"owner in another namespace": {opts, Resolution{Namespace: "ci", Owner: &otherNamespace, CreatedAt: fixedTime}, "garbage collector"},
		"owner without UID":          {opts, Resolution{Namespace: "ci", Owner: &noUID, CreatedAt: fixedTime}, "no UID"},
		"no owner resolved":          {opts, Resolution{Namespace: "ci", CreatedAt: fixedTime}, "owner to none"},
		"owner despite none":         {noneOpts, Resolution{Namespace: "ci", Owner: testRunner, CreatedAt: fixedTime}, "none"},
		"other owner than named":     {namedOpts, Resolution{Namespace: "ci", Owner: testRunner, CreatedAt: fixedTime}, "someone-else"},
		"no namespace":               {opts, Resolution{Owner: testRunner, CreatedAt: fixedTime}, "namespace"},
		"no time":                    {opts, Resolution{Namespace: "ci", Owner: testRunner}, "time"},
		"no platform at all":         {Options{Job: testJob}.WithDefaults(), Resolution{Namespace: "ci", Owner: testRunner, CreatedAt: fixedTime}, "no default platform"},
		"invalid options":            {Options{Job: testJob}, Resolution{Namespace: "ci", Owner: testRunner, CreatedAt: fixedTime}, "image"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewPlan(tc.opts, tc.res)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewPlan: err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestRenderSecretGolden(t *testing.T) {
	plan := testPlan(t, Inputs{
		Platforms:       "linux/amd64,linux/arm64",
		Labels:          "team=platform",
		BuildkitdConfig: "debug = true\n[registry.\"r.example.com\"]\n  ca = [\"" + filesDir + "/file-0-ca.pem\"]\n",
		BuildkitdFiles:  map[string][]byte{"file-0-ca.pem": []byte("the registry's CA")},
	})
	_, secret := renderTestSecret(t, plan)
	if !IsManaged(secret) || secret.Name != plan.SecretName() || secret.Namespace != "ci" {
		t.Errorf("secret %s/%s is not the plan's managed secret", secret.Namespace, secret.Name)
	}
	if len(secret.OwnerReferences) != 1 || secret.OwnerReferences[0].UID != testRunner.UID || secret.OwnerReferences[0].BlockOwnerDeletion != nil {
		t.Errorf("secret owner references %+v", secret.OwnerReferences)
	}
	// Keys and signatures change every run; the golden file shows what each value holds instead.
	masked := secret.DeepCopy()
	masked.Data = nil
	masked.StringData = map[string]string{}
	for key, value := range secret.Data {
		masked.StringData[key] = describePEM(t, value)
	}
	assertGolden(t, "secret.yaml", masked)

	// Every pod's secret items exist in the Secret.
	for _, p := range plan.Platforms {
		pod, err := RenderPod(plan, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range pod.Spec.Volumes {
			if v.Secret == nil {
				continue
			}
			if v.Secret.SecretName != secret.Name {
				t.Errorf("pod mounts secret %q, rendered %q", v.Secret.SecretName, secret.Name)
			}
			for _, item := range v.Secret.Items {
				if _, ok := secret.Data[item.Key]; !ok {
					t.Errorf("pod for %s mounts key %q, which the Secret lacks", p, item.Key)
				}
			}
		}
	}
}

// describePEM replaces PEM data by a description that does not change from run to run, and
// leaves other data as it is.
func describePEM(t *testing.T, data []byte) string {
	t.Helper()
	block, rest := pem.Decode(data)
	if block == nil {
		return string(data)
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		t.Errorf("more than one PEM block")
	}
	switch block.Type {
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("certificate does not parse: %v", err)
		}
		return fmt.Sprintf("<certificate subject=%q issuer=%q dns=%v ca=%t notBefore=%s notAfter=%s>",
			cert.Subject.String(), cert.Issuer.String(), cert.DNSNames, cert.IsCA,
			cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339))
	case "PRIVATE KEY":
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatalf("key does not parse: %v", err)
		}
		return fmt.Sprintf("<private key %T>", key)
	}
	t.Fatalf("unexpected PEM block %q", block.Type)
	return ""
}

// renderTestSecret issues plan's credentials and renders its Secret, as Provision does.
func renderTestSecret(t *testing.T, plan Plan) (*Credentials, *corev1.Secret) {
	t.Helper()
	creds, err := IssueCredentials(plan)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := RenderSecret(plan, creds)
	if err != nil {
		t.Fatal(err)
	}
	return creds, secret
}

func TestRenderSecretRefusesMissingCredentials(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64,linux/arm64"})
	creds, err := IssueCredentials(plan)
	if err != nil {
		t.Fatal(err)
	}
	delete(creds.Servers, platform.MustParse("linux/arm64"))
	if _, err := RenderSecret(plan, creds); err == nil || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("RenderSecret without arm64's certificate: err = %v", err)
	}
	if _, err := RenderSecret(plan, nil); err == nil {
		t.Error("RenderSecret without credentials succeeded")
	}
}

func TestScheduleForMergesRules(t *testing.T) {
	plan := testPlan(t, Inputs{
		Platforms:    "linux/amd64,linux/arm/v7",
		NodeSelector: "*=team=ci,pool=general;linux/arm/v7=pool=arm,kubernetes.io/arch=arm64",
		Tolerations:  "*=spot:NoExecute:60;linux/arm/v7=spot:NoExecute:600,arm:NoSchedule",
	})
	selector, tolerations := plan.Options.ScheduleFor(platform.MustParse("linux/arm/v7"))
	want := map[string]string{corev1.LabelOSStable: "linux", corev1.LabelArchStable: "arm64", "team": "ci", "pool": "arm"}
	if fmt.Sprint(selector) != fmt.Sprint(want) {
		t.Errorf("selector for arm/v7 = %v, want %v (specific rule over general, override of the default arch)", selector, want)
	}
	if len(tolerations) != 2 || *tolerations[0].TolerationSeconds != 600 || tolerations[1].Key != "arm" {
		t.Errorf("tolerations for arm/v7 = %+v, want spot for 600s then arm", tolerations)
	}
	selector, tolerations = plan.Options.ScheduleFor(platform.MustParse("linux/amd64"))
	if selector[corev1.LabelArchStable] != "amd64" || selector["pool"] != "general" || len(tolerations) != 1 {
		t.Errorf("amd64 got %v, %+v", selector, tolerations)
	}
}

func TestSelectorsAndEndpoint(t *testing.T) {
	key := JobKey("abcdefghijkl")
	if got := JobSelector(key); got != "app.kubernetes.io/managed-by=setup-ephemeral-buildkit,setup-ephemeral-buildkit.io/job-key=abcdefghijkl" {
		t.Errorf("JobSelector = %s", got)
	}
	if got := Endpoint("10.1.2.3"); got != "tcp://10.1.2.3:1234" {
		t.Errorf("Endpoint = %s", got)
	}
	if got := Endpoint("fd00::1"); got != "tcp://[fd00::1]:1234" {
		t.Errorf("Endpoint = %s", got)
	}
}
