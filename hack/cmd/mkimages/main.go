// Command mkimages writes the OCI image archives the local test cluster imports into its
// containerd: pause.tar (the pod sandbox image) and buildkit.tar (BuildKit, standing in for
// docker.io/moby/buildkit, which cannot be pulled on a machine without internet).
//
// Usage:
//
//	go run ./hack/cmd/mkimages -bin "$CACHE_DIR/bin" -out "$CACHE_DIR/images"
//
// -bin holds buildkitd, buildctl and runc-static as hack/build-tools.sh leaves them. The pause
// program is built from hack/images/pause. Each archive has a stamp beside it (the hash of
// every input); when it matches, the archive is reused, so a second run writes nothing.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.binDir, "bin", "", "directory with buildkitd, buildctl and runc-static (required)")
	flag.StringVar(&cfg.outDir, "out", "", "directory to write pause.tar and buildkit.tar to (required)")
	flag.StringVar(&cfg.busybox, "busybox", "/bin/busybox", "static busybox for the BuildKit image's shell (Debian's busybox-static)")
	flag.StringVar(&cfg.goCmd, "go", "go", "Go command used to build the pause program")
	flag.Parse()
	if cfg.binDir == "" || cfg.outDir == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "mkimages:", err)
		os.Exit(1)
	}
}
