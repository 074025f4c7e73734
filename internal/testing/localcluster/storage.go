package localcluster

import (
	"context"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The cluster's dynamic volume provisioner: rancher's local-path-provisioner
// (hack/tools/local-path-provisioner), the one kind ships as its default StorageClass. Each
// PersistentVolumeClaim of StorageClassName gets a directory under <state>/local-path on the node,
// made and removed by a short helper pod the provisioner starts on the node, as in a production
// install.
//
// The provisioner itself runs as a host process rather than as a pod: the local cluster has no
// image for it (mkimages builds only BuildKit and pause), it uses the admin kubeconfig like the
// other control-plane processes, so there is no Role to ship for a test fixture, and Down stops it
// with every other recorded process. Its volumes live in the state directory, so cluster-down
// removes them with the rest.
const (
	storageName = "local-path-provisioner"
	// StorageClassName is the local cluster's StorageClass, also its default one.
	StorageClassName = "local-path"
	// StorageProvisioner is the provisioner name the StorageClass names.
	StorageProvisioner = "rancher.io/local-path"
	// storageNamespace holds the provisioner's ConfigMap, ServiceAccount and helper pods.
	storageNamespace = "local-path-storage"
	storageConfigMap = "local-path-config"
	storageSA        = "local-path-provisioner"
)

// storageProvisioner runs local-path-provisioner; it needs the node (its helper pods run there).
type storageProvisioner struct{}

func (*storageProvisioner) Name() string { return storageName }

func (*storageProvisioner) Start(ctx context.Context, s *session) error {
	volumes := s.dir("local-path")
	if err := os.MkdirAll(volumes, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", volumes, err)
	}
	client, err := s.adminClient()
	if err != nil {
		return err
	}
	objs := storageObjects(volumes, s.info.Images["buildkit"])
	if _, err := client.CoreV1().Namespaces().Create(ctx, objs.namespace, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", storageNamespace, err)
	}
	if _, err := client.CoreV1().ServiceAccounts(storageNamespace).Create(ctx, objs.serviceAccount, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the provisioner's service account: %w", err)
	}
	if _, err := client.CoreV1().ConfigMaps(storageNamespace).Create(ctx, objs.configMap, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the provisioner's ConfigMap: %w", err)
	}
	if _, err := client.StorageV1().StorageClasses().Create(ctx, objs.storageClass, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating StorageClass %s: %w", StorageClassName, err)
	}
	configFile, helperPodFile := s.dir("local-path-config.json"), s.dir("local-path-helper-pod.yaml")
	if err := writeFile(configFile, objs.configMap.Data["config.json"]); err != nil {
		return err
	}
	if err := writeFile(helperPodFile, objs.configMap.Data["helperPod.yaml"]); err != nil {
		return err
	}
	p, err := s.startProcess(storageName, s.bin(storageName), storageArgs(s.kubeconfig("admin"), configFile, helperPodFile, s.info.Images["buildkit"]))
	if err != nil {
		return err
	}
	logPath := s.dir("logs", storageName+".log")
	if err := p.waitHealthy(ctx, func(context.Context) error {
		// It has no health endpoint; it logs this line once its controller is built.
		data, err := os.ReadFile(logPath)
		if err != nil || !strings.Contains(string(data), "Provisioner started") {
			return fmt.Errorf("%s has not started its controller yet", storageName)
		}
		return nil
	}); err != nil {
		return err
	}
	s.info.StorageClass = StorageClassName
	return nil
}

// storageArgs are local-path-provisioner's flags: debug logging (the readiness line above is a
// debug line), the admin kubeconfig, and files for what it would otherwise read from its ConfigMap.
func storageArgs(kubeconfig, configFile, helperPodFile, helperImage string) []string {
	return []string{
		"--debug", "start",
		"--kubeconfig", kubeconfig,
		"--namespace", storageNamespace,
		"--provisioner-name", StorageProvisioner,
		"--service-account-name", storageSA,
		"--configmap-name", storageConfigMap,
		"--config", configFile,
		"--helper-pod-file", helperPodFile,
		"--helper-image", helperImage,
	}
}

// storageObjectSet are the Kubernetes objects the provisioner needs.
type storageObjectSet struct {
	namespace      *corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap
	storageClass   *storagev1.StorageClass
}

// storageObjects renders them: volumes go under volumesDir on the node; the helper pod runs the
// BuildKit image (it has a shell, mkdir and rm) and never pulls, as no image leaves the node.
// The helper pods mount the ConfigMap's setup and teardown scripts. The StorageClass binds a
// claim only once a pod using it is scheduled (WaitForFirstConsumer), as a node-local volume must,
// and deletes the directory with the claim.
func storageObjects(volumesDir, helperImage string) storageObjectSet {
	config := fmt.Sprintf(`{"nodePathMap":[{"node":"DEFAULT_PATH_FOR_NON_LISTED_NODES","paths":[%q]}]}`, volumesDir)
	helperPod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  automountServiceAccountToken: false
  containers:
  - name: helper-pod
    image: %s
    imagePullPolicy: Never
`, helperImage)
	return storageObjectSet{
		namespace:      &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: storageNamespace}},
		serviceAccount: &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: storageSA, Namespace: storageNamespace}},
		configMap: &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: storageConfigMap, Namespace: storageNamespace},
			Data: map[string]string{
				"config.json":    config,
				"setup":          "#!/bin/sh\nset -eu\nmkdir -m 0777 -p \"$VOL_DIR\"\n",
				"teardown":       "#!/bin/sh\nset -eu\nrm -rf \"$VOL_DIR\"\n",
				"helperPod.yaml": helperPod,
			},
		},
		storageClass: &storagev1.StorageClass{
			ObjectMeta: metav1.ObjectMeta{
				Name:        StorageClassName,
				Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
			},
			Provisioner:       StorageProvisioner,
			ReclaimPolicy:     ptr.To(corev1.PersistentVolumeReclaimDelete),
			VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		},
	}
}
