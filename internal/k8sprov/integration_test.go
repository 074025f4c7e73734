package k8sprov

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/pki"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
	"github.com/org/setup-ephemeral-buildkit/internal/testing/localcluster"
)

// jobEnv is one test's world: a namespace with the shipped Role bound to a "runner"
// ServiceAccount, a runner pod, and clients for the admin and for that ServiceAccount.
type jobEnv struct {
	cluster  *localcluster.Cluster
	ns       string
	admin    kubernetes.Interface
	runner   *corev1.Pod
	saConfig *rest.Config
	requests *atomic.Int64
}

// archSelectors maps both architectures onto the local node: amd64 natively, arm64 through the
// node's qemu emulation, which kubernetes.io/arch cannot express.
func archSelectors(c *localcluster.Cluster) string {
	return "linux/amd64=" + c.Info.ArchNodeLabels["amd64"] + ";linux/arm64=kubernetes.io/arch-," + c.Info.ArchNodeLabels["arm64"]
}

func newJobEnv(t *testing.T, ctx context.Context) *jobEnv { return newJobEnvB(t, ctx) }

func newJobEnvB(t testing.TB, ctx context.Context) *jobEnv {
	t.Helper()
	c := localcluster.ForTest(t)
	admin := kubernetes.NewForConfigOrDie(c.AdminConfig())
	env := &jobEnv{cluster: c, ns: c.CreateNamespace(ctx, t, "prov"), admin: admin, requests: &atomic.Int64{}}
	c.ApplyShippedRBAC(ctx, t, env.ns, "runner", "../../deploy/rbac.yaml")
	var err error

	env.runner = c.CreateRunnerPod(ctx, t, env.ns, "runner-pod", "runner")
	env.saConfig, err = c.ServiceAccountConfig(ctx, env.ns, "runner")
	if err != nil {
		t.Fatal(err)
	}
	counter := env.requests
	env.saConfig.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			counter.Add(1)
			return rt.RoundTrip(r)
		})
	}
	return env
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// plan builds a plan for this env's runner pod with the given inputs.
func (e *jobEnv) plan(t *testing.T, jobID string, in Inputs) Plan { return e.planB(t, jobID, in) }

