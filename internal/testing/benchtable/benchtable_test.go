package benchtable

import (
	"math"
	"strings"
	"testing"
)

func TestPercentileAndMedian(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 10, 6, 7, 8, 9}
	if got := Percentile(v, 50); got != 5 {
		t.Errorf("p50 = %v, want 5", got)
	}
	if got := Percentile(v, 95); got != 10 {
		t.Errorf("p95 = %v, want 10", got)
	}
	if got := Median(v); got != 5.5 {
		t.Errorf("median = %v, want 5.5", got)
	}
	if !math.IsNaN(Median(nil)) || !math.IsNaN(Percentile(nil, 50)) {
		t.Error("no values must give NaN")
	}
	if v[0] != 5 {
		t.Error("the input was sorted in place")
	}
}

func TestTablePrintsRatiosOfMedians(t *testing.T) {
	tab := Table{Ours: "ours", Theirs: "driver"}
	tab.Add(Row{Measure: "usable builder", Unit: "s", Ours: []float64{2, 1.5, 3}, Theirs: []float64{32, 33, 31}})
	tab.Add(Row{Measure: "cache volume rebuild", Unit: "s", Note: "(not measured: cache volumes not on this branch)"})
	var b strings.Builder
	if err := tab.Fprint(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"1.50 / 2 / 3 s (n=3)", "31 / 32 / 33 s (n=3)", "0.06x", "(not measured: cache volumes not on this branch)"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
