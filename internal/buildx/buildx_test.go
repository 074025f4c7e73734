package buildx

import (
	"context"
	"encoding/csv"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeRunner records commands and answers each with respond, or success when respond is nil.
type fakeRunner struct {
	mu      sync.Mutex
	calls   []Command
	respond func(ctx context.Context, cmd Command) (Result, error)
}

func (f *fakeRunner) Run(ctx context.Context, cmd Command) (Result, error) {
	f.mu.Lock()
	f.calls = append(f.calls, cmd)
	f.mu.Unlock()
	if f.respond == nil {
		return Result{}, nil
	}
	return f.respond(ctx, cmd)
}

// argv returns the recorded command lines, each joined by spaces.
func (f *fakeRunner) argv() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	lines := make([]string, len(f.calls))
	for i, c := range f.calls {
		lines[i] = strings.Join(c.Args, " ")
	}
	return lines
}

// is reports whether cmd is `docker buildx <sub> ...`.
func is(cmd Command, sub string) bool {
	return len(cmd.Args) > 2 && cmd.Args[1] == "buildx" && cmd.Args[2] == sub
}

func notFound(name string) Result {
	return Result{ExitCode: 1, Stderr: []byte(`failed to remove ` + name + `: no builder "` + name + `" found` + "\nERROR: failed to remove one or more builders\n")}
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// scripted answers rm with "not found", inspect with the named fixture, everything else with
// success, except commands matching fail, which get failure.
func scripted(t *testing.T, inspectFixture string, fail func(Command) bool, failure Result) func(context.Context, Command) (Result, error) {
	inspect := fixture(t, inspectFixture)
	return func(_ context.Context, cmd Command) (Result, error) {
		switch {
		case fail != nil && fail(cmd):
			return failure, nil
		case is(cmd, "rm"):
			return notFound(cmd.Args[len(cmd.Args)-1]), nil
		case is(cmd, "inspect"):
			return Result{Stdout: inspect}, nil
		}
		return Result{}, nil
	}
}

func testBuilder() Builder {
	tls := func(n Node) Node {
		n.CACert, n.Cert, n.Key = "/runner/_temp/ebk/ca.pem", "/runner/_temp/ebk/client.pem", "/runner/_temp/ebk/client-key.pem"
		n.ServerName = NodeName("ebk-abc", n.Platform) + ".buildkit.local"
		return n
	}
	return Builder{
		Name: "ebk-abc",
		Nodes: []Node{
			tls(Node{Platform: "linux/amd64", Endpoint: "tcp://10.244.1.7:1234", Pod: "ebk-abc-amd64", KubernetesNode: "worker-amd64-1"}),
			tls(Node{Platform: "linux/arm64", Endpoint: "tcp://10.244.2.9:1234", Pod: "ebk-abc-arm64", KubernetesNode: "worker-arm64-1", BuildkitdFlags: "--debug"}),
		},
		Use: true,
	}
}

const (
	createAMD64 = "docker buildx create --name ebk-abc --driver remote --node ebk-abc-amd64 --platform linux/amd64" +
		" --driver-opt cacert=/runner/_temp/ebk/ca.pem,cert=/runner/_temp/ebk/client.pem,key=/runner/_temp/ebk/client-key.pem,servername=ebk-abc-amd64.buildkit.local" +
		" tcp://10.244.1.7:1234"
	createARM64 = "docker buildx create --name ebk-abc --driver remote --append --use --node ebk-abc-arm64 --platform linux/arm64" +
		" --driver-opt cacert=/runner/_temp/ebk/ca.pem,cert=/runner/_temp/ebk/client.pem,key=/runner/_temp/ebk/client-key.pem,servername=ebk-abc-arm64.buildkit.local" +
		" tcp://10.244.2.9:1234"
	rmBuilder      = "docker buildx rm ebk-abc"
	inspectBuilder = "docker buildx inspect --bootstrap ebk-abc"
)

func TestCreate(t *testing.T) {
	runner := &fakeRunner{}
	runner.respond = scripted(t, "inspect-running.txt", nil, Result{})
	var logged []string
	c := &Client{
		Runner:          runner,
		ConfigDir:       "/runner/_temp/docker",
		BuildxConfigDir: "/runner/_temp/buildx",
		Logf: func(format string, args ...any) {
			logged = append(logged, strings.TrimPrefix(format, "$ ")+"|"+args[0].(string))
		},
	}
	insp, err := c.Create(context.Background(), testBuilder())
	if err != nil {
		t.Fatal(err)
	}
	// The builder store holds no ebk-abc: there is no leftover to remove first.
	want := []string{createAMD64, createARM64, inspectBuilder}
	if got := runner.argv(); !reflect.DeepEqual(got, want) {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, call := range runner.calls {
		if want := []string{"DOCKER_CONFIG=/runner/_temp/docker", "BUILDX_CONFIG=/runner/_temp/buildx"}; !reflect.DeepEqual(call.Env, want) {
			t.Errorf("%s: env %q, want %q", strings.Join(call.Args, " "), call.Env, want)
		}
	}
	if len(insp.Nodes) != 2 || insp.Nodes[1].BuildKitVersion != "v0.34.2" {
		t.Errorf("inspection = %+v", insp)
	}
	if len(logged) != len(want) || !strings.Contains(logged[1], "DOCKER_CONFIG=/runner/_temp/docker BUILDX_CONFIG=/runner/_temp/buildx docker buildx create") {
		t.Errorf("logged %q", logged)
	}
}

// A builder of that name left in the job's builder store by an interrupted attempt (buildx keeps
// it in instances/NAME) is removed before the create.
func TestCreateRemovesALeftoverBuilder(t *testing.T) {
	store := t.TempDir()
	if err := os.MkdirAll(filepath.Join(store, "instances"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store, "instances", "ebk-abc"), []byte(`{"Name":"ebk-abc"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	runner := &fakeRunner{}
	runner.respond = scripted(t, "inspect-running.txt", nil, Result{})
	c := &Client{Runner: runner, BuildxConfigDir: store}
	if _, err := c.Create(context.Background(), testBuilder()); err != nil {
		t.Fatal(err)
	}
	want := []string{rmBuilder, createAMD64, createARM64, inspectBuilder}
	if got := runner.argv(); !reflect.DeepEqual(got, want) {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCreateMinimal(t *testing.T) {
	runner := &fakeRunner{}
	runner.respond = scripted(t, "inspect-running.txt", nil, Result{})
	c := &Client{Runner: runner, Docker: "/usr/bin/docker"}
	b := Builder{Name: "ebk-abc", Nodes: []Node{{Name: "ebk-abc-amd64", Platform: "linux/amd64", Endpoint: "tcp://10.244.1.7:1234"}}}
	if _, err := c.Create(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/usr/bin/docker buildx rm ebk-abc",
		"/usr/bin/docker buildx create --name ebk-abc --driver remote --node ebk-abc-amd64 --platform linux/amd64 tcp://10.244.1.7:1234",
		"/usr/bin/docker buildx inspect --bootstrap ebk-abc",
	}
	if got := runner.argv(); !reflect.DeepEqual(got, want) {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if env := runner.calls[0].Env; env != nil {
		t.Errorf("env %q without config dirs", env)
	}
}

func TestCreateFailuresRollBack(t *testing.T) {
	tests := []struct {
		name    string
		fixture string
		fail    func(Command) bool
		failure Result
		want    []string
		errHas  []string
	}{
		{
			name:    "append refused",
			fixture: "inspect-running.txt",
			fail:    func(c Command) bool { return is(c, "create") && slices.Contains(c.Args, "--append") },
			failure: Result{ExitCode: 1, Stderr: []byte("ERROR: invalid duplicate endpoint tcp://10.244.2.9:1234\n")},
			want:    []string{rmBuilder, createAMD64, createARM64, rmBuilder},
			errHas:  []string{"node ebk-abc-arm64 (linux/arm64)", "exit status 1", "invalid duplicate endpoint", "--append"},
		},
		{
			name:    "node unreachable",
			fixture: "inspect-node-error.txt",
			want:    []string{rmBuilder, createAMD64, createARM64, inspectBuilder, rmBuilder},
			errHas:  []string{"node ebk-abc-arm64 (tcp://10.244.2.9:1234)", "certificate signed by unknown authority\nsecond line"},
		},
		{
			name:    "node inactive and wrong platform",
			fixture: "inspect-inactive.txt",
			want:    []string{rmBuilder, createAMD64, createARM64, inspectBuilder, rmBuilder},
			errHas:  []string{`node ebk-abc-amd64 (tcp://10.244.1.7:1234): status "inactive", want "running"`, "node ebk-abc-arm64: platforms linux/amd64,linux/arm64, want linux/arm64"},
		},
		{
			name:    "builder error",
			fixture: "inspect-builder-error.txt",
			want:    []string{rmBuilder, createAMD64, createARM64, inspectBuilder, rmBuilder},
			errHas:  []string{"builder error: context deadline exceeded", "node ebk-abc-amd64 missing"},
		},
		{
			name:    "bootstrap fails",
			fixture: "inspect-running.txt",
			fail:    func(c Command) bool { return is(c, "inspect") },
			failure: Result{ExitCode: 1, Stderr: []byte("ERROR: failed to bootstrap\n")},
			want:    []string{rmBuilder, createAMD64, createARM64, inspectBuilder, rmBuilder},
			errHas:  []string{"failed to bootstrap"},
		},
		{
			name:    "use fails",
			fixture: "inspect-running.txt",
			fail:    func(c Command) bool { return is(c, "create") && slices.Contains(c.Args, "--use") },
			failure: Result{ExitCode: 1, Stderr: []byte("ERROR: run `docker context use default` to switch to context default\n")},
			want:    []string{rmBuilder, createAMD64, createARM64, rmBuilder},
			errHas:  []string{"node ebk-abc-arm64 (linux/arm64)", "--use", "docker context use default"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runner := &fakeRunner{respond: scripted(t, tt.fixture, tt.fail, tt.failure)}
			_, err := (&Client{Runner: runner}).Create(context.Background(), testBuilder())
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\ndoes not contain %q", err, s)
				}
			}
			if !strings.HasPrefix(err.Error(), "creating buildx builder ebk-abc: ") {
				t.Errorf("error %q does not say what was being done", err)
			}
			if got := runner.argv(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestCreateCommandErrorDetails(t *testing.T) {
	runner := &fakeRunner{respond: scripted(t, "inspect-running.txt",
		func(c Command) bool { return is(c, "create") },
		Result{ExitCode: 17, Stderr: []byte("ERROR: no valid drivers found\n")})}
	_, err := (&Client{Runner: runner, ConfigDir: "/cfg"}).Create(context.Background(), testBuilder())
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a *CommandError", err)
	}
	if ce.ExitCode != 17 || ce.Stderr != "ERROR: no valid drivers found\n" || strings.Join(ce.Args, " ") != createAMD64 || !reflect.DeepEqual(ce.Env, []string{"DOCKER_CONFIG=/cfg"}) {
		t.Errorf("CommandError = %+v", ce)
	}
}

func TestCreateLeftoverRemovalFails(t *testing.T) {
	runner := &fakeRunner{respond: func(_ context.Context, cmd Command) (Result, error) {
		return Result{ExitCode: 1, Stderr: []byte("ERROR: permission denied\n")}, nil
	}}
	_, err := (&Client{Runner: runner}).Create(context.Background(), testBuilder())
	if err == nil || !strings.Contains(err.Error(), "leftover") || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("error = %v", err)
	}
	if got := runner.argv(); !reflect.DeepEqual(got, []string{rmBuilder}) {
		t.Errorf("commands = %q", got)
	}
}

func TestCreateRollbackFailsToo(t *testing.T) {
	rms := 0
	runner := &fakeRunner{respond: func(_ context.Context, cmd Command) (Result, error) {
		switch {
		case is(cmd, "rm"):
			rms++
			if rms == 1 {
				return notFound("ebk-abc"), nil
			}
			return Result{ExitCode: 1, Stderr: []byte("ERROR: store locked\n")}, nil
		case is(cmd, "create"):
			return Result{ExitCode: 1, Stderr: []byte("ERROR: boom\n")}, nil
		}
		return Result{}, nil
	}}
	_, err := (&Client{Runner: runner}).Create(context.Background(), testBuilder())
	if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "rolling back") || !strings.Contains(err.Error(), "store locked") {
		t.Errorf("error = %v", err)
	}
}

func TestCreateCancelledStillRollsBack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var rollbackCtxErr error = errors.New("rollback not run")
	runner := &fakeRunner{}
	runner.respond = func(ctx context.Context, cmd Command) (Result, error) {
		switch {
		case is(cmd, "rm") && len(runner.calls) == 1:
			return notFound("ebk-abc"), nil
		case is(cmd, "rm"):
			rollbackCtxErr = ctx.Err()
			return Result{}, nil
		case is(cmd, "create") && slices.Contains(cmd.Args, "--append"):
			cancel() // the job is cancelled while the second node is added
			return Result{ExitCode: -1}, ctx.Err()
		}
		return Result{}, nil
	}
	_, err := (&Client{Runner: runner}).Create(ctx, testBuilder())
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
	if rollbackCtxErr != nil {
		t.Errorf("rollback ran with a done context: %v", rollbackCtxErr)
	}
	if got := runner.argv(); !reflect.DeepEqual(got, []string{rmBuilder, createAMD64, createARM64, rmBuilder}) {
		t.Errorf("commands = %q", got)
	}
}

func TestValidate(t *testing.T) {
	node := func(platform, endpoint string) Node { return Node{Platform: platform, Endpoint: endpoint} }
	tests := []struct {
		name   string
		b      Builder
		errHas []string
	}{
		{"no nodes", Builder{Name: "ebk"}, []string{"no nodes"}},
		{"upper case", Builder{Name: "Ebk", Nodes: []Node{node("linux/amd64", "tcp://a:1")}}, []string{`builder name "Ebk"`}},
		{"starts with digit", Builder{Name: "1ebk", Nodes: []Node{node("linux/amd64", "tcp://a:1")}}, []string{`builder name "1ebk"`}},
		{"default", Builder{Name: "default", Nodes: []Node{node("linux/amd64", "tcp://a:1")}}, []string{"reserved"}},
		{"duplicate platform and endpoint", Builder{Name: "ebk", Nodes: []Node{
			node("linux/amd64", "tcp://a:1"), {Name: "other", Platform: "linux/amd64", Endpoint: "tcp://a:1"},
		}}, []string{"platform linux/amd64 has another node", "endpoint tcp://a:1 has another node"}},
		{"duplicate node name", Builder{Name: "ebk", Nodes: []Node{
			{Name: "n", Platform: "linux/amd64", Endpoint: "tcp://a:1"}, {Name: "n", Platform: "linux/arm64", Endpoint: "tcp://b:1"},
		}}, []string{"duplicate node name"}},
		{"two platforms in one", Builder{Name: "ebk", Nodes: []Node{node("linux/amd64,linux/arm64", "tcp://a:1")}}, []string{"exactly one platform"}},
		{"no platform", Builder{Name: "ebk", Nodes: []Node{{Name: "n", Endpoint: "tcp://a:1"}}}, []string{"no platform"}},
		{"bad endpoint", Builder{Name: "ebk", Nodes: []Node{node("linux/amd64", "10.0.0.1:1234")}}, []string{`endpoint "10.0.0.1:1234"`}},
		{"relative cert, key missing", Builder{Name: "ebk", Nodes: []Node{{Platform: "linux/amd64", Endpoint: "tcp://a:1", Cert: "client.pem", CACert: "/ca\n.pem"}}},
			[]string{"certificate and key go together", `cert "client.pem": want an absolute path`, "cacert"}},
		{"server name with comma", Builder{Name: "ebk", Nodes: []Node{{Platform: "linux/amd64", Endpoint: "tcp://a:1", ServerName: "a,key=/x"}}}, []string{"server name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.b.Validate()
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\ndoes not contain %q", err, s)
				}
			}
			runner := &fakeRunner{}
			if _, err := (&Client{Runner: runner}).Create(context.Background(), tt.b); err == nil {
				t.Error("Create accepted it")
			}
			if len(runner.calls) != 0 {
				t.Errorf("Create ran %q", runner.argv())
			}
		})
	}
	if err := testBuilder().Validate(); err != nil {
		t.Errorf("valid builder: %v", err)
	}
}

