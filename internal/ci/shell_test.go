package ci

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

func newTestShell(t *testing.T, cfg ShellConfig) (*Shell, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	exports, log := &bytes.Buffer{}, &bytes.Buffer{}
	if cfg.Exports == nil {
		cfg.Exports = exports
	}
	if cfg.Log == nil {
		cfg.Log = log
	}
	s, err := NewShell(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, exports, log
}

func TestShellExports(t *testing.T) {
	s, exports, _ := newTestShell(t, ShellConfig{})
	if err := s.ExportEnv("BUILDX_BUILDER", "builder-abc"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOutput("nodes", `[{"name":"it's"}]`); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOutput("buildkit-version", "v0.34.2"); err != nil {
		t.Fatal(err)
	}
	want := "export BUILDX_BUILDER='builder-abc'\n" +
		"export EPHEMERAL_BUILDKIT_NODES='[{\"name\":\"it'\\''s\"}]'\n" +
		"export EPHEMERAL_BUILDKIT_BUILDKIT_VERSION='v0.34.2'\n"
	if got := exports.String(); got != want {
		t.Errorf("exports =\n%s\nwant\n%s", got, want)
	}
}

func TestShellExportsEvalRoundTrip(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	values := []string{
		"plain",
		"",
		"it's",
		"''",
		"$HOME `id` $(id) \\n \"quoted\"",
		"multi\nline\n",
		"tab\tand; semicolon && exit 1",
	}
	file := filepath.Join(t.TempDir(), "env.sh")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := newTestShell(t, ShellConfig{Exports: f})
	for _, v := range values {
		if err := s.ExportEnv("V", v); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		// Only the last line matters: each export overrides the one before.
		out, err := exec.Command(sh, "-c", `. "$1" && printf '%s' "$V"`, "sh", file).Output()
		if err != nil {
			t.Fatalf("%q: sh: %v", v, err)
		}
		if string(out) != v {
			t.Errorf("exported %q, sh read %q", v, out)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestShellExportErrors(t *testing.T) {
	s, exports, _ := newTestShell(t, ShellConfig{})
	for _, name := range []string{"", "1A", "A-B", "A B", "A=B", "é"} {
		if err := s.ExportEnv(name, "v"); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ExportEnv(%q): error = %v, want ErrInvalidName", name, err)
		}
	}
	if err := s.SetOutput("a=b", "v"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("SetOutput(a=b): error = %v, want ErrInvalidName", err)
	}
	if err := s.SetOutput("a.b", "v"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("SetOutput(a.b): error = %v, want ErrInvalidName", err)
	}
	if exports.Len() != 0 {
		t.Errorf("exports written: %q", exports)
	}

	noExports, err := NewShell(ShellConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := noExports.ExportEnv("A", "v"); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("error = %v, want ErrNotConfigured", err)
	}

	failing, _, _ := newTestShell(t, ShellConfig{Exports: failingWriter{}})
	if err := failing.SetOutput("name", "v"); err == nil || !strings.Contains(err.Error(), "stdout closed") {
		t.Errorf("error = %v, want the writer's error", err)
	}
}

func TestShellState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	main, _, _ := newTestShell(t, ShellConfig{StateDir: dir})
	if main.IsPost() {
		t.Error("IsPost in main")
	}
	if err := main.SaveState("builder", "builder-abc"); err != nil {
		t.Fatal(err)
	}
	if err := main.SaveState("certs", "/tmp/x\n/tmp/y"); err != nil {
		t.Fatal(err)
	}
	if got := main.State("builder"); got != "builder-abc" {
		t.Errorf("State in the same phase = %q", got)
	}
	info, err := os.Stat(filepath.Join(dir, ShellStateFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("state file mode %v, want 0600", perm)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("state directory holds %d entries, want only the state file", len(entries))
	}

	post, _, _ := newTestShell(t, ShellConfig{StateDir: dir, Post: true})
	if !post.IsPost() {
		t.Error("IsPost false in post")
	}
	if got := post.State("certs"); got != "/tmp/x\n/tmp/y" {
		t.Errorf("State in post = %q", got)
	}
	if got := post.State("unset"); got != "" {
		t.Errorf("unset state = %q", got)
	}
}

func TestShellStateErrors(t *testing.T) {
	t.Run("no state dir", func(t *testing.T) {
		s, _, _ := newTestShell(t, ShellConfig{})
		if err := s.SaveState("k", "v"); !errors.Is(err, ErrNotConfigured) {
			t.Errorf("error = %v, want ErrNotConfigured", err)
		}
	})
	t.Run("invalid name", func(t *testing.T) {
		s, _, _ := newTestShell(t, ShellConfig{StateDir: t.TempDir()})
		if err := s.SaveState("", "v"); !errors.Is(err, ErrInvalidName) {
			t.Errorf("error = %v, want ErrInvalidName", err)
		}
	})
	t.Run("corrupt state file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, ShellStateFile), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewShell(ShellConfig{StateDir: dir}); err == nil || !strings.Contains(err.Error(), ShellStateFile) {
			t.Errorf("error = %v, want one naming the state file", err)
		}
	})
	t.Run("unreadable state file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, ShellStateFile), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := NewShell(ShellConfig{StateDir: dir}); err == nil {
			t.Error("a directory in place of the state file gave no error")
		}
	})
	t.Run("state dir not creatable", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		s, _, _ := newTestShell(t, ShellConfig{StateDir: dir})
		// Something else takes the directory's place after start-up.
		if err := os.WriteFile(dir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.SaveState("k", "v"); err == nil {
			t.Error("no error")
		}
		if got := s.State("k"); got != "" {
			t.Errorf("failed save still visible: %q", got)
		}
	})
	t.Run("state dir under a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewShell(ShellConfig{StateDir: filepath.Join(file, "state")}); err == nil {
			t.Error("no error")
		}
	})
}

