// Package benchtable summarises repeated measurements (min, median, max, percentiles) and prints
// them side by side for two contenders, with the ratio of their medians, as `make bench` shows
// setup-ephemeral-buildkit beside buildx's kubernetes driver.
package benchtable

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
)

// Percentile returns the p-th percentile (0..100) of values by the nearest-rank method, NaN for
// none.
func Percentile(values []float64, p float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), values...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

// Median is the middle value (the mean of the two middle ones for an even count), NaN for none.
func Median(values []float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), values...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Row is one measure: the values of each contender (either may be empty: not measured) and a
// note, such as why a cell is empty.
type Row struct {
	Measure string
	Unit    string
	Ours    []float64
	Theirs  []float64
	Note    string
}

// Table is rows under the contenders' names.
type Table struct {
	Ours, Theirs string
	Rows         []Row
}

// Add appends a row.
func (t *Table) Add(r Row) { t.Rows = append(t.Rows, r) }

// cell is "min / median / max unit (n=N)", or "-".
func cell(v []float64, unit string) string {
	if len(v) == 0 {
		return "-"
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 1 {
		return fmt.Sprintf("%s %s", num(s[0]), unit)
	}
	return fmt.Sprintf("%s / %s / %s %s (n=%d)", num(s[0]), num(Median(s)), num(s[len(s)-1]), unit, len(s))
}

func num(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e6 {
		return fmt.Sprintf("%.0f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

// Ratio is the ours/theirs ratio of the medians, "-" when either is missing.
func (r Row) Ratio() string {
	if len(r.Ours) == 0 || len(r.Theirs) == 0 || Median(r.Theirs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", Median(r.Ours)/Median(r.Theirs))
}

// Fprint writes the table as aligned text: measure, ours (min / median / max), theirs, ratio of
// medians (ours/theirs), note.
func (t Table) Fprint(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "measure\t%s (min / median / max)\t%s (min / median / max)\t%s/%s\tnote\n", t.Ours, t.Theirs, t.Ours, t.Theirs)
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", strings.Repeat("-", 7), strings.Repeat("-", 20), strings.Repeat("-", 20), strings.Repeat("-", 5), strings.Repeat("-", 4))
	for _, r := range t.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Measure, cell(r.Ours, r.Unit), cell(r.Theirs, r.Unit), r.Ratio(), r.Note)
	}
	return tw.Flush()
}