func TestDriverOptsQuoting(t *testing.T) {
	n := Node{CACert: "/tmp/a,b/ca.pem", Cert: `/tmp/q"uote/c.pem`, Key: "/tmp/k.pem", ServerName: "b.local"}
	opts, err := n.driverOpts()
	if err != nil {
		t.Fatal(err)
	}
	want := `"cacert=/tmp/a,b/ca.pem","cert=/tmp/q""uote/c.pem",key=/tmp/k.pem,servername=b.local`
	if opts != want {
		t.Errorf("driver opts = %s, want %s", opts, want)
	}
	// buildx reads the flag as one CSV record.
	fields, err := csv.NewReader(strings.NewReader(opts)).Read()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"cacert=/tmp/a,b/ca.pem", `cert=/tmp/q"uote/c.pem`, "key=/tmp/k.pem", "servername=b.local"}; !reflect.DeepEqual(fields, want) {
		t.Errorf("fields = %q, want %q", fields, want)
	}
	if opts, err := (Node{}).driverOpts(); opts != "" || err != nil {
		t.Errorf("no TLS: %q, %v", opts, err)
	}
}

func TestRemove(t *testing.T) {
	tests := []struct {
		name    string
		result  Result
		runErr  error
		wantErr string
	}{
		{name: "removed", result: Result{Stderr: []byte("ebk-abc removed\n")}},
		{name: "not found", result: notFound("ebk-abc")},
		{name: "other failure", result: Result{ExitCode: 1, Stderr: []byte("failed to remove ebk-abc: permission denied\nERROR: failed to remove one or more builders\n")},
			wantErr: "removing buildx builder ebk-abc: BUILDX_CONFIG=/b docker buildx rm ebk-abc: exit status 1: failed to remove ebk-abc: permission denied"},
		{name: "docker missing", runErr: errors.New(`exec: "docker": executable file not found in $PATH`),
			wantErr: `removing buildx builder ebk-abc: docker buildx rm ebk-abc: exec: "docker": executable file not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runner := &fakeRunner{respond: func(context.Context, Command) (Result, error) { return tt.result, tt.runErr }}
			err := (&Client{Runner: runner, BuildxConfigDir: "/b"}).Remove(context.Background(), "ebk-abc")
			if tt.wantErr == "" && err != nil {
				t.Fatalf("error = %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error = %v, want %q", err, tt.wantErr)
			}
			if got := runner.argv(); !reflect.DeepEqual(got, []string{rmBuilder}) || !reflect.DeepEqual(runner.calls[0].Env, []string{"BUILDX_CONFIG=/b"}) {
				t.Errorf("commands = %q, env %q", got, runner.calls[0].Env)
			}
		})
	}
}

func TestIsNotFound(t *testing.T) {
	if !IsNotFound(&CommandError{ExitCode: 1, Stderr: `ERROR: no builder "x" found`}) {
		t.Error("inspect's message not recognised")
	}
	if IsNotFound(&CommandError{ExitCode: 1, Stderr: "ERROR: failed to remove one or more builders"}) {
		t.Error("a generic failure taken for not found")
	}
	if IsNotFound(errors.New(`no builder "x" found`)) {
		t.Error("a plain error taken for not found")
	}
}

func TestCommandErrorMessage(t *testing.T) {
	e := &CommandError{Args: []string{"docker", "buildx", "create", "--driver-opt", "cert=/a b/c.pem"}, Env: []string{"DOCKER_CONFIG=/d"}, ExitCode: 2, Stderr: "\nERROR: bad\n"}
	if got, want := e.Error(), `DOCKER_CONFIG=/d docker buildx create --driver-opt "cert=/a b/c.pem": exit status 2: ERROR: bad`; got != want {
		t.Errorf("Error() = %s, want %s", got, want)
	}
	long := &CommandError{Args: []string{"docker"}, ExitCode: 1, Stderr: strings.Repeat("x", 5000) + "END"}
	if msg := long.Error(); len(msg) > maxStderrInError+100 || !strings.HasSuffix(msg, "END") {
		t.Errorf("long stderr: %d bytes, ends %q", len(msg), msg[len(msg)-10:])
	}
}

func TestInspect(t *testing.T) {
	runner := &fakeRunner{respond: func(context.Context, Command) (Result, error) {
		return Result{Stdout: fixture(t, "inspect-running.txt")}, nil
	}}
	insp, err := (&Client{Runner: runner}).Inspect(context.Background(), "ebk-abc", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := runner.argv(); !reflect.DeepEqual(got, []string{"docker buildx inspect ebk-abc"}) {
		t.Errorf("commands = %q", got)
	}
	if insp.Name != "ebk-abc" {
		t.Errorf("name %q", insp.Name)
	}

	runner.respond = func(context.Context, Command) (Result, error) { return Result{Stdout: []byte("garbage")}, nil }
	if _, err := (&Client{Runner: runner}).Inspect(context.Background(), "ebk-abc", true); err == nil || !strings.Contains(err.Error(), "reading docker buildx inspect ebk-abc") {
		t.Errorf("error = %v", err)
	}
	if _, err := (&Client{}).Inspect(context.Background(), "x", false); err == nil {
		t.Error("no error without a runner")
	}
}

func TestNodeName(t *testing.T) {
	tests := map[string]string{
		"linux/amd64":   "ebk-amd64",
		"linux/arm64":   "ebk-arm64",
		"linux/arm/v7":  "ebk-arm-v7",
		"linux/riscv64": "ebk-riscv64",
	}
	for platform, want := range tests {
		if got := NodeName("ebk", platform); got != want {
			t.Errorf("NodeName(ebk, %s) = %s, want %s", platform, got, want)
		}
	}
	if got := testBuilder().Platforms(); !reflect.DeepEqual(got, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("Platforms() = %q", got)
	}
}
