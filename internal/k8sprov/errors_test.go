package k8sprov

import (
	"errors"
	"slices"
	"testing"
)

func TestFlattenLooksThroughNestedJoins(t *testing.T) {
	a, b, c := errors.New("a"), errors.New("b"), errors.New("c")
	if got := Flatten(nil); got != nil {
		t.Errorf("Flatten(nil) = %v", got)
	}
	if got := Flatten(a); !slices.Equal(got, []error{a}) {
		t.Errorf("Flatten(a) = %v", got)
	}
	if got := Flatten(errors.Join(a, errors.Join(b, nil, c))); !slices.Equal(got, []error{a, b, c}) {
		t.Errorf("Flatten(nested) = %v, want [a b c]", got)
	}
}
