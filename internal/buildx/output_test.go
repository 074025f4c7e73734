package buildx

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with the current output")

func TestNodesJSON(t *testing.T) {
	insp, err := ParseInspect(string(fixture(t, "inspect-running.txt")))
	if err != nil {
		t.Fatal(err)
	}
	got, err := NodesJSON(testBuilder(), insp)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "nodes.golden.json")
	if *update {
		if err := os.WriteFile(golden, []byte(got+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want := string(fixture(t, "nodes.golden.json")); got+"\n" != want {
		t.Errorf("NodesJSON =\n%s\nwant (%s; go test ./internal/buildx -run TestNodesJSON -update rewrites it)\n%s", got, golden, want)
	}
	var decoded []map[string]any
	if err := json.Unmarshal([]byte(got), &decoded); err != nil {
		t.Fatal(err)
	}
}

func TestNodesOutputWithoutInspection(t *testing.T) {
	got := NodesOutput(testBuilder(), Inspection{})
	want := NodeOutput{Name: "ebk-abc-arm64", Endpoint: "tcp://10.244.2.9:1234", BuildkitdFlags: "--debug", Platforms: "linux/arm64", Pod: "ebk-abc-arm64", Node: "worker-arm64-1"}
	if len(got) != 2 || got[1] != want {
		t.Errorf("got %+v, want second %+v", got, want)
	}
}

func TestEndpointsJSON(t *testing.T) {
	b := testBuilder()
	b.Nodes[0].Endpoint = "tcp://10.244.1.7:1234?a=1&b=<2>"
	got, err := EndpointsJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"linux/amd64":"tcp://10.244.1.7:1234?a=1&b=<2>","linux/arm64":"tcp://10.244.2.9:1234"}`; got != want {
		t.Errorf("EndpointsJSON = %s, want %s", got, want)
	}
}
