// Command sleeper is a build step that takes as long as its build argument SECONDS says (the
// build passes build arguments to RUN steps as environment), so that the fault-injection tests
// can disturb a build while it runs. It is static: nothing can be pulled here, so the build
// starts FROM scratch, with no shell to expand arguments.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	seconds, err := strconv.ParseFloat(os.Getenv("SECONDS"), 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sleeper: want SECONDS:", err)
		os.Exit(2)
	}
	fmt.Printf("sleeping %gs\n", seconds)
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	fmt.Println("slept")
}
