// Package buildx registers a job's builders with docker buildx: one remote-driver builder with a
// node per platform, each node pointing at its own BuildKit endpoint over mutual TLS, so that
// `docker buildx build --platform linux/amd64,linux/arm64` sends each platform to its own native
// builder.
//
// It drives the real `docker buildx` CLI, the same way a person would, through a Runner that tests
// replace with a fake to assert the exact command lines. Creation is replace-or-create (a builder
// left by an interrupted attempt of the same job is removed first), is checked with
// `docker buildx inspect --bootstrap`, and is rolled back when any step fails; removal tolerates a
// builder that is already gone.
//
// The package also renders the builder's outputs: the `nodes` JSON docker/setup-buildx-action
// users know, and the per-platform endpoints.
package buildx

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Driver is the buildx driver of every builder this package creates.
const Driver = "remote"

// rollbackTimeout bounds the removal of a half-created builder, which runs even when the context
// that created it is done.
const rollbackTimeout = 15 * time.Second

// Builder is a buildx builder to create: one node per platform.
type Builder struct {
	// Name of the builder: a lower-case letter, then lower-case letters, digits, '.', '_', '-'.
	Name  string
	Nodes []Node
	// Use makes the builder the current one for the docker context (`docker buildx create --use`) once it
	// is checked, so later `docker buildx build` calls pick it without BUILDX_BUILDER.
	Use bool
}

// Node is one node of a Builder: a BuildKit endpoint serving one platform.
type Node struct {
	// Name of the node; empty means NodeName(builder, Platform). Same syntax as Builder.Name.
	Name string
	// Platform the node builds, e.g. "linux/arm64"; buildx routes it to this node.
	Platform string
	// Endpoint of the BuildKit daemon, e.g. "tcp://10.244.1.7:1234".
	Endpoint string
	// CACert, Cert and Key are absolute paths to the certificate authority that signed the
	// daemon's certificate, and the client certificate and key buildx presents. Empty means no
	// TLS; Cert and Key go together.
	CACert, Cert, Key string
	// ServerName is the name the daemon's certificate must carry; empty means the endpoint's host.
	ServerName string

	// BuildkitdFlags, Pod and KubernetesNode only describe the node in NodesJSON.
	BuildkitdFlags string
	Pod            string
	KubernetesNode string
}

// NodeName is the default name of a builder's node for a platform: the builder's name, a dash and
// the platform without its "linux/" prefix, slashes made dashes ("ci-abc-arm-v7").
func NodeName(builder, platform string) string {
	return builder + "-" + strings.ReplaceAll(strings.TrimPrefix(platform, "linux/"), "/", "-")
}

// Platforms returns the nodes' platforms in order.
func (b Builder) Platforms() []string {
	platforms := make([]string, len(b.Nodes))
	for i, n := range b.Nodes {
		platforms[i] = n.Platform
	}
	return platforms
}

// withDefaults returns b with node names filled in.
func (b Builder) withDefaults() Builder {
	nodes := make([]Node, len(b.Nodes))
	for i, n := range b.Nodes {
		if n.Name == "" {
			n.Name = NodeName(b.Name, n.Platform)
		}
		nodes[i] = n
	}
	b.Nodes = nodes
	return b
}

// namePattern is buildx's own rule for builder and node names, restricted to lower case: buildx
// lower-cases names when it stores them, and BUILDX_BUILDER must match what it stored.
var namePattern = regexp.MustCompile(`^[a-z][a-z0-9._-]*$`)

// NameRule describes the names namePattern accepts, for error messages.
const NameRule = "a lower-case letter, then lower-case letters, digits, '.', '_' or '-'"

// ValidBuilderName reports whether buildx accepts name for a builder: namePattern, and not
// "default", which buildx reserves.
func ValidBuilderName(name string) bool { return namePattern.MatchString(name) && name != "default" }