func (e *jobEnv) planB(t testing.TB, jobID string, in Inputs) Plan {
	t.Helper()
	if in.NodeSelector == "" {
		in.NodeSelector = archSelectors(e.cluster)
	}
	in.TerminationGracePeriod = "5s"
	opts, err := ParseOptions(cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: jobID, JobName: "image"}, in)
	if err != nil {
		t.Fatal(err)
	}
	opts.DrainQuietPeriod = time.Second
	var owner *RunnerPod
	if !opts.Owner.None {
		owner = &RunnerPod{Name: e.runner.Name, Namespace: e.ns, UID: e.runner.UID}
	}
	plan, err := NewPlan(opts, Resolution{Namespace: e.ns, Owner: owner, DefaultPlatform: platform.MustParse("linux/amd64"), CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// provisioner logs progress to t; a nil t (benchmarks) discards it.
func (e *jobEnv) provisioner(t testing.TB) *Provisioner {
	prov := &Provisioner{Client: kubernetes.NewForConfigOrDie(e.saConfig)}
	if t != nil {
		prov.Progress = func(p Progress) { t.Logf("%s %s: %s", p.Platform, p.Pod, p.Message) }
	}
	return prov
}

func TestIntegrationProvisionTwoArchesOverMutualTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	plan := env.plan(t, "two-arch", Inputs{Platforms: "linux/amd64,linux/arm64"})
	prov := env.provisioner(t)
	env.requests.Store(0)

	result, err := prov.Provision(ctx, plan)
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	provisionRequests := env.requests.Load()
	var lastStart, lastReady time.Time
	for _, b := range result.Builders {
		if b.Started.After(lastStart) {
			lastStart = b.Started
		}
		if b.Ready.After(lastReady) {
			lastReady = b.Ready
		}
		if !b.Platform.ServedBy(b.WorkerPlatforms) {
			t.Errorf("%s builder reports %v", b.Platform, b.WorkerPlatforms)
		}
		if b.BuildkitVersion != "v0.34.2" {
			t.Errorf("%s builder runs BuildKit %q, want v0.34.2", b.Platform, b.BuildkitVersion)
		}
		if !strings.HasPrefix(b.Endpoint, "tcp://") || b.Node != localcluster.NodeName {
			t.Errorf("%s builder endpoint %q node %q", b.Platform, b.Endpoint, b.Node)
		}
	}
	t.Logf("MEASURE last container start -> all builders answering: %v; API requests for provision: %d", lastReady.Sub(lastStart), provisionRequests)

	// The objects carry what the platform team relies on.
	for _, b := range result.Builders {
		pod, err := env.admin.CoreV1().Pods(env.ns).Get(ctx, b.Pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		refs := pod.OwnerReferences
		if len(refs) != 1 || refs[0].UID != env.runner.UID || refs[0].BlockOwnerDeletion != nil {
			t.Errorf("pod %s owner references = %+v, want exactly the runner pod without blockOwnerDeletion", pod.Name, refs)
		}
		if pod.Annotations[AnnotationRepository] != "org/app" || pod.Annotations[AnnotationExpiresAt] == "" {
			t.Errorf("pod %s annotations lack the job identity: %v", pod.Name, pod.Annotations)
		}
	}

	// A client with a certificate from another CA, or none, is refused.
	other, err := pki.NewAuthority(pki.Config{Lifetime: time.Hour, JobName: "intruder"})
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := other.IssueClient()
	if err != nil {
		t.Fatal(err)
	}
	intruderCert, err := intruder.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	good, err := result.Credentials.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*tls.Config{
		"foreign certificate": {RootCAs: good.RootCAs, ServerName: pki.ServerName, Certificates: []tls.Certificate{intruderCert}},
		"no certificate":      {RootCAs: good.RootCAs, ServerName: pki.ServerName},
	} {
		attemptCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := ListWorkers(attemptCtx, result.Builders[0].Endpoint, cfg)
		cancel()
		if err == nil {
			t.Errorf("a client with %s was served", name)
		}
	}
	if _, err := ListWorkers(ctx, result.Builders[1].Endpoint, good); err != nil {
		t.Errorf("the job's own client was refused: %v", err)
	}

	// The runners' Role creates and deletes Secrets but cannot read any: a CI job holding the
	// runner's token must not see the other Secrets of the runner namespace.
	if _, err := prov.Client.CoreV1().Secrets(env.ns).Get(ctx, result.Secret.Name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the runner's ServiceAccount read the job's Secret: err %v, want Forbidden", err)
	}
	if _, err := prov.Client.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the runner's ServiceAccount listed Secrets: err %v, want Forbidden", err)
	}

	// Objects of other jobs, or not ours, that look alike must survive teardown.
	bystanders := []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: "other-job", Labels: map[string]string{LabelManagedBy: ManagedBy, LabelJobKey: "otherjobkey1"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "not-managed", Labels: map[string]string{LabelJobKey: string(plan.Key)}}},
	}
	for _, s := range bystanders {
		if _, err := env.admin.CoreV1().Secrets(env.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	env.requests.Store(0)
	started := time.Now()
	report, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Secrets: []ObjectRef{result.Secret}})
	if err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	t.Logf("MEASURE teardown: %v, %d API requests; deleted %v; skipped %v", time.Since(started), env.requests.Load(), report.Deleted, report.Skipped)
	if len(report.Deleted) != 3 || len(report.Deleting) != 0 {
		t.Errorf("deleted %v, deleting %v; want two pods and one Secret deleted", report.Deleted, report.Deleting)
	}
	// A second teardown, as after a rollback or a repeated cleanup, while the pods drain: it
	// does not delete them again, says they are being deleted, and waits until they are gone.
	env.requests.Store(0)
	report, err = prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{result.Secret}})
	if err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	t.Logf("MEASURE teardown while draining (waiting until pods are gone): %v since the first, %d API requests; deleting %v",
		time.Since(started), env.requests.Load(), report.Deleting)
	if len(report.Deleted) != 0 || len(report.Deleting) != 2 {
		t.Errorf("second teardown: deleted %v, deleting %v; want nothing deleted again and both pods reported draining", report.Deleted, report.Deleting)
	}
	pods, _ := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	secrets, _ := env.admin.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{})
	if len(pods.Items) != 0 {
		t.Errorf("pods left after teardown: %d", len(pods.Items))
	}
	names := map[string]bool{}
	for _, s := range secrets.Items {
		names[s.Name] = true
	}
	if names[plan.SecretName()] || !names["other-job"] || !names["not-managed"] {
		t.Errorf("secrets after teardown = %v: want the job's gone and both bystanders kept", names)
	}
	// Twice is fine.
	if _, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Secrets: []ObjectRef{result.Secret}}); err != nil {
		t.Errorf("second teardown: %v", err)
	}
}

