package k8sprov_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

// A CI adapter reads the inputs and the job identity; the provisioner resolves the runner pod and
// renders the job's Secret and one pod per platform.
func Example() {
	job := cijob.Identity{CIPlatform: "github", Repository: "org/app", RunID: "42", RunAttempt: "1", JobID: "7"}
	opts, err := k8sprov.ParseOptions(job, k8sprov.Inputs{
		Platforms:    "linux/amd64,linux/arm64",
		NodeSelector: "linux/arm64=pool=arm",
		Tolerations:  "linux/arm64=arch=arm64:NoSchedule",
	})
	if err != nil {
		panic(err)
	}
	plan, err := k8sprov.NewPlan(opts, k8sprov.Resolution{
		Namespace: "ci",
		Owner:     &k8sprov.RunnerPod{Name: "runner-abc", Namespace: "ci", UID: "0d6f3c5e-1111-2222-3333-444455556666"},
		CreatedAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
	})
	if err != nil {
		panic(err)
	}
	creds, err := k8sprov.IssueCredentials(plan)
	if err != nil {
		panic(err)
	}
	secret, err := k8sprov.RenderSecret(plan, creds)
	if err != nil {
		panic(err)
	}
	fmt.Println("secret", secret.Name)
	for _, p := range plan.Platforms {
		pod, err := k8sprov.RenderPod(plan, p)
		if err != nil {
			panic(err)
		}
		fmt.Println("pod", pod.Name, pod.Spec.NodeSelector)
	}
	fmt.Println(k8sprov.Endpoint("10.0.0.5"))
	// Output:
	// secret buildkit-u3rtcafaqa7e-0-tls
	// pod buildkit-u3rtcafaqa7e-amd64 map[kubernetes.io/arch:amd64 kubernetes.io/os:linux]
	// pod buildkit-u3rtcafaqa7e-arm64 map[kubernetes.io/arch:arm64 kubernetes.io/os:linux pool:arm]
	// tcp://10.0.0.5:1234
}

// ParseOptions reports every refused input at once, naming the input, the value and what is
// accepted.
func ExampleParseOptions_errors() {
	_, err := k8sprov.ParseOptions(cijob.Identity{CIPlatform: "github", JobID: "7"}, k8sprov.Inputs{
		Platforms:   "linux/amd64,linux/sparc64",
		Tolerations: "linux/arm64=arch=arm64:NoFoo",
	})
	for _, err := range k8sprov.Flatten(err) {
		var inputErr *k8sprov.InputError
		if errors.As(err, &inputErr) {
			fmt.Printf("%s: %q: %v\n", inputErr.Input, inputErr.Value, inputErr.Err)
		}
	}
	// Output:
	// platforms: "linux/sparc64": platform "linux/sparc64": architecture "sparc64": unsupported platform
	// tolerations: "linux/arm64=arch=arm64:NoFoo": toleration "arch=arm64:NoFoo": unknown effect "NoFoo"
}
