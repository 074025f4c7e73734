package buildx

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseInspect(t *testing.T) {
	tests := []struct {
		fixture string
		want    Inspection
	}{
		{"inspect-running.txt", Inspection{Name: "ebk-abc", Driver: "remote", Nodes: []NodeStatus{
			{
				Name: "ebk-abc-amd64", Endpoint: "tcp://10.244.1.7:1234", Status: "running", BuildKitVersion: "v0.34.2",
				Platforms:           []string{"linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/386"},
				ConfiguredPlatforms: []string{"linux/amd64"},
			},
			{
				Name: "ebk-abc-arm64", Endpoint: "tcp://10.244.2.9:1234", Status: "running", BuildKitVersion: "v0.34.2",
				Platforms:           []string{"linux/arm64", "linux/arm/v7", "linux/arm/v6"},
				ConfiguredPlatforms: []string{"linux/arm64"},
			},
		}}},
		{"inspect-node-error.txt", Inspection{Name: "ebk-abc", Driver: "remote", Nodes: []NodeStatus{
			{
				Name: "ebk-abc-amd64", Endpoint: "tcp://10.244.1.7:1234", Status: "running", BuildKitVersion: "v0.34.2",
				Platforms: []string{"linux/amd64", "linux/amd64/v2"}, ConfiguredPlatforms: []string{"linux/amd64"},
			},
			{
				Name: "ebk-abc-arm64", Endpoint: "tcp://10.244.2.9:1234",
				Error: "failed to connect: tls: failed to verify certificate: x509: certificate signed by unknown authority\nsecond line of the error",
			},
		}}},
		{"inspect-builder-error.txt", Inspection{Name: "ebk-abc", Driver: "remote", Error: "context deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			got, err := ParseInspect(string(fixture(t, tt.fixture)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// TestParseInspectRealOutput reads what buildx v0.38.2 printed for two remote nodes backed by
// real buildkitd v0.34.2 daemons (both amd64, one configured as linux/arm64): once bootstrapped,
// once with the second daemon stopped.
func TestParseInspectRealOutput(t *testing.T) {
	amd64 := NodeStatus{
		Name: "ebk-abc-amd64", Endpoint: "tcp://127.0.0.1:12341", Status: "running", BuildKitVersion: "v0.34.2",
		Platforms:           []string{"linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4"},
		ConfiguredPlatforms: []string{"linux/amd64"},
	}
	running, err := ParseInspect(string(fixture(t, "inspect-v0.38.2-running.txt")))
	if err != nil {
		t.Fatal(err)
	}
	want := Inspection{Name: "ebk-abc", Driver: "remote", Nodes: []NodeStatus{amd64, {
		Name: "ebk-abc-arm64", Endpoint: "tcp://127.0.0.1:12342", Status: "running", BuildKitVersion: "v0.34.2",
		// buildx lists the configured platform whatever the daemon supports: only asking the
		// daemon's workers tells the truth.
		Platforms:           []string{"linux/arm64", "linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4"},
		ConfiguredPlatforms: []string{"linux/arm64"},
	}}}
	if !reflect.DeepEqual(running, want) {
		t.Errorf("running:\n%+v\nwant\n%+v", running, want)
	}
	b := Builder{Name: "ebk-abc", Nodes: []Node{
		{Platform: "linux/amd64", Endpoint: "tcp://127.0.0.1:12341"},
		{Platform: "linux/arm64", Endpoint: "tcp://127.0.0.1:12342"},
	}}
	if err := verify(b.withDefaults(), running); err != nil {
		t.Errorf("verify(running) = %v", err)
	}

	inactive, err := ParseInspect(string(fixture(t, "inspect-v0.38.2-inactive.txt")))
	if err != nil {
		t.Fatal(err)
	}
	want = Inspection{Name: "ebk-abc", Driver: "remote", Nodes: []NodeStatus{amd64, {
		Name: "ebk-abc-arm64", Endpoint: "tcp://127.0.0.1:12342", Status: "inactive",
		Platforms: []string{"linux/arm64"}, ConfiguredPlatforms: []string{"linux/arm64"},
	}}}
	if !reflect.DeepEqual(inactive, want) {
		t.Errorf("inactive:\n%+v\nwant\n%+v", inactive, want)
	}
	if err := verify(b.withDefaults(), inactive); err == nil || !strings.Contains(err.Error(), `node ebk-abc-arm64 (tcp://127.0.0.1:12342): status "inactive"`) {
		t.Errorf("verify(inactive) = %v", err)
	}
}

func TestParseInspectFlagsAndCRLF(t *testing.T) {
	out := "Name:   b\r\nDriver: remote\r\n\r\nNodes:\r\nName:                  b0\r\nEndpoint:              tcp://x:1\r\n" +
		"Status:                running\r\nBuildKit daemon flags: --debug --oci-worker-gc=false\r\nPlatforms:             linux/amd64*\r\n" +
		"Features:\r\n Cache export: true\r\nFuture field:          anything\r\n"
	got, err := ParseInspect(out)
	if err != nil {
		t.Fatal(err)
	}
	want := NodeStatus{Name: "b0", Endpoint: "tcp://x:1", Status: "running", BuildkitdFlags: "--debug --oci-worker-gc=false",
		Platforms: []string{"linux/amd64"}, ConfiguredPlatforms: []string{"linux/amd64"}}
	if len(got.Nodes) != 1 || !reflect.DeepEqual(got.Nodes[0], want) {
		t.Errorf("got %+v, want one node %+v", got.Nodes, want)
	}
}

func TestParseInspectRejects(t *testing.T) {
	for name, out := range map[string]string{
		"empty":              "",
		"no name":            "Driver: remote\n\nNodes:\n",
		"no nodes or error":  "Name: b\nDriver: remote\n",
		"node field no name": "Name: b\nDriver: remote\n\nNodes:\nEndpoint: tcp://x:1\n",
	} {
		if _, err := ParseInspect(out); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