func TestIntegrationGarbageCollectorRemovesBuildersOfADeletedRunner(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	plan := env.plan(t, "gc", Inputs{Platforms: "linux/amd64"})
	result, err := env.provisioner(t).Provision(ctx, plan)
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := env.admin.CoreV1().Pods(env.ns).Delete(ctx, env.runner.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	for {
		pods, err := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
		if err != nil {
			t.Fatal(err)
		}
		_, secretErr := env.admin.CoreV1().Secrets(env.ns).Get(ctx, plan.SecretName(), metav1.GetOptions{})
		if len(pods.Items) == 0 && apierrors.IsNotFound(secretErr) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("builder %s and Secret still there after the runner pod was deleted", result.Builders[0].Pod)
		case <-time.After(250 * time.Millisecond):
		}
	}
	t.Logf("garbage collector removed the builder and Secret %v after the runner pod was deleted", time.Since(started))
}

func TestIntegrationUnschedulableArchIsDiagnosedFast(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	// No node carries kubernetes.io/arch=s390x.
	plan := env.plan(t, "unschedulable", Inputs{Platforms: "linux/s390x", NodeSelector: "*=kubernetes.io/os=linux"})
	started := time.Now()
	_, err := env.provisioner(t).Provision(ctx, plan)
	elapsed := time.Since(started)
	var berr *BuilderError
	if !errors.As(err, &berr) || berr.Reason != "Unschedulable" {
		t.Fatalf("Provision error = %v, want an Unschedulable BuilderError", err)
	}
	if !strings.Contains(berr.Message, "node(s) didn't match Pod's node affinity/selector") {
		t.Errorf("diagnosis lacks the scheduler's message: %q", berr.Message)
	}
	// The runner's Role may not list nodes: the diagnosis says so rather than failing on it.
	for _, want := range []string{"the builder for linux/s390x selects nodes with kubernetes.io/arch=s390x,kubernetes.io/os=linux",
		"which nodes exist is unknown: the token may not list nodes"} {
		if !strings.Contains(berr.Message, want) {
			t.Errorf("diagnosis lacks %q: %q", want, berr.Message)
		}
	}
	if elapsed > 10*time.Second {
		t.Errorf("diagnosed after %v, want under 10s", elapsed)
	}
	t.Logf("diagnosed in %v: %v", elapsed, err)
	assertNothingLeft(t, ctx, env, plan)
}

func TestIntegrationMissingImageIsDiagnosed(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	// A registry on loopback that does not exist: the pull fails at once, without leaving the machine.
	plan := env.plan(t, "no-image", Inputs{Platforms: "linux/amd64", Image: "127.0.0.1:9/none/buildkit:v0"})
	started := time.Now()
	_, err := env.provisioner(t).Provision(ctx, plan)
	var berr *BuilderError
	if !errors.As(err, &berr) || (berr.Reason != "ErrImagePull" && berr.Reason != "ImagePullBackOff") {
		t.Fatalf("Provision error = %v, want an image pull BuilderError", err)
	}
	if !strings.Contains(berr.Message, "127.0.0.1:9/none/buildkit:v0") {
		t.Errorf("diagnosis does not name the image: %q", berr.Message)
	}
	t.Logf("diagnosed in %v: %v", time.Since(started), err)
	assertNothingLeft(t, ctx, env, plan)
}

func TestIntegrationCrashingBuildkitdIsDiagnosedWithItsLog(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	plan := env.plan(t, "crash", Inputs{Platforms: "linux/amd64", BuildkitdFlags: "--no-such-flag"})
	_, err := env.provisioner(t).Provision(ctx, plan)
	var berr *BuilderError
	if !errors.As(err, &berr) || berr.Reason != "ContainerExited" {
		t.Fatalf("Provision error = %v, want ContainerExited", err)
	}
	if !strings.Contains(berr.Logs, "no-such-flag") {
		t.Errorf("diagnosis lacks buildkitd's own complaint; logs:\n%s", berr.Logs)
	}
	assertNothingLeft(t, ctx, env, plan)
}