// Validate checks b (after filling in default node names) and returns every problem found.
func (b Builder) Validate() error {
	b = b.withDefaults()
	var errs []error
	if !namePattern.MatchString(b.Name) {
		errs = append(errs, fmt.Errorf("builder name %q: want %s", b.Name, NameRule))
	} else if b.Name == "default" {
		errs = append(errs, errors.New(`builder name "default" is reserved by buildx`))
	}
	if len(b.Nodes) == 0 {
		errs = append(errs, fmt.Errorf("builder %q: no nodes", b.Name))
	}
	names, platforms, endpoints := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, n := range b.Nodes {
		prefix := fmt.Sprintf("node %d (%s)", i, n.Name)
		if !namePattern.MatchString(n.Name) {
			errs = append(errs, fmt.Errorf("%s: invalid node name: want %s", prefix, NameRule))
		}
		if names[n.Name] {
			errs = append(errs, fmt.Errorf("%s: duplicate node name", prefix))
		}
		names[n.Name] = true
		switch {
		case n.Platform == "":
			errs = append(errs, fmt.Errorf("%s: no platform", prefix))
		case strings.ContainsAny(n.Platform, ", \t\r\n"):
			errs = append(errs, fmt.Errorf("%s: platform %q: want exactly one platform", prefix, n.Platform))
		case platforms[n.Platform]:
			errs = append(errs, fmt.Errorf("%s: platform %s has another node already", prefix, n.Platform))
		}
		platforms[n.Platform] = true
		switch {
		case !strings.Contains(n.Endpoint, "://") || strings.ContainsAny(n.Endpoint, " \t\r\n"):
			errs = append(errs, fmt.Errorf("%s: endpoint %q: want an address such as tcp://10.0.0.7:1234", prefix, n.Endpoint))
		case endpoints[n.Endpoint]:
			errs = append(errs, fmt.Errorf("%s: endpoint %s has another node already (buildx refuses duplicate endpoints)", prefix, n.Endpoint))
		}
		endpoints[n.Endpoint] = true
		if (n.Cert == "") != (n.Key == "") {
			errs = append(errs, fmt.Errorf("%s: client certificate and key go together", prefix))
		}
		for _, f := range []struct{ opt, path string }{{"cacert", n.CACert}, {"cert", n.Cert}, {"key", n.Key}} {
			if f.path != "" && (!filepath.IsAbs(f.path) || strings.ContainsAny(f.path, "\r\n")) {
				errs = append(errs, fmt.Errorf("%s: %s %q: want an absolute path", prefix, f.opt, f.path))
			}
		}
		if strings.ContainsAny(n.ServerName, ",= \t\r\n\"") {
			errs = append(errs, fmt.Errorf("%s: server name %q: want a host name", prefix, n.ServerName))
		}
	}
	return errors.Join(errs...)
}

