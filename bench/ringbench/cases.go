package ringbench

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// Case is one benchmark of the ring report.
type Case struct {
	// Name is the benchmark's name under `go test -bench` without the
	// "Benchmark" prefix, e.g. "RingSPSC/batch=16".
	Name string
	// Run is the benchmark body.
	Run func(*testing.B)
	// Metric is the reported unit compared: "ns/item" or "p50-ns"; lower
	// is better.
	Metric string
	// Baseline names the Case this one is compared against; empty for a
	// baseline.
	Baseline string
	// MinSpeedup is the target: Baseline's value divided by this one's
	// must be at least MinSpeedup. Zero means no target (reported only).
	MinSpeedup float64
}

// Cases returns the ring benchmarks and their baselines, baselines first.
func Cases() []Case {
	return []Case{
		{Name: "ChanSPSC", Run: Chan, Metric: "ns/item"},
		{Name: "ChanSPSC64B", Run: Chan64B, Metric: "ns/item"},
		{Name: "PingPong/chan", Run: PingPongChan, Metric: "p50-ns"},
		{Name: "MutexQueue", Run: MutexQueue, Metric: "ns/item", Baseline: "ChanSPSC"},
		{Name: "RingSPSC/batch=1", Run: func(b *testing.B) { SPSC(b, 1) }, Metric: "ns/item", Baseline: "ChanSPSC", MinSpeedup: 4},
		{Name: "RingSPSC/batch=16", Run: func(b *testing.B) { SPSC(b, 16) }, Metric: "ns/item", Baseline: "ChanSPSC", MinSpeedup: 40},
		{Name: "Records/64B/batch=1", Run: func(b *testing.B) { Records(b, 1) }, Metric: "ns/item", Baseline: "ChanSPSC64B"},
		{Name: "Records/64B/batch=16", Run: func(b *testing.B) { Records(b, 16) }, Metric: "ns/item", Baseline: "ChanSPSC64B", MinSpeedup: 20},
		{Name: "PingPong/ring", Run: PingPongRing, Metric: "p50-ns", Baseline: "PingPong/chan"},
		{Name: "PingPong/cacheline", Run: PingPongCacheLine, Metric: "p50-ns", Baseline: "PingPong/chan"},
	}
}

// Measurement is the outcome of running one Case one or more times.
type Measurement struct {
	Values []float64 // Metric of each run, in run order
	Err    error     // why a run failed; Values then holds the runs before
}

// Median returns the median of the values, or 0 if there are none.
func (m Measurement) Median() float64 {
	if len(m.Values) == 0 {
		return 0
	}
	v := slices.Clone(m.Values)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// failures keeps the message of a body's b.Fatal: testing.Benchmark
// discards benchmark output, and the report should say what went wrong.
var failures struct {
	sync.Mutex
	last string
}

// fatalf is b.Fatalf that also leaves the message for Measure.
func fatalf(b *testing.B, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	failures.Lock()
	failures.last = msg
	failures.Unlock()
	b.Fatal(msg)
}

// Measure runs c count times with testing.Benchmark (whose duration is the
// test.benchtime flag) and collects its metric.
func Measure(c Case, count int) Measurement {
	var m Measurement
	for range count {
		failures.Lock()
		failures.last = ""
		failures.Unlock()
		r := testing.Benchmark(c.Run)
		v, ok := r.Extra[c.Metric]
		if r.N == 0 || !ok {
			failures.Lock()
			why := failures.last
			failures.Unlock()
			if why == "" {
				why = "the benchmark failed without a message"
			}
			m.Err = fmt.Errorf("%s: %s", c.Name, why)
			return m
		}
		m.Values = append(m.Values, v)
	}
	return m
}

// Status is the verdict of a row of the report.
type Status string

const (
	Pass     Status = "PASS"     // meets its target
	Miss     Status = "MISS"     // ran, but below its target
	Info     Status = "-"        // has no target
	Baseline Status = "baseline" // is a baseline
	Failed   Status = "FAIL"     // it, or its baseline, did not run to the end
)

// Row is one line of the report.
type Row struct {
	Name       string  `json:"name"`
	Metric     string  `json:"metric"`
	Value      float64 `json:"value"`                // median over the runs
	Runs       int     `json:"runs"`                 // successful runs
	Baseline   string  `json:"baseline,omitempty"`   // what it is compared with
	Speedup    float64 `json:"speedup,omitempty"`    // baseline value / value
	MinSpeedup float64 `json:"minSpeedup,omitempty"` // the target, if any
	Status     Status  `json:"status"`
	Error      string  `json:"error,omitempty"`
}

// Evaluate turns measurements into report rows, in the order of cases:
// each row's speed-up over its baseline (from the same run) and whether it
// meets its target.
func Evaluate(cases []Case, measured map[string]Measurement) []Row {
	rows := make([]Row, 0, len(cases))
	for _, c := range cases {
		m := measured[c.Name]
		row := Row{Name: c.Name, Metric: c.Metric, Value: m.Median(), Runs: len(m.Values),
			Baseline: c.Baseline, MinSpeedup: c.MinSpeedup}
		base, hasBase := measured[c.Baseline]
		switch {
		case m.Err != nil || len(m.Values) == 0:
			row.Status = Failed
			row.Error = "did not run"
			if m.Err != nil {
				row.Error = m.Err.Error()
			}
		case c.Baseline == "":
			row.Status = Baseline
		case !hasBase || base.Err != nil || len(base.Values) == 0 || row.Value <= 0:
			row.Status = Failed
			row.Error = fmt.Sprintf("baseline %s did not run, so there is nothing to compare with", c.Baseline)
		default:
			row.Speedup = base.Median() / row.Value
			switch {
			case c.MinSpeedup == 0:
				row.Status = Info
			case row.Speedup >= c.MinSpeedup:
				row.Status = Pass
			default:
				row.Status = Miss
			}
		}
		rows = append(rows, row)
	}
	return rows
}
