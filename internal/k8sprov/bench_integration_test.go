package k8sprov

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkIntegrationProvisionTeardown provisions two builders (amd64 and emulated arm64) for
// one job and tears them down, against the local cluster under the shipped Role. It reports what
// the tool adds on top of the pods' own start-up: the time from the last buildkitd container
// start to every builder answering ListWorkers over mTLS, the API requests of provision and of
// teardown, and the teardown time (without waiting for the preStop hooks).
func BenchmarkIntegrationProvisionTeardown(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env := newJobEnvB(b, ctx)
	prov := env.provisioner(nil)
	var afterStart, total, teardown time.Duration
	var provisionReqs, teardownReqs int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plan := env.planB(b, fmt.Sprintf("bench-%d", i), Inputs{Platforms: "linux/amd64,linux/arm64"})
		env.requests.Store(0)
		started := time.Now()
		result, err := prov.Provision(ctx, plan)
		if err != nil {
			b.Fatalf("Provision: %v", err)
		}
		total += time.Since(started)
		provisionReqs += env.requests.Load()
		var lastStart, lastReady time.Time
		for _, bl := range result.Builders {
			if bl.Started.After(lastStart) {
				lastStart = bl.Started
			}
			if bl.Ready.After(lastReady) {
				lastReady = bl.Ready
			}
		}
		afterStart += lastReady.Sub(lastStart)
		env.requests.Store(0)
		started = time.Now()
		if _, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Secrets: []ObjectRef{result.Secret}}); err != nil {
			b.Fatalf("Teardown: %v", err)
		}
		teardown += time.Since(started)
		teardownReqs += env.requests.Load()
	}
	n := float64(b.N)
	b.ReportMetric(float64(total.Milliseconds())/n, "ms-provision")
	b.ReportMetric(float64(afterStart.Milliseconds())/n, "ms-ready-after-container-start")
	b.ReportMetric(float64(provisionReqs)/n, "api-requests-provision")
	b.ReportMetric(float64(teardownReqs)/n, "api-requests-teardown")
	b.ReportMetric(float64(teardown.Milliseconds())/n, "ms-teardown")
}

// BenchmarkIntegrationConcurrentJobs provisions several one-builder jobs at once, as a busy
// runner pool would, and reports the slowest job's provision time and the total requests.
func BenchmarkIntegrationConcurrentJobs(b *testing.B) {
	const jobs = 6
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env := newJobEnvB(b, ctx)
	prov := env.provisioner(nil)
	var slowest, sum time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, jobs)
		for j := 0; j < jobs; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				plan := env.planB(b, fmt.Sprintf("concurrent-%d-%d", i, j), Inputs{Platforms: "linux/amd64"})
				started := time.Now()
				result, err := prov.Provision(ctx, plan)
				if err != nil {
					errs <- err
					return
				}
				took := time.Since(started)
				mu.Lock()
				sum += took
				if took > slowest {
					slowest = took
				}
				mu.Unlock()
				if _, err := prov.Teardown(ctx, env.ns, plan.Key, plan.Owner, TeardownOptions{Secrets: []ObjectRef{result.Secret}}); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(slowest.Milliseconds()), "ms-slowest-job")
	b.ReportMetric(float64(sum.Milliseconds())/float64(b.N*jobs), "ms-mean-job")
}
