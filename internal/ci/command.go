package ci

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Workflow commands are lines the GitHub runner reads from a step's output:
//
//	::name key=value,key=value::message
//
// The runner unescapes %25, %0D and %0A in the message, and additionally %3A and %2C in property
// values, so the message and properties are escaped the same way before they are written.

var (
	dataEscaper     = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A")
	propertyEscaper = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C")
)

// escapeData escapes a workflow command's message.
func escapeData(s string) string { return dataEscaper.Replace(s) }

// escapeProperty escapes a workflow command's property value.
func escapeProperty(s string) string { return propertyEscaper.Replace(s) }

// property is one key=value of a workflow command, in order.
type property struct{ key, value string }

// formatCommand renders one workflow command line, without the line break. Properties with empty
// values are left out, as the runner's toolkit does.
func formatCommand(name string, props []property, message string) string {
	var b strings.Builder
	b.WriteString("::")
	b.WriteString(name)
	sep := " "
	for _, p := range props {
		if p.value == "" {
			continue
		}
		b.WriteString(sep)
		b.WriteString(p.key)
		b.WriteString("=")
		b.WriteString(escapeProperty(p.value))
		sep = ","
	}
	b.WriteString("::")
	b.WriteString(escapeData(message))
	return b.String()
}

// delimiterPrefix starts every heredoc delimiter, as in the runner's own toolkit.
const delimiterPrefix = "ghadelimiter_"

// newDelimiter returns a heredoc delimiter with 128 random bits from random.
func newDelimiter(random io.Reader) (string, error) {
	var buf [16]byte
	if _, err := io.ReadFull(random, buf[:]); err != nil {
		return "", fmt.Errorf("reading random bytes for a heredoc delimiter: %w", err)
	}
	return delimiterPrefix + hex.EncodeToString(buf[:]), nil
}

// defaultRandom is the source of delimiters when none is injected.
func defaultRandom() io.Reader { return rand.Reader }

// formatKeyValue renders one entry of an environment file (GITHUB_OUTPUT, GITHUB_ENV,
// GITHUB_STATE) in the multi-line syntax, which is correct for every value:
//
//	name<<delimiter
//	value
//	delimiter
//
// It refuses a name or value that contains the delimiter.
func formatKeyValue(name, value, delimiter string) (string, error) {
	if strings.Contains(name, delimiter) || strings.Contains(value, delimiter) {
		return "", fmt.Errorf("%q: %w %q", name, ErrDelimiterCollision, delimiter)
	}
	return name + "<<" + delimiter + "\n" + value + "\n" + delimiter + "\n", nil
}

// LockedWriter serialises writes to W, so that lines from concurrent goroutines (one per
// builder, a script's stderr and the hook's own messages) stay whole. It is the program's one
// locked writer.
type LockedWriter struct {
	mu sync.Mutex
	W  io.Writer
}

// Write writes p to W in one call, holding the lock.
func (l *LockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.W.Write(p)
}

// write writes s in one call.
func (l *LockedWriter) write(s string) error {
	_, err := l.Write([]byte(s))
	return err
}
