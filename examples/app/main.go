// Command hello is the example application the workflows in examples/workflows build, and the
// one `make demo` builds for linux/amd64 and linux/arm64. It is static, so the image needs no
// base image: nothing has to be pulled to build it.
//
//	hello                        greets, naming the platform it runs as
//	hello build-info FILE        writes where it ran (a RUN step calls this at build time)
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 0:
		fmt.Printf("hello from %s/%s\n", runtime.GOOS, runtime.GOARCH)
		return nil
	case len(args) == 2 && args[0] == "build-info":
		return os.WriteFile(args[1], []byte(buildInfo()), 0o644)
	}
	return fmt.Errorf("usage: hello [build-info FILE]")
}

// buildInfo says which architecture the program was compiled for and which machine the kernel
// (or qemu, under emulation) reports: run in a RUN step, it tells where the step really ran.
func buildInfo() string {
	var u syscall.Utsname
	machine := "unknown"
	if err := syscall.Uname(&u); err == nil {
		var b strings.Builder
		for _, c := range u.Machine {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		machine = b.String()
	}
	return fmt.Sprintf("platform=%s/%s machine=%s\n", runtime.GOOS, runtime.GOARCH, machine)
}