func TestIntegrationRetryReplacesAKilledAttemptsBuilders(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	plan := env.plan(t, "retry", Inputs{Platforms: "linux/amd64"})
	prov := env.provisioner(t)
	// The first attempt "was killed": it provisioned and never tore down.
	first, err := prov.Provision(ctx, plan)
	if err != nil {
		t.Fatalf("first Provision: %v", err)
	}
	oldPod, err := env.admin.CoreV1().Pods(env.ns).Get(ctx, first.Builders[0].Pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The retry is a new process: a new plan (a new creation time), the same job key.
	retryPlan := env.plan(t, "retry", Inputs{Platforms: "linux/amd64"})
	if retryPlan.Key != plan.Key {
		t.Fatalf("retry has job key %s, first attempt %s", retryPlan.Key, plan.Key)
	}
	// The retry knows the Secret the killed attempt recorded (the app keeps it in the job's
	// state), and replaces it with the pods.
	prov.EarlierSecrets = []ObjectRef{first.Secret}
	second, err := prov.Provision(ctx, retryPlan)
	if err != nil {
		t.Fatalf("retried Provision: %v", err)
	}
	if first.Secret.Name == "" || first.Secret.Name == second.Secret.Name {
		t.Errorf("Secrets: first attempt %+v, retry %+v; want one of its own each", first.Secret, second.Secret)
	}
	if _, err := env.admin.CoreV1().Secrets(env.ns).Get(ctx, first.Secret.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the killed attempt's Secret %s is still there after the retry (err %v)", first.Secret.Name, err)
	}
	newPod, err := env.admin.CoreV1().Pods(env.ns).Get(ctx, second.Builders[0].Pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if newPod.Name != oldPod.Name || newPod.UID == oldPod.UID {
		t.Errorf("retry: pod %s uid %s, before %s uid %s: want the same name, a new pod", newPod.Name, newPod.UID, oldPod.Name, oldPod.UID)
	}
	// The first attempt's credentials must no longer work; the second's must.
	oldTLS, _ := first.Credentials.ClientTLSConfig()
	shortCtx, cancelShort := context.WithTimeout(ctx, 5*time.Second)
	if _, err := ListWorkers(shortCtx, second.Builders[0].Endpoint, oldTLS); err == nil {
		t.Error("the killed attempt's client certificate still works on the new builder")
	}
	cancelShort()
	if _, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{second.Secret}}); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, ctx, env, plan)
	assertNothingLeft(t, ctx, env, retryPlan)
}

