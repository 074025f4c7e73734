package localcluster

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	storagev1 "k8s.io/api/storage/v1"
)

// Claims land under the state directory (so cluster-down removes them), bind only once a pod is
// scheduled (a node-local volume), and the helper pods run an image the node already has.
func TestStorageObjectsKeepVolumesInTheStateDirectory(t *testing.T) {
	objs := storageObjects("/state/local-path", "local/buildkit:dev")
	var config struct {
		NodePathMap []struct {
			Node  string   `json:"node"`
			Paths []string `json:"paths"`
		} `json:"nodePathMap"`
	}
	if err := json.Unmarshal([]byte(objs.configMap.Data["config.json"]), &config); err != nil {
		t.Fatalf("config.json: %v", err)
	}
	if len(config.NodePathMap) != 1 || !slices.Equal(config.NodePathMap[0].Paths, []string{"/state/local-path"}) {
		t.Errorf("volume paths = %+v, want only /state/local-path", config.NodePathMap)
	}
	sc := objs.storageClass
	if sc.Name != StorageClassName || sc.Provisioner != StorageProvisioner || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
		t.Errorf("StorageClass = %s by %s binding %s", sc.Name, sc.Provisioner, *sc.VolumeBindingMode)
	}
	for _, key := range []string{"setup", "teardown"} {
		if !strings.Contains(objs.configMap.Data[key], `"$VOL_DIR"`) {
			t.Errorf("%s script does not work on $VOL_DIR: %q", key, objs.configMap.Data[key])
		}
	}
	if pod := objs.configMap.Data["helperPod.yaml"]; !strings.Contains(pod, "image: local/buildkit:dev") || !strings.Contains(pod, "imagePullPolicy: Never") {
		t.Errorf("helper pod does not run the node's image without pulling:\n%s", pod)
	}
	args := storageArgs("/state/admin.kubeconfig", "/state/c.json", "/state/h.yaml", "local/buildkit:dev")
	for _, want := range []string{"--provisioner-name", StorageProvisioner, "--helper-image", "local/buildkit:dev", "--kubeconfig"} {
		if !slices.Contains(args, want) {
			t.Errorf("provisioner args lack %s: %v", want, args)
		}
	}
}
