package buildx

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExecRunner(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	r := ExecRunner{Env: []string{"PATH=/usr/bin:/bin", "KEEP=base", "OVERRIDE=base"}}
	res, err := r.Run(context.Background(), Command{
		Args: []string{sh, "-c", `echo "$KEEP $OVERRIDE $1"; echo oops >&2; read -r line || echo "no stdin" >&2; exit 3`, "sh", "arg one"},
		Env:  []string{"OVERRIDE=added"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res.Stdout); got != "base added arg one\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := string(res.Stderr); got != "oops\nno stdin\n" {
		t.Errorf("stderr = %q", got)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", res.ExitCode)
	}
}

func TestExecRunnerInheritsEnvironment(t *testing.T) {
	t.Setenv("BUILDX_TEST_INHERITED", "yes")
	res, err := ExecRunner{}.Run(context.Background(), Command{Args: []string{"sh", "-c", `echo "$BUILDX_TEST_INHERITED"`}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(res.Stdout)) != "yes" {
		t.Errorf("stdout = %q", res.Stdout)
	}
}

func TestExecRunnerErrors(t *testing.T) {
	if _, err := (ExecRunner{}).Run(context.Background(), Command{}); err == nil {
		t.Error("no program: no error")
	}
	_, err := ExecRunner{}.Run(context.Background(), Command{Args: []string{"/nonexistent/docker", "buildx"}})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/docker") {
		t.Errorf("missing program: error = %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = ExecRunner{}.Run(ctx, Command{Args: []string{"sleep", "30"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled: error = %v, want context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("cancelled command took %v", elapsed)
	}
}

func TestExecRunnerDoesNotAliasEnv(t *testing.T) {
	base := make([]string, 1, 4)
	base[0] = "A=1"
	r := ExecRunner{Env: base}
	for _, v := range []string{"B=2", "C=3"} {
		if _, err := r.Run(context.Background(), Command{Args: []string{"true"}, Env: []string{v}}); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(base[:cap(base)][1:2], []string{""}) {
		t.Errorf("base environment's spare capacity was written: %q", base[:cap(base)])
	}
}
