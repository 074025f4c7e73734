package gitlabci

import (
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
)

// Expand expands $NAME and ${NAME} in value the way GitLab Runner expands the values of a job's
// variables before it exports them: os.Expand's syntax, names looked up with lookup, a name
// lookup does not know expands to nothing, $$ is a literal $, and the shell's special
// parameters ($1, $?, $@, ...) expand to nothing. The result is exported as it is: the shell does
// not expand it again.
func Expand(value string, lookup func(string) string) string {
	return os.Expand(value, func(name string) string {
		if name == "$" {
			return "$"
		}
		if len(name) == 1 && strings.ContainsAny(name, "*#@!?-0123456789") {
			return ""
		}
		return lookup(name)
	})
}

// Environment returns what a job's scripts export: env (the predefined variables GitLab gives
// every job, such as CI_JOB_ID or CI_JOB_STATUS) and the job's own variables, whose values
// are expanded with Expand. As in GitLab Runner, expansion is a single pass over all of them:
// a reference to another of the job's variables gets that variable's value as written,
// unexpanded, and a job variable of the same name as a predefined one wins.
func (j Job) Environment(env map[string]string) map[string]string {
	lookup := func(name string) string {
		if v, ok := j.Variables[name]; ok {
			return v
		}
		return env[name]
	}
	out := maps.Clone(env)
	if out == nil {
		out = map[string]string{}
	}
	for name, value := range j.Variables {
		out[name] = Expand(value, lookup)
	}
	return out
}

// MainShell renders the shell script GitLab Runner runs for a job that extends j with the given
// script: before_script and script in one shell, so that what before_script exports (the
// builders' environment) reaches script. env is as for Environment.
func (j Job) MainShell(env map[string]string, script []string) string {
	return render(j.Environment(env), append(slices.Clone(j.BeforeScript), script...))
}

// AfterShell renders the shell script GitLab Runner runs for after_script, once the main script
// has ended: a shell of its own that gets the job's variables but nothing the main shell
// exported. GitLab sets CI_JOB_STATUS ("success", "failed" or "canceled") in env.
func (j Job) AfterShell(env map[string]string) string {
	return render(j.Environment(env), j.AfterScript)
}

// render writes a script the way GitLab Runner's bash/sh shell writer does (shells/bash.go,
// BashWriter.Finish): pipefail where the shell has it, errexit, every variable exported with
// its value single-quoted, and the commands, one script entry after the other, evaluated with
// an empty standard input. The result runs under bash, dash and BusyBox sh; only bash and BusyBox
// sh have pipefail (dash, like the runner's script on it, runs without). The runner also echoes
// each command ("$ docker build ...") before it runs it; this does not, so that a command's
// text is never mistaken for its output.
func render(vars map[string]string, commands []string) string {
	var body strings.Builder
	for _, name := range slices.Sorted(maps.Keys(vars)) {
		body.WriteString("export " + name + "=" + ci.ShellQuote(vars[name]) + "\n")
	}
	for _, c := range commands {
		body.WriteString(c + "\n")
	}
	return "if set -o | grep pipefail >/dev/null; then set -o pipefail; fi; set -o errexit\n" +
		"set +o noclobber\n" +
		": | eval " + ci.ShellQuote(body.String()) + "\n" +
		"exit 0\n"
}
