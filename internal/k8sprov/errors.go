package k8sprov

import (
	"fmt"
	"strings"
)

// InputError reports an input that was refused: which input, which value (the whole input or the
// entry in it that failed), why, and what the input accepts. ParseOptions returns these, joined
// with errors.Join when several inputs are wrong, so a user sees every mistake at once.
type InputError struct {
	// Input is the input's name, one of the Input* constants (empty when a parser is called
	// outside ParseOptions).
	Input string
	// Value is the refused value.
	Value string
	// Err says why it was refused.
	Err error
	// Accepted describes what the input accepts.
	Accepted string
}

// Error reads as `input "tolerations": "gpu:NoFoo": unknown effect "NoFoo" (accepted: ...)`.
func (e *InputError) Error() string {
	var b strings.Builder
	if e.Input != "" {
		fmt.Fprintf(&b, "input %q: ", e.Input)
	}
	fmt.Fprintf(&b, "%q: %v", e.Value, e.Err)
	if e.Accepted != "" {
		fmt.Fprintf(&b, " (accepted: %s)", e.Accepted)
	}
	return b.String()
}

// Unwrap returns the reason.
func (e *InputError) Unwrap() error { return e.Err }

func inputErrorf(value, accepted, format string, args ...any) *InputError {
	return &InputError{Value: value, Err: fmt.Errorf(format, args...), Accepted: accepted}
}

// named sets the input name on err if it is an *InputError without one, and wraps any other
// error in an InputError for that input.
func named(input, value string, err error) error {
	if err == nil {
		return nil
	}
	if ie, ok := err.(*InputError); ok {
		withInput := *ie
		if withInput.Input == "" {
			withInput.Input = input
		}
		return &withInput
	}
	return &InputError{Input: input, Value: value, Err: err}
}

// Flatten lists the errors inside err, looking through errors.Join results at any depth: the
// provisioner reports several problems at once (ParseOptions, CollectGarbage) and callers show
// or sort them one by one. It returns nil for nil, and err alone for any other error.
func Flatten(err error) []error {
	if err == nil {
		return nil
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var list []error
	for _, inner := range joined.Unwrap() {
		list = append(list, Flatten(inner)...)
	}
	return list
}
