package ringbench

import (
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
)

func TestEvaluate(t *testing.T) {
	cases := []Case{
		{Name: "base", Metric: "ns/item"},
		{Name: "fast", Metric: "ns/item", Baseline: "base", MinSpeedup: 4},
		{Name: "slow", Metric: "ns/item", Baseline: "base", MinSpeedup: 4},
		{Name: "free", Metric: "ns/item", Baseline: "base"},
		{Name: "broken", Metric: "ns/item", Baseline: "base", MinSpeedup: 2},
		{Name: "orphan", Metric: "ns/item", Baseline: "missing", MinSpeedup: 2},
	}
	measured := map[string]Measurement{
		"base":   {Values: []float64{40, 50, 60}},
		"fast":   {Values: []float64{10, 12, 11}}, // 50/11 = 4.5x
		"slow":   {Values: []float64{20, 13, 14}}, // 50/14 = 3.6x
		"free":   {Values: []float64{100}},
		"broken": {Values: []float64{1}, Err: errors.New("checksum wrong")},
		"orphan": {Values: []float64{1}},
	}
	rows := Evaluate(cases, measured)
	want := map[string]Status{"base": Baseline, "fast": Pass, "slow": Miss, "free": Info, "broken": Failed, "orphan": Failed}
	for _, r := range rows {
		if r.Status != want[r.Name] {
			t.Errorf("%s: status %s, want %s (row %+v)", r.Name, r.Status, want[r.Name], r)
		}
	}
	if rows[1].Value != 11 || rows[1].Speedup < 4.54 || rows[1].Speedup > 4.55 {
		t.Errorf("fast: value %v speedup %v, want the medians 11 and 50/11", rows[1].Value, rows[1].Speedup)
	}
	if !strings.Contains(rows[4].Error, "checksum wrong") {
		t.Errorf("a failed case's row does not say why: %q", rows[4].Error)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := (Measurement{Values: c.in}).Median(); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// withBenchtime runs fn with testing.Benchmark's duration set to d.
func withBenchtime(t *testing.T, d string, fn func()) {
	old := flag.Lookup("test.benchtime").Value.String()
	if err := flag.Set("test.benchtime", d); err != nil {
		t.Fatal(err)
	}
	defer flag.Set("test.benchtime", old)
	fn()
}

// TestEveryCaseRuns runs each body for a few thousand items, so that a body
// whose own order and checksum checks fail, or that reports no metric, is
// caught by go test and not only by the CLI.
func TestEveryCaseRuns(t *testing.T) {
	testutil.SkipShort(t, "runs every benchmark body")
	withBenchtime(t, "3000x", func() {
		for _, c := range Cases() {
			m := Measure(c, 1)
			if m.Err != nil || len(m.Values) != 1 || m.Values[0] <= 0 {
				t.Errorf("%s: values %v, error %v", c.Name, m.Values, m.Err)
			}
		}
	})
}

func TestMeasureReportsTheFailure(t *testing.T) {
	failing := Case{Name: "bad", Metric: "ns/item", Run: func(b *testing.B) {
		fatalf(b, "item %d is wrong", 7)
	}}
	withBenchtime(t, "10x", func() {
		m := Measure(failing, 3)
		if m.Err == nil || !strings.Contains(m.Err.Error(), "item 7 is wrong") {
			t.Fatalf("Measure of a failing body: %v, want its message", m.Err)
		}
	})
	silent := Case{Name: "quiet", Metric: "ns/item", Run: func(b *testing.B) {}}
	withBenchtime(t, "10x", func() {
		if m := Measure(silent, 1); m.Err == nil {
			t.Fatal("a body that reports no metric was accepted")
		}
	})
}
