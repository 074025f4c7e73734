// Package version says which release a binary is: its version and commit, stamped at link time
// by `make dist` and `make release-images` (-ldflags -X, see LDFlags), or read from Go's build
// information when it was built otherwise (go install, go build in a checkout), and the BuildKit
// version the release was tested with.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// BuildKit is the BuildKit release this version of setup-ephemeral-buildkit was tested with:
// the default builder image's tag and the version hack/tools/buildkit pins (a test keeps the
// three equal).
const BuildKit = "v0.34.2"

// Stamped at link time: -X github.com/org/setup-ephemeral-buildkit/internal/version.version=v1.2.3
// and ...commit=<sha>. Empty means "not stamped": Get falls back to the build information.
var (
	version string
	commit  string
)

// Info is what --version prints.
type Info struct {
	// Version is the release (v1.2.3), the module version `go install` recorded, or "dev".
	Version string
	// Commit is the source commit, "" when unknown; Modified says the work tree had changes.
	Commit   string
	Modified bool
	// BuildKit is the BuildKit version the release was tested with.
	BuildKit string
	// Go is the Go toolchain that built the binary; Platform is GOOS/GOARCH.
	Go, Platform string
}

// Get returns the running binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(version, commit, bi)
}

// resolve prefers the stamped values and falls back to bi (which may be nil).
func resolve(stampedVersion, stampedCommit string, bi *debug.BuildInfo) Info {
	info := Info{Version: stampedVersion, Commit: stampedCommit, BuildKit: BuildKit, Go: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		info.Go = bi.GoVersion
		// `go install module@v1.2.3` records the module version; a build in a checkout records
		// "(devel)" or a pseudo-version, and the VCS settings below.
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					info.Commit = s.Value
				case "vcs.modified":
					info.Modified = s.Value == "true"
				}
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	return info
}

// String is the one line --version prints for program, for example
//
//	setup-ephemeral-buildkit v1.2.3 (commit 0123abc, BuildKit v0.34.2, go1.26.8 linux/amd64)
func (i Info) String(program string) string {
	c := i.Commit
	if c == "" {
		c = "unknown"
	} else if len(c) > 12 {
		c = c[:12]
	}
	if i.Modified {
		c += "+modified"
	}
	return fmt.Sprintf("%s %s (commit %s, tested with BuildKit %s, %s %s)", program, i.Version, c, i.BuildKit, i.Go, i.Platform)
}

// LDFlags are the -X flags that stamp v and c into a binary (what the Makefile writes by hand).
func LDFlags(v, c string) string {
	const pkg = "github.com/org/setup-ephemeral-buildkit/internal/version"
	return strings.Join([]string{"-X " + pkg + ".version=" + v, "-X " + pkg + ".commit=" + c}, " ")
}