func TestIntegrationMissingRBACVerbIsNamed(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	// A Role without "create" on secrets.
	role, err := env.admin.RbacV1().Roles(env.ns).Get(ctx, "setup-ephemeral-buildkit", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, rule := range role.Rules {
		if rule.Resources[0] == "secrets" {
			role.Rules[i].Verbs = []string{"delete"}
		}
	}
	if _, err := env.admin.RbacV1().Roles(env.ns).Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	plan := env.plan(t, "forbidden", Inputs{Platforms: "linux/amd64"})
	var ferr *ForbiddenError
	for {
		_, err = env.provisioner(t).Provision(ctx, plan)
		// RBAC changes reach the authorizer's cache within a moment.
		if errors.As(err, &ferr) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ferr == nil || ferr.Verb != "create" || ferr.Resource != "secrets" {
		t.Fatalf("Provision error = %v, want a ForbiddenError for create secrets", err)
	}
	if !strings.Contains(err.Error(), "deploy/rbac.yaml") {
		t.Errorf("error does not point at the Role to fix: %v", err)
	}
}

func TestIntegrationOwnerDiscovery(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	client := kubernetes.NewForConfigOrDie(env.saConfig)
	env_ := map[string]string{"POD_NAME": "gone-pod"}
	fromCI := []cijob.RunnerCandidate{{Name: "gone-runner", Source: "ACTIONS_RUNNER_POD_NAME"}, {Name: env.runner.Name, Source: "RUNNER_NAME"}}
	owner, err := ResolveOwner(ctx, client, env.ns, OwnerLookup{Candidates: fromCI, Getenv: func(k string) string { return env_[k] }, Hostname: "some-host"})
	if err != nil {
		t.Fatalf("ResolveOwner: %v", err)
	}
	if owner.Name != env.runner.Name || owner.UID != env.runner.UID || owner.Namespace != env.ns {
		t.Errorf("owner = %+v, want the runner pod with its UID", owner)
	}
	_, err = ResolveOwner(ctx, client, env.ns, OwnerLookup{Getenv: func(k string) string { return map[string]string{"POD_NAME": "gone-pod"}[k] }, Hostname: "some-host"})
	var nf *OwnerNotFoundError
	if !errors.As(err, &nf) || !strings.Contains(err.Error(), `POD_NAME="gone-pod"`) || !strings.Contains(err.Error(), `hostname="some-host"`) {
		t.Fatalf("error = %v, want one listing every candidate tried", err)
	}
	// An explicit name that does not exist is an error, not a reason to guess.
	_, err = ResolveOwner(ctx, client, env.ns, OwnerLookup{Selection: OwnerSelection{Name: "typo"}, Candidates: fromCI, Getenv: func(k string) string { return env_[k] }})
	if !errors.As(err, &nf) {
		t.Fatalf("explicit missing owner: err = %v", err)
	}
	// A namespace mismatch is refused before anything is created.
	opts, _ := ParseOptions(cijob.Identity{CIPlatform: "github", JobID: "x"}, Inputs{Platforms: "linux/amd64"})
	if _, err := NewPlan(opts, Resolution{Namespace: env.ns, Owner: &RunnerPod{Name: "r", Namespace: "elsewhere", UID: "u"}, CreatedAt: time.Now()}); err == nil {
		t.Error("an owner in another namespace was accepted")
	}
}

// fakeChecker answers JobFinished from a table keyed by job id; unknown ids are an error.
type fakeChecker map[string]bool

func (f fakeChecker) JobFinished(_ context.Context, job cijob.Identity) (bool, error) {
	finished, ok := f[job.JobID]
	if !ok {
		return false, fmt.Errorf("API unavailable for job %s", job.JobID)
	}
	return finished, nil
}

func TestIntegrationJanitor(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	now := time.Now()
	secret := func(name, jobID string, expires time.Time, labels map[string]string) {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: map[string]string{
			AnnotationJobID: jobID, AnnotationRepository: "org/app", AnnotationExpiresAt: expires.UTC().Format(time.RFC3339),
		}}}
		if _, err := env.admin.CoreV1().Secrets(env.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	managed := func(key string) map[string]string {
		return map[string]string{LabelManagedBy: ManagedBy, LabelJobKey: key}
	}
	secret("expired", "1", now.Add(-time.Minute), managed("expiredkey01"))
	secret("finished", "2", now.Add(time.Hour), managed("finishedkey1"))
	secret("running", "3", now.Add(time.Hour), managed("runningkey01"))
	secret("unknown", "4", now.Add(time.Hour), managed("unknownkey01"))
	secret("foreign", "2", now.Add(-time.Hour), map[string]string{LabelJobKey: "foreignkey01"})

	// The janitor has a Role of its own that may list Secrets (deploy/janitor-cronjob.yaml; the
	// gc verb's end-to-end test runs under it); the runners' Role may not.
	prov := &Provisioner{Client: env.admin}
	decisions, err := prov.CollectGarbage(ctx, env.ns, fakeChecker{"2": true, "3": false}, false)
	if err == nil || !strings.Contains(err.Error(), "API unavailable") {
		t.Errorf("CollectGarbage error = %v, want the checker's failure reported", err)
	}
	for _, d := range decisions {
		t.Logf("%s: delete=%v (%s)", d.Key, d.Delete, d.Reason)
	}
	left, err := env.admin.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, s := range left.Items {
		names[s.Name] = true
	}
	for name, want := range map[string]bool{"expired": false, "finished": false, "running": true, "unknown": true, "foreign": true} {
		if names[name] != want {
			t.Errorf("secret %s present=%v, want %v", name, names[name], want)
		}
	}
}

func assertNothingLeft(t *testing.T, ctx context.Context, env *jobEnv, plan Plan) {
	t.Helper()
	pods, err := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			t.Errorf("pod %s left after a failed provision", p.Name)
		}
	}
	for _, name := range SecretNames(plan.Key) {
		if _, err := env.admin.CoreV1().Secrets(env.ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("Secret %s left after a failed provision (err %v)", name, err)
		}
	}
}