func TestShellInputsJobAndLogs(t *testing.T) {
	s, _, log := newTestShell(t, ShellConfig{
		Inputs:   map[string]string{"platforms": " linux/arm64 \n"},
		Job:      cijob.Identity{Repository: "org/app", JobID: "7"},
		StateDir: "/state",
	})
	if got := s.Name(); got != "shell" {
		t.Errorf("Name = %q", got)
	}
	if got := s.Input("platforms"); got != "linux/arm64" {
		t.Errorf("Input = %q", got)
	}
	if got := s.Input("unset"); got != "" {
		t.Errorf("unset Input = %q", got)
	}
	if got, want := s.Job(), (cijob.Identity{CIPlatform: "shell", Repository: "org/app", JobID: "7"}); got != want {
		t.Errorf("Job = %+v, want %+v", got, want)
	}
	if got := s.TempDir(); got != "/state" {
		t.Errorf("TempDir = %q", got)
	}
	if err := s.Mask("secret"); err != nil {
		t.Error(err)
	}
	end := s.Group("Provision")
	s.Infof("pod %s ready", "b")
	s.Debugf("hidden")
	s.Warningf("careful\n")
	s.Errorf("broken")
	end()
	if err := s.Summary("| a |\n|---|"); err != nil {
		t.Fatal(err)
	}
	want := "==> Provision\npod b ready\nwarning: careful\nerror: broken\n| a |\n|---|\n"
	if got := log.String(); got != want {
		t.Errorf("log =\n%s\nwant\n%s", got, want)
	}

	debug, _, log := newTestShell(t, ShellConfig{Debug: true, TempDir: "/tmp/x", Job: cijob.Identity{CIPlatform: "jenkins"}})
	debug.Debugf("shown %d", 1)
	if got := log.String(); got != "debug: shown 1\n" {
		t.Errorf("debug log = %q", got)
	}
	if !debug.Debug() || debug.TempDir() != "/tmp/x" || debug.Name() != "jenkins" {
		t.Error("Debug, TempDir or Name not as configured")
	}
}

func TestParseExportsRoundTrip(t *testing.T) {
	values := map[string]string{
		"PLAIN":  "plain",
		"EMPTY":  "",
		"QUOTE":  "it's",
		"QUOTES": "''",
		"META":   "$HOME `id` $(id) \\n \"quoted\"",
		"LINES":  "multi\nline\n",
		"TABS":   "tab\tand; semicolon && exit 1",
	}
	var b bytes.Buffer
	s, err := NewShell(ShellConfig{Exports: &b})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"PLAIN", "EMPTY", "QUOTE", "QUOTES", "META", "LINES", "TABS"} {
		if err := s.ExportEnv(name, values[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.ExportEnv("PLAIN", "overridden"); err != nil {
		t.Fatal(err)
	}
	values["PLAIN"] = "overridden"
	got, err := ParseExports(strings.NewReader("# written by setup-ephemeral-buildkit\n\n" + b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(values) {
		t.Errorf("%d variables, want %d: %q", len(got), len(values), got)
	}
	for name, want := range values {
		if got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}

	// What sh makes of the file is what ParseExports makes of it.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	file := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(file, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, want := range values {
		out, err := exec.Command(sh, "-c", `. "$1" && eval "printf '%s' \"\$$2\""`, "sh", file, name).Output()
		if err != nil {
			t.Fatalf("sh: %v", err)
		}
		if string(out) != want {
			t.Errorf("sh: %s = %q, want %q", name, out, want)
		}
	}
}

func TestParseExportsRefusesAnythingElse(t *testing.T) {
	for _, bad := range []string{
		"BUILDX_BUILDER=x\n",
		"export BUILDX_BUILDER=x\n",
		"export BUILDX_BUILDER='x'; rm -rf /\n",
		"export BUILDX_BUILDER=\"x\"\n",
		"export 1X='x'\n",
		"export X='unterminated\n",
		"export X='a' 'b'\n",
		"  export X='x'\n",
	} {
		if vars, err := ParseExports(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: accepted as %q", bad, vars)
		}
	}
	vars, err := ParseExports(strings.NewReader("export X='x'  \n\t\nexport Y='y'"))
	if err != nil || vars["X"] != "x" || vars["Y"] != "y" {
		t.Errorf("trailing blanks, no final newline: %q, %v", vars, err)
	}
}
