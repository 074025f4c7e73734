package main

import (
	"path/filepath"
	"testing"
)

func TestOneVotePerVoterSurvivesRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ballots.json")
	b, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []Vote{{"ann", "a"}, {"bob", "a"}, {"ann", "b"}} {
		if err := b.Cast(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Cast(Vote{"eve", "c"}); err == nil {
		t.Error("a vote for c was counted")
	}
	again, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Tally(); got["a"] != 1 || got["b"] != 1 {
		t.Errorf("tally after restart %v, want a:1 b:1", got)
	}
}
