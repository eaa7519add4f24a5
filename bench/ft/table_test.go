package ft

import (
	"strings"
	"testing"
)

// sampleReport is a report as a run makes it, before ComputeRatios.
func sampleReport() *Report {
	rep := &Report{CPUs: 2, LoadAverage: "1.00 1.00 1.00", WarmupS: 1, WindowS: 2}
	for _, w := range Workloads()[:3] {
		rep.Workloads = append(rep.Workloads, WorkloadInfo{Name: w.Name, Title: w.Title, Unit: w.Unit, Target: w.Target})
	}
	setups, _ := Setups([]string{"tcp"})
	ops := uint64(1000)
	for _, w := range Workloads()[:3] {
		for _, s := range setups {
			r := Row{Workload: w.Name, Setup: s, WindowS: 2, Ops: ops, Unit: w.Unit, PerOp: w.PerOp, Target: w.Target,
				CPUPrimary: 80, LoadAverage: "1.00 1.00 1.00"}
			r.Throughput = float64(r.Ops) / r.WindowS
			if s.Protected {
				r.CPUSecondary, r.LogBytes, r.LogMbitPerSec = 70, 1e6, 4
			}
			if w.Load != nil {
				r.Client = &Latency{Count: 10, P50: 500, P99: 900, P999: 1500}
			}
			rep.Rows = append(rep.Rows, r)
			ops -= 150
		}
	}
	return rep
}

func TestCheckAcceptsComputedRatios(t *testing.T) {
	rep := sampleReport()
	ComputeRatios(rep)
	if err := Check(rep, rep.Markdown()); err != nil {
		t.Fatalf("Check refused a report whose ratios ComputeRatios made: %v\n%s", err, rep.Markdown())
	}
	r := rep.Rows[1] // kv-sat, ack-on-receipt
	if want := 850.0 / 1000; r.Ratio != want || r.Met == nil || *r.Met || r.Why == "" {
		t.Fatalf("kv-sat receipt: ratio %v met %v why %q; want %v, missed, and a reason", r.Ratio, r.Met, r.Why, want)
	}
}

// TestCheckCatchesPlantedBugs plants the mistakes a harness can make in
// its ratios and its table, and requires Check to name each.
func TestCheckCatchesPlantedBugs(t *testing.T) {
	cases := map[string]struct {
		plant func(rep *Report, table string) string
		want  string
	}{
		"ratio against a constant": {func(rep *Report, table string) string {
			for i := range rep.Rows {
				rep.Rows[i].Ratio = rep.Rows[i].Throughput / 500
				rep.Rows[i].BaselineThroughput = 500
			}
			return rep.Markdown()
		}, "not the unprotected row's"},
		"ratio against another workload's baseline": {func(rep *Report, table string) string {
			rep.Rows[1].BaselineThroughput = rep.Rows[3].Throughput
			rep.Rows[1].Ratio = rep.Rows[1].Throughput / rep.Rows[3].Throughput
			return rep.Markdown()
		}, "not the unprotected row's"},
		"ratio kept from another run": {func(rep *Report, table string) string {
			rep.Rows[2].Ratio = 0.97
			return table
		}, "is not its throughput"},
		"table from another run": {func(rep *Report, table string) string {
			rep.Rows[4].Throughput = float64(rep.Rows[4].Ops+10) / rep.Rows[4].WindowS
			rep.Rows[4].Ops += 10
			ComputeRatios(rep)
			return table
		}, "table row 5"},
		"throughput not from the window": {func(rep *Report, table string) string {
			rep.Rows[0].Throughput *= 2
			ComputeRatios(rep)
			return rep.Markdown()
		}, "is not its"},
		"no baseline": {func(rep *Report, table string) string {
			rep.Rows = rep.Rows[1:]
			ComputeRatios(rep)
			return rep.Markdown()
		}, "no unprotected row"},
		"a row missing from the table": {func(rep *Report, table string) string {
			lines := strings.Split(table, "\n")
			return strings.Join(append(lines[:3:3], lines[4:]...), "\n")
		}, "the table has"},
		"a cell missing": {func(rep *Report, table string) string {
			return strings.Replace(table, " | 1 (baseline) |", " |", 1)
		}, "cells, want"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			rep := sampleReport()
			ComputeRatios(rep)
			table := c.plant(rep, rep.Markdown())
			err := Check(rep, table)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Check = %v; want an error with %q", err, c.want)
			}
		})
	}
}

func TestSplitRowKeepsEscapedBars(t *testing.T) {
	got := splitRow(`| a | b \| c | d |`)
	if len(got) != 3 || got[1] != "b | c" {
		t.Fatalf("splitRow = %q", got)
	}
}

func TestSetupsAndWorkloadsRefuseUnknownNames(t *testing.T) {
	if _, err := Setups([]string{"carrier-pigeon"}); err == nil || !strings.Contains(err.Error(), "tcp") {
		t.Fatalf("Setups(carrier-pigeon) = %v; want an error naming the known transports", err)
	}
	if _, err := SelectWorkloads([]string{"kv-sat", "nope"}); err == nil || !strings.Contains(err.Error(), "memstress") {
		t.Fatalf("SelectWorkloads(nope) = %v; want an error naming the workloads", err)
	}
	ws, err := SelectWorkloads([]string{"nondet", "kv-sat"})
	if err != nil || len(ws) != 2 || ws[0].Name != "kv-sat" {
		t.Fatalf("SelectWorkloads = %v, %v; want kv-sat then nondet", ws, err)
	}
}

func TestPlotSVGHasOneLinePerSeries(t *testing.T) {
	a, b := newHist(), newHist()
	for i := int64(1); i <= 1000; i++ {
		a.RecordValue(i * 10_000)
		b.RecordValue(i * 20_000)
	}
	svg := PlotSVG("test <plot>", []Series{{"a", a}, {"b", b}, {"empty", newHist()}})
	if n := strings.Count(svg, "<polyline"); n != 2 {
		t.Fatalf("%d lines, want 2 (the empty series left out)", n)
	}
	if !strings.Contains(svg, "test &lt;plot&gt;") || !strings.HasSuffix(svg, "</svg>\n") {
		t.Fatalf("title not escaped or SVG not closed:\n%s", svg)
	}
}

func TestComputeRatiosSaysWhenAFixedRateWasNotKept(t *testing.T) {
	rep := sampleReport()
	for i := 3; i < 6; i++ { // kv-rate: 275, 200 and 125 req/s
		rep.Rows[i].OfferedRate = 1000
	}
	rep.Rows[4].Throughput, rep.Rows[4].Ops = 980, 1960
	ComputeRatios(rep)
	if w := rep.Rows[3].Why; !strings.Contains(w, "275 of the 1000/s offered") || !strings.Contains(w, "ratios are against it") {
		t.Errorf("unprotected kv-rate at 275 of 1000/s: why %q", w)
	}
	if w := rep.Rows[4].Why; w != "" {
		t.Errorf("protected kv-rate that kept its rate: why %q, want none", w)
	}
	if w := rep.Rows[5].Why; !strings.Contains(w, "125 of the 1000/s offered") || !strings.Contains(w, "pair") {
		t.Errorf("protected kv-rate at 125 of 1000/s: why %q, want the rate and the evidence", w)
	}
	if err := Check(rep, rep.Markdown()); err != nil {
		t.Fatal(err)
	}
}
