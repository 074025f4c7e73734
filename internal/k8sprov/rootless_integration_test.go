package k8sprov

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
)

// TestIntegrationRootlessBuildersBuild provisions rootless builders for linux/amd64 and
// linux/arm64 (the local rootless image: rootlesskit, Debian's newuidmap/newgidmap) under the
// admission policy's strict mode (allowPrivileged false), runs a Dockerfile with a RUN step on
// each, and logs each builder's start-up time beside a rootful builder's, measured the same way
// in the same cluster.
func TestIntegrationRootlessBuildersBuild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	env := newAdmissionEnv(t, ctx, func(p *admissionregistrationv1.ValidatingAdmissionPolicy) {
		variable(t, p, "allowPrivileged").Expression = "false"
	})
	buildctl, err := exec.LookPath("buildctl")
	if err != nil {
		t.Fatalf("buildctl not in PATH (make tools puts it in $CACHE_DIR/bin): %v", err)
	}
	if got := env.cluster.Info.Images["buildkit-rootless"]; got != DefaultRootlessImage {
		t.Fatalf("the local cluster's rootless image is %q, want %s (hack/cmd/mkimages writes buildkit-rootless.tar)", got, DefaultRootlessImage)
	}
	probes := buildArchProbes(t, ctx)

	plan := env.plan(t, "rootless-build", Inputs{Platforms: "linux/amd64,linux/arm64", Rootless: "true"})
	prov := env.provisioner(t)
	started := time.Now()
	result, err := prov.Provision(ctx, plan)
	if err != nil {
		t.Fatalf("Provision of rootless builders under the strict admission policy: %v", err)
	}
	t.Logf("rootless: both builders usable after %v", time.Since(started).Round(time.Millisecond))
	defer func() {
		if _, err := prov.Teardown(context.WithoutCancel(ctx), env.ns, plan.Key, plan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{result.Secret}}); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	}()
	tlsDir := writeClientTLS(t, result.Credentials)
	for _, b := range result.Builders {
		logStartup(t, "rootless", b)
		arch := b.Platform.Architecture
		dir := probes[arch]
		out := filepath.Join(t.TempDir(), "out")
		cmd := exec.CommandContext(ctx, buildctl, "--addr", b.Endpoint,
			"--tlscacert", filepath.Join(tlsDir, "ca.pem"), "--tlscert", filepath.Join(tlsDir, "cert.pem"),
			"--tlskey", filepath.Join(tlsDir, "key.pem"), "--tlsservername", b.ServerName,
			"build", "--frontend", "dockerfile.v0", "--local", "context="+dir, "--local", "dockerfile="+dir,
			"--opt", "platform=linux/"+arch, "--output", "type=local,dest="+out)
		if log, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("rootless %s builder: build with a RUN step failed: %v\n%s", b.Platform, err, log)
			continue
		}
		got, err := os.ReadFile(filepath.Join(out, "result"))
		if err != nil {
			t.Errorf("rootless %s builder: the RUN step left no result: %v", b.Platform, err)
			continue
		}
		if strings.TrimSpace(string(got)) != "linux/"+arch {
			t.Errorf("rootless %s builder: the RUN step ran as %q", b.Platform, got)
		}
		t.Logf("rootless %s builder: the RUN step ran as %s", b.Platform, strings.TrimSpace(string(got)))
	}

	// The rootful figure, from the same cluster, for comparison.
	rootfulEnv := newJobEnv(t, ctx)
	rootfulPlan := rootfulEnv.plan(t, "rootful-startup", Inputs{Platforms: "linux/amd64,linux/arm64"})
	rootfulProv := rootfulEnv.provisioner(t)
	started = time.Now()
	rootful, err := rootfulProv.Provision(ctx, rootfulPlan)
	if err != nil {
		t.Fatalf("Provision of rootful builders: %v", err)
	}
	t.Logf("rootful: both builders usable after %v", time.Since(started).Round(time.Millisecond))
	for _, b := range rootful.Builders {
		logStartup(t, "rootful", b)
	}
	if _, err := rootfulProv.Teardown(ctx, rootfulEnv.ns, rootfulPlan.Key, rootfulPlan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{rootful.Secret}}); err != nil {
		t.Errorf("Teardown of the rootful builders: %v", err)
	}
}

// logStartup logs how long a builder took from its pod's creation to answering over gRPC.
func logStartup(t *testing.T, mode string, b Builder) {
	t.Helper()
	t.Logf("STARTUP %s %s: created->scheduled %v, ->container started %v, ->usable %v",
		mode, b.Platform, b.Scheduled.Sub(b.Created).Round(time.Millisecond),
		b.Started.Sub(b.Created).Round(time.Millisecond), b.Ready.Sub(b.Created).Round(time.Millisecond))
}

// buildArchProbes builds the static architecture probe for amd64 and arm64 and returns, per
// architecture, a build context holding it and a Dockerfile whose RUN step runs it.
func buildArchProbes(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		dir := t.TempDir()
		build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "archprobe"), "../testing/localcluster/testdata/archprobe")
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the probe for %s: %v\n%s", arch, err, out)
		}
		dockerfile := "FROM scratch\nCOPY archprobe /archprobe\nRUN [\"/archprobe\", \"/result\"]\n"
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs[arch] = dir
	}
	return dirs
}

// writeClientTLS writes the job's client certificate, key and CA certificate for buildctl.
func writeClientTLS(t *testing.T, c *Credentials) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string][]byte{"ca.pem": c.CACertPEM, "cert.pem": c.Client.CertPEM, "key.pem": c.Client.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
