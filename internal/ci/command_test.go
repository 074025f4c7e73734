package ci

import (
	"errors"
	"strings"
	"testing"
	"testing/iotest"
)

func TestEscapeData(t *testing.T) {
	tests := map[string]string{
		"plain":              "plain",
		"100%":               "100%25",
		"a\nb":               "a%0Ab",
		"a\r\nb":             "a%0D%0Ab",
		"%0A stays literal":  "%250A stays literal",
		"colon: and, comma":  "colon: and, comma",
		"::error::injection": "::error::injection",
	}
	for in, want := range tests {
		if got := escapeData(in); got != want {
			t.Errorf("escapeData(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEscapeProperty(t *testing.T) {
	tests := map[string]string{
		"file.go":     "file.go",
		"a:b,c":       "a%3Ab%2Cc",
		"50%\r\nnext": "50%25%0D%0Anext",
	}
	for in, want := range tests {
		if got := escapeProperty(in); got != want {
			t.Errorf("escapeProperty(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFormatCommand(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		props   []property
		message string
		want    string
	}{
		{"no properties", "warning", nil, "disk: 90%\nfull", "::warning::disk: 90%25%0Afull"},
		{"empty message", "endgroup", nil, "", "::endgroup::"},
		{
			"properties in order, escaped, empty ones left out",
			"error",
			[]property{{"file", "a:b.go"}, {"line", ""}, {"title", "x,y"}},
			"boom",
			"::error file=a%3Ab.go,title=x%2Cy::boom",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatCommand(tt.cmd, tt.props, tt.message); got != tt.want {
				t.Errorf("formatCommand() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNewDelimiter(t *testing.T) {
	d, err := newDelimiter(strings.NewReader(strings.Repeat("\x01", 16)))
	if err != nil {
		t.Fatal(err)
	}
	if want := "ghadelimiter_01010101010101010101010101010101"; d != want {
		t.Errorf("delimiter = %q, want %q", d, want)
	}
	if _, err := newDelimiter(iotest.ErrReader(errors.New("no entropy"))); err == nil || !strings.Contains(err.Error(), "no entropy") {
		t.Errorf("error = %v, want the reader's error", err)
	}
	if _, err := newDelimiter(strings.NewReader("short")); err == nil {
		t.Error("a short read gave no error")
	}
}

func TestFormatKeyValue(t *testing.T) {
	got, err := formatKeyValue("nodes", "line 1\nline 2", "D")
	if err != nil {
		t.Fatal(err)
	}
	if want := "nodes<<D\nline 1\nline 2\nD\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, tt := range []struct{ name, value string }{
		{"n", "before\nDELIM\nafter"},
		{"n", "xDELIMx"},
		{"DELIM", "v"},
	} {
		if _, err := formatKeyValue(tt.name, tt.value, "DELIM"); !errors.Is(err, ErrDelimiterCollision) {
			t.Errorf("formatKeyValue(%q, %q): error %v, want ErrDelimiterCollision", tt.name, tt.value, err)
		}
	}
}
