// Command archprobe runs inside a Dockerfile RUN step of the environment test. It writes the
// architecture it was compiled for, proving the step really executed (natively or under qemu).
package main

import (
	"os"
	"runtime"
)

func main() {
	if err := os.WriteFile(os.Args[1], []byte(runtime.GOOS+"/"+runtime.GOARCH+"\n"), 0o644); err != nil {
		os.Exit(1)
	}
}
