package clustertemplate

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Get reads the template kept in the ConfigMap name of namespace (key DataKey), with one get of
// that one name, the only right on ConfigMaps the runners' Role needs. No such ConfigMap is no
// template: nil and no error. A ConfigMap without the key, or a template Parse refuses, is an
// error that names the ConfigMap and where in the template. Other API errors are returned
// wrapped, for the caller to tell Forbidden apart (apierrors.IsForbidden).
func Get(ctx context.Context, client kubernetes.Interface, namespace, name string) (*Template, error) {
	source := namespace + "/" + name
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading cluster template %s (get configmaps %s): %w", source, name, err)
	}
	data, ok := cm.Data[DataKey]
	if !ok {
		return nil, &Error{Source: source, Err: fmt.Errorf("the ConfigMap has no key %s (keys: %s)", DataKey, strings.Join(slices.Sorted(maps.Keys(cm.Data)), ", "))}
	}
	return Parse([]byte(data), source)
}
