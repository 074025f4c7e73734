package localcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHostRecordPersistsEveryChange(t *testing.T) {
	dir := t.TempDir()
	rec, err := loadHostRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.empty() {
		t.Fatalf("a missing record must load empty: %+v", rec)
	}
	if err := rec.update(func(r *hostRecord) { r.Bridge = "sebk0" }); err != nil {
		t.Fatal(err)
	}
	// A second process (Down after a crash) sees the change without any explicit save.
	again, err := loadHostRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Bridge != "sebk0" || again.empty() {
		t.Fatalf("record after reload = %+v, want the bridge on record", again)
	}
}

func TestHostRecordCorruptIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "host.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadHostRecord(dir); err == nil || !strings.Contains(err.Error(), "host.json") {
		t.Fatalf("corrupt record: err = %v, want one naming host.json", err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\134c`); got != `/a b\c` {
		t.Fatalf("unescapeMountinfo = %q", got)
	}
}

func TestDownWithoutRecordRemovesOnlyTheStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Down(dir, nil); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("state dir still there: %v", err)
	}
	// Twice is fine.
	if err := Down(dir, nil); err != nil {
		t.Fatalf("second Down: %v", err)
	}
}

func TestRenderedConfigsCarryTheRequiredSettings(t *testing.T) {
	containerd := containerdConfig("/s", "/s/c.sock", "pause:local", "/s/cni")
	for _, want := range []string{"restrict_oom_score_adj = true", "SystemdCgroup = false", `snapshotter = "overlayfs"`, `sandbox_image = "pause:local"`, `Root = "/s/runc"`} {
		if !strings.Contains(containerd, want) {
			t.Errorf("containerd config lacks %q", want)
		}
	}
	kubelet := kubeletConfig("/s", pkiFiles{Dir: "/s/pki"}, "/s/c.sock", 1234)
	for _, want := range []string{"failCgroupV1: false", "failSwapOn: false", "cgroupDriver: cgroupfs", `resolvConf: ""`, "readOnlyPort: 0", "address: " + nodeAddress, "imageGCHighThresholdPercent: 100"} {
		if !strings.Contains(kubelet, want) {
			t.Errorf("kubelet config lacks %q", want)
		}
	}
	cni := cniConfig("/s")
	if !strings.Contains(cni, `"ipMasq": false`) || strings.Contains(cni, "0.0.0.0/0") {
		t.Errorf("CNI config must not masquerade nor route off the bridge:\n%s", cni)
	}
}
