package version

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
)

func TestResolve(t *testing.T) {
	vcs := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"}, {Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		name            string
		stampV, stampC  string
		bi              *debug.BuildInfo
		want            string
		wantVer, wantCo string
	}{
		{"stamped release", "v1.2.3", "89abcdef0123456789abcdef0123456789abcdef", vcs,
			"x v1.2.3 (commit 89abcdef0123, tested with BuildKit " + BuildKit + ", go1.26.8 linux/amd64)", "v1.2.3", "89abcdef0123456789abcdef0123456789abcdef"},
		{"checkout build: VCS stamp", "", "", vcs,
			"x dev (commit 0123456789ab+modified, tested with BuildKit " + BuildKit + ", go1.26.8 linux/amd64)", "dev", "0123456789abcdef0123456789abcdef01234567"},
		{"go install module@version", "", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}},
			"x v1.4.0 (commit unknown, tested with BuildKit " + BuildKit + ", go1.26.8 linux/amd64)", "v1.4.0", ""},
		{"no build info", "", "", nil, "", "dev", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := resolve(tc.stampV, tc.stampC, tc.bi)
			got.Platform = "linux/amd64"
			if got.Version != tc.wantVer || got.Commit != tc.wantCo || got.BuildKit != BuildKit {
				t.Errorf("resolve = %+v, want version %q commit %q", got, tc.wantVer, tc.wantCo)
			}
			if tc.want != "" && got.String("x") != tc.want {
				t.Errorf("String = %q\nwant      %q", got.String("x"), tc.want)
			}
		})
	}
}

// TestBuildKitIsThePin: the BuildKit version --version names is the one the tests run (the
// hack/tools/buildkit pin) and the default builder image's tag.
func TestBuildKitIsThePin(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "hack", "tools", "buildkit", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require github\.com/moby/buildkit (v\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("hack/tools/buildkit/go.mod requires no github.com/moby/buildkit")
	}
	if string(m[1]) != BuildKit {
		t.Errorf("hack/tools/buildkit pins BuildKit %s, version.BuildKit is %s", m[1], BuildKit)
	}
	if want := "docker.io/moby/buildkit:" + BuildKit; k8sprov.DefaultImage != want {
		t.Errorf("k8sprov.DefaultImage = %s, want %s", k8sprov.DefaultImage, want)
	}
}

// TestLDFlagsStampBinaries builds both programs with LDFlags, as make dist does, and reads the
// stamp back from --version: the -X paths name real variables (the linker ignores unknown ones).
func TestLDFlagsStampBinaries(t *testing.T) {
	dir := t.TempDir()
	for _, program := range []string{"setup-ephemeral-buildkit", "gitlab-executor-hook"} {
		bin := filepath.Join(dir, program)
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", LDFlags("v9.8.7", "fedcba9876543210fedcba9876543210fedcba98"),
			"-o", bin, "../../cmd/"+program)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		for _, arg := range []string{"--version", "version"} {
			out, err := exec.Command(bin, arg).CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", program, arg, err, out)
			}
			want := program + " v9.8.7 (commit fedcba987654, tested with BuildKit " + BuildKit + ", go1."
			if !strings.HasPrefix(string(out), want) {
				t.Errorf("%s %s = %q, want it to start with %q", program, arg, out, want)
			}
		}
	}
}