// driverOpts renders the node's remote-driver options as the one CSV record buildx's
// --driver-opt reads (fields quoted only where needed), or "" when there are none.
func (n Node) driverOpts() (string, error) {
	var fields []string
	for _, o := range []struct{ key, value string }{
		{"cacert", n.CACert}, {"cert", n.Cert}, {"key", n.Key}, {"servername", n.ServerName},
	} {
		if o.value != "" {
			fields = append(fields, o.key+"="+o.value)
		}
	}
	if len(fields) == 0 {
		return "", nil
	}
	var b strings.Builder
	w := csv.NewWriter(&b)
	if err := w.Write(fields); err != nil {
		return "", fmt.Errorf("encoding driver options: %w", err)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return "", fmt.Errorf("encoding driver options: %w", err)
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

// Client drives `docker buildx`.
type Client struct {
	// Runner runs the docker CLI.
	Runner Runner
	// Docker is the docker CLI program; empty means "docker", looked up in PATH.
	Docker string
	// ConfigDir, when set, is the DOCKER_CONFIG of every command. The docker CLI then looks for
	// its plugins (docker-buildx) in ConfigDir/cli-plugins and the system plugin directories only,
	// and for registry credentials in ConfigDir/config.json: later steps need the same.
	ConfigDir string
	// BuildxConfigDir, when set, is the BUILDX_CONFIG of every command: where buildx keeps its
	// builders (instead of $DOCKER_CONFIG/buildx). It gives a job its own builder store without
	// moving the docker CLI's plugins and credentials; later steps need the same value.
	BuildxConfigDir string
	// Logf, when set, is told each command line before it runs.
	Logf func(format string, args ...any)
}

// mayHave reports whether the builder store may hold a builder called name (a valid name, so
// already lower case). With a builder store of the job's own (BuildxConfigDir), buildx keeps each
// builder in instances/NAME: when that file is absent, as on every first attempt, the `docker
// buildx rm` of a leftover is skipped, one docker and one buildx process fewer on the job's
// set-up. Anything but a clear "does not exist" keeps the rm.
func (c *Client) mayHave(name string) bool {
	if c.BuildxConfigDir == "" {
		return true
	}
	_, err := os.Stat(filepath.Join(c.BuildxConfigDir, "instances", name))
	return !errors.Is(err, fs.ErrNotExist)
}

// Create registers b: it removes any builder of the same name that mayHave finds (left by an
// interrupted attempt), creates the first node, appends the others, checks with `docker buildx
// inspect --bootstrap` that every node runs and serves its platform; with b.Use the last create
// makes it current. When a step fails, it removes what it registered and returns the error. On
// success it returns the inspection, for NodesJSON.
func (c *Client) Create(ctx context.Context, b Builder) (Inspection, error) {
	if err := b.Validate(); err != nil {
		return Inspection{}, fmt.Errorf("creating buildx builder: %w", err)
	}
	b = b.withDefaults()
	if c.mayHave(b.Name) {
		if err := c.Remove(ctx, b.Name); err != nil {
			return Inspection{}, fmt.Errorf("creating buildx builder %s: removing a leftover builder of that name: %w", b.Name, err)
		}
	}
	insp, err := c.create(ctx, b)
	if err != nil {
		// The context may be done: rolling back must still run, briefly.
		rollbackCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if rmErr := c.Remove(rollbackCtx, b.Name); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back: %w", rmErr))
		}
		return Inspection{}, fmt.Errorf("creating buildx builder %s: %w", b.Name, err)
	}
	return insp, nil
}

func (c *Client) create(ctx context.Context, b Builder) (Inspection, error) {
	for i, n := range b.Nodes {
		args := []string{"buildx", "create", "--name", b.Name, "--driver", Driver}
		if i > 0 {
			args = append(args, "--append")
		}
		if i == len(b.Nodes)-1 && b.Use {
			// With the last node rather than by a `buildx use` of its own: one docker and two
			// buildx processes fewer on every job's set-up (about 0.25 s here). A builder that then
			// fails its check is removed, and with it the current mark.
			args = append(args, "--use")
		}
		args = append(args, "--node", n.Name, "--platform", n.Platform)
		opts, err := n.driverOpts()
		if err != nil {
			return Inspection{}, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if opts != "" {
			args = append(args, "--driver-opt", opts)
		}
		args = append(args, n.Endpoint)
		if _, err := c.run(ctx, args...); err != nil {
			return Inspection{}, fmt.Errorf("node %s (%s): %w", n.Name, n.Platform, err)
		}
	}
	insp, err := c.Inspect(ctx, b.Name, true)
	if err != nil {
		return Inspection{}, err
	}
	if err := verify(b, insp); err != nil {
		return insp, err
	}
	return insp, nil
}

// verify checks that the inspection shows every node of b running its platform.
func verify(b Builder, insp Inspection) error {
	var errs []error
	if insp.Error != "" {
		errs = append(errs, fmt.Errorf("builder error: %s", insp.Error))
	}
	if insp.Driver != Driver {
		errs = append(errs, fmt.Errorf("driver %q, want %q", insp.Driver, Driver))
	}
	for _, want := range b.Nodes {
		got, ok := insp.Node(want.Name)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("node %s missing from docker buildx inspect", want.Name))
		case got.Error != "":
			errs = append(errs, fmt.Errorf("node %s (%s): %s", want.Name, want.Endpoint, got.Error))
		case got.Status != StatusRunning:
			errs = append(errs, fmt.Errorf("node %s (%s): status %q, want %q", want.Name, want.Endpoint, got.Status, StatusRunning))
		case got.Endpoint != want.Endpoint:
			errs = append(errs, fmt.Errorf("node %s: endpoint %s, want %s", want.Name, got.Endpoint, want.Endpoint))
		case !containsFold(got.ConfiguredPlatforms, want.Platform):
			errs = append(errs, fmt.Errorf("node %s: platforms %s, want %s among them", want.Name, strings.Join(got.Platforms, ","), want.Platform))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("checking the builder: %w", errors.Join(errs...))
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// Inspect runs `docker buildx inspect [--bootstrap] NAME` and parses what it prints. Bootstrap
// connects to every node first, so that their status and version are current.
func (c *Client) Inspect(ctx context.Context, name string, bootstrap bool) (Inspection, error) {
	args := []string{"buildx", "inspect"}
	if bootstrap {
		args = append(args, "--bootstrap")
	}
	args = append(args, name)
	res, err := c.run(ctx, args...)
	if err != nil {
		return Inspection{}, err
	}
	insp, err := ParseInspect(string(res.Stdout))
	if err != nil {
		return Inspection{}, fmt.Errorf("reading docker buildx inspect %s: %w", name, err)
	}
	return insp, nil
}

// Remove runs `docker buildx rm NAME`. A builder that does not exist is not an error. For the
// remote driver nothing but buildx's own record is removed: the daemons are not touched.
func (c *Client) Remove(ctx context.Context, name string) error {
	_, err := c.run(ctx, "buildx", "rm", name)
	if err != nil && !IsNotFound(err) {
		return fmt.Errorf("removing buildx builder %s: %w", name, err)
	}
	return nil
}

// run runs the docker CLI with args and returns the result of a zero exit; any other outcome is
// an error, a *CommandError when the command ran.
func (c *Client) run(ctx context.Context, args ...string) (Result, error) {
	if c.Runner == nil {
		return Result{}, errors.New("buildx client has no runner")
	}
	docker := c.Docker
	if docker == "" {
		docker = "docker"
	}
	cmd := Command{Args: append([]string{docker}, args...)}
	if c.ConfigDir != "" {
		cmd.Env = append(cmd.Env, "DOCKER_CONFIG="+c.ConfigDir)
	}
	if c.BuildxConfigDir != "" {
		cmd.Env = append(cmd.Env, "BUILDX_CONFIG="+c.BuildxConfigDir)
	}
	if c.Logf != nil {
		c.Logf("$ %s", formatCommandLine(cmd))
	}
	res, err := c.Runner.Run(ctx, cmd)
	if err != nil {
		return res, fmt.Errorf("%s: %w", formatArgs(cmd.Args), err)
	}
	if res.ExitCode != 0 {
		return res, &CommandError{Args: cmd.Args, Env: cmd.Env, ExitCode: res.ExitCode, Stderr: string(res.Stderr)}
	}
	return res, nil
}

// CommandError reports a docker CLI command that exited with a non-zero status.
type CommandError struct {
	// Args are the program and its arguments.
	Args []string
	// Env are the variables set for the command on top of the inherited environment.
	Env      []string
	ExitCode int
	Stderr   string
}

// maxStderrInError bounds how much of the standard error Error shows: its end, which is where
// buildx prints the reason.
const maxStderrInError = 2048

// Error reads as `docker buildx rm x: exit status 1: ERROR: ...`.
func (e *CommandError) Error() string {
	msg := fmt.Sprintf("%s: exit status %d", formatCommandLine(Command{Args: e.Args, Env: e.Env}), e.ExitCode)
	stderr := strings.TrimSpace(e.Stderr)
	if len(stderr) > maxStderrInError {
		stderr = "..." + stderr[len(stderr)-maxStderrInError:]
	}
	if stderr != "" {
		msg += ": " + stderr
	}
	return msg
}

// notFoundPattern matches what buildx prints for a builder name it does not know.
var notFoundPattern = regexp.MustCompile(`(?i)no builder "[^"]*" found`)

// IsNotFound reports whether err is a CommandError saying the builder does not exist.
func IsNotFound(err error) bool {
	var ce *CommandError
	return errors.As(err, &ce) && notFoundPattern.MatchString(ce.Stderr)
}

func formatCommandLine(cmd Command) string {
	line := formatArgs(cmd.Args)
	if len(cmd.Env) > 0 {
		line = formatArgs(cmd.Env) + " " + line
	}
	return line
}

// formatArgs joins args for a log line, quoting those a shell would split.
func formatArgs(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\r\n\"'\\$`;&|<>(){}*?!#") {
			a = strconv.Quote(a)
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}
