package auditlog

import (
	"strings"
	"testing"
	"time"
)

// Two lines as kube-apiserver v1.34 writes them (trimmed of fields the counts do not read).
const sample = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ci/pods?watch=true","verb":"watch","user":{"username":"system:serviceaccount:ci:runner"},"objectRef":{"resource":"pods","namespace":"ci","apiVersion":"v1"},"requestReceivedTimestamp":"2026-12-05T05:00:01.000000Z","stageTimestamp":"2026-12-05T05:00:09.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"b","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ci/pods/b/exec?command=buildctl","verb":"create","user":{"username":"system:serviceaccount:ci:driver"},"objectRef":{"resource":"pods","namespace":"ci","name":"b","apiVersion":"v1","subresource":"exec"},"requestReceivedTimestamp":"2026-12-05T05:00:02.000000Z","stageTimestamp":"2026-12-05T05:00:02.100000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"c","stage":"ResponseStarted","requestURI":"/api/v1/namespaces/ci/pods?watch=true","verb":"watch","user":{"username":"system:serviceaccount:ci:runner"},"objectRef":{"resource":"pods","namespace":"ci","apiVersion":"v1"},"requestReceivedTimestamp":"2026-12-05T05:00:01.000000Z","stageTimestamp":"2026-12-05T05:00:01.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"d","stage":"ResponseComplete","requestURI":"/api?timeout=32s","verb":"get","user":{"username":"system:serviceaccount:ci:runner"},"requestReceivedTimestamp":"2026-12-05T05:00:03.000000Z","stageTimestamp":"2026-12-05T05:00:03.000000Z"}
`

func TestCountByUserVerbAndResource(t *testing.T) {
	events, err := Read(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 3 {
		t.Fatalf("read %d completed requests, want 3 (a ResponseStarted stage is not a request)", len(events))
	}
	from := time.Date(2026, 12, 5, 5, 0, 0, 0, time.UTC)
	runner := Count(events, ServiceAccount("ci", "runner"), from, from.Add(time.Minute))
	if runner.Total() != 2 || runner["watch pods"] != 1 || runner["get /api"] != 1 {
		t.Errorf("runner's requests = %v", runner)
	}
	if got := runner.String(); got != "1 get /api, 1 watch pods" {
		t.Errorf("String() = %q", got)
	}
	driver := Count(events, ServiceAccount("ci", "driver"), from, from.Add(time.Minute))
	if driver["create pods/exec"] != 1 || driver.Total() != 1 {
		t.Errorf("driver's requests = %v", driver)
	}
	if n := Count(events, ServiceAccount("ci", "runner"), from.Add(2*time.Second), from.Add(time.Minute)).Total(); n != 1 {
		t.Errorf("requests received from 05:00:02: %d, want 1 (the window is by receipt)", n)
	}
}

func TestReadRefusesGarbage(t *testing.T) {
	if _, err := Read(strings.NewReader("not json\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("Read(garbage) = %v, want an error naming the line", err)
	}
}
