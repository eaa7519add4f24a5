package ft

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ComputeRatios fills in each row's Ratio, BaselineThroughput, Met and
// Why from the unprotected row of the same workload in rep.
func ComputeRatios(rep *Report) {
	base := map[string]*Row{}
	for i := range rep.Rows {
		if r := &rep.Rows[i]; !r.Setup.Protected {
			base[r.Workload] = r
		}
	}
	for i := range rep.Rows {
		r := &rep.Rows[i]
		b := base[r.Workload]
		if b == nil || b.Throughput == 0 {
			continue
		}
		r.BaselineThroughput = b.Throughput
		r.Ratio = r.Throughput / b.Throughput
		r.Met, r.Why = nil, ""
		var notes []string
		if r.OfferedRate > 0 && r.Throughput < keptRate*r.OfferedRate && r.Client != nil {
			// A fixed rate not kept: the server fell behind, or was
			// stopped (on a shared machine, by other work); the ratios
			// against such a baseline say little.
			n := fmt.Sprintf("served %.0f of the %.0f/s offered (client p99 %s): the VM fell behind or was stopped", r.Throughput, r.OfferedRate, fmtUs(r.Client.P99))
			if !r.Setup.Protected {
				n += "; this workload's ratios are against it"
			}
			notes = append(notes, n)
		}
		if r.Setup.Protected {
			if r.Target > 0 {
				met := r.Ratio >= r.Target
				r.Met = &met
			}
			if (r.Target > 0 && r.Ratio < r.Target) || r.Ratio < lowRatio {
				notes = append(notes, why(r, b, rep.CPUs))
			}
		}
		r.Why = strings.Join(notes, "; ")
	}
}

// keptRate is the share of a fixed rate a row must serve to have kept it.
const keptRate = 0.95

// lowRatio is the ratio under which a row without a target still says why.
const lowRatio = 0.9

// why says, from a row's own figures and its baseline's, where a
// throughput below its target went: resyncs and their pause, vCPU stalls
// for a secondary a log window behind, the primary's CPU per operation
// against the unprotected primary's (what the log, its transport and the
// held outputs add on the vCPU's path), how long the vCPU threads ran and
// waited for a CPU with the machine's idle and steal (Sched), and the cores the pair and the
// client shared with other work.
func why(r, base *Row, cpus int) string {
	var parts []string
	if r.ResyncsPerSec > 0 {
		p := ""
		if r.ResyncPause != nil {
			p = " × " + fmtUs(r.ResyncPause.P50) + " pause"
		}
		parts = append(parts, fmt.Sprintf("%.0f resyncs/s%s", r.ResyncsPerSec, p))
	}
	if r.Stalls > 0 {
		parts = append(parts, fmt.Sprintf("%d vCPU stalls for the lagging secondary", r.Stalls))
	}
	if r.Throughput > 0 && base.Throughput > 0 && r.ResyncsPerSec == 0 {
		per := func(row *Row) string { return fmtUs(row.CPUPrimary / 100 * 1e6 / row.Throughput) }
		parts = append(parts, fmt.Sprintf("primary CPU %s/%s against %s unprotected", per(r), r.PerOp, per(base)))
	}
	if sc := r.Sched; sc != nil {
		n := fmt.Sprintf("vCPU threads ran %.0f%% / %.0f%% of the window and waited for a CPU %.0f%% / %.0f%%",
			sc.VCPURunPrimary, sc.VCPURunSecondary, sc.VCPUWaitPrimary, sc.VCPUWaitSecondary)
		if bs := base.Sched; bs != nil {
			n += fmt.Sprintf(" (unprotected: ran %.0f%%, waited %.0f%%)", bs.VCPURunPrimary, bs.VCPUWaitPrimary)
		}
		n += fmt.Sprintf(", machine idle %.0f%%, steal %.0f%%", sc.MachineIdle, sc.MachineSteal)
		if cpuBound(sc) {
			n += ": CPU-bound"
		}
		parts = append(parts, n)
	}
	parts = append(parts, fmt.Sprintf("pair %.0f%% + %.0f%%, client %.0f%% of %d shared cores (load %s)",
		r.CPUPrimary, r.CPUSecondary, r.CPUClient, cpus, strings.Fields(r.LoadAverage + " ?")[0]))
	return strings.Join(parts, "; ")
}

// cpuBound says a protected row's vCPU thread was held up by the CPUs
// rather than by anything of the protocol: the primary's hardly slept (it
// ran or waited runnable for at least cpuBoundBusy of the window), it
// waited runnable for at least cpuBoundWait, and the machine had under
// cpuBoundIdle of its CPUs idle. Then neither more outstanding requests
// nor a larger log window can raise the throughput (the vCPU waits for
// neither); less CPU per request, or more CPUs, can.
func cpuBound(sc *Sched) bool {
	return sc.VCPURunPrimary+sc.VCPUWaitPrimary >= cpuBoundBusy && sc.VCPUWaitPrimary >= cpuBoundWait && sc.MachineIdle < cpuBoundIdle
}

// Thresholds of cpuBound, in percent of the window (of all CPUs for the
// idle share).
const (
	cpuBoundBusy = 85
	cpuBoundWait = 20
	cpuBoundIdle = 15
)

// tableHeader is the Markdown table's header; Check counts its cells.
var tableHeader = []string{
	"workload", "setup", "throughput", "protected/unprotected",
	"client p50 / p99 / p99.9", "output hold p50 / p99 / p99.9",
	"log Mbit/s", "log bytes/op", "frames/op a / b", "wake-ups/op a / b", "resyncs/s", "resync pause p50 / p99",
	"CPU host a / host b", "why lower",
}

// Markdown renders the report as one Markdown table, with a legend of the
// workloads under it.
func (rep *Report) Markdown() string {
	var b strings.Builder
	row := func(cells []string) {
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	row(tableHeader)
	sep := make([]string, len(tableHeader))
	for i := range sep {
		sep[i] = "---"
	}
	row(sep)
	for _, r := range rep.Rows {
		row(r.cells())
	}
	fmt.Fprintf(&b, "\n%d CPUs, load average %s at the start; %.1f s warm-up and %.1f s measured per cell; %s.\n",
		rep.CPUs, rep.LoadAverage, rep.WarmupS, rep.WindowS, rep.Started.Format("2006-01-02 15:04 UTC"))
	b.WriteString("\n")
	for _, w := range rep.Workloads {
		fmt.Fprintf(&b, "- **%s**: %s", w.Name, w.Title)
		if w.Target > 0 {
			fmt.Fprintf(&b, " (target protected/unprotected ≥ %.2f)", w.Target)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// cells is a row's table cells, in tableHeader's order.
func (r *Row) cells() []string {
	dash := "–"
	client := dash
	if r.Client != nil {
		client = fmt.Sprintf("%s / %s / %s", fmtUs(r.Client.P50), fmtUs(r.Client.P99), fmtUs(r.Client.P999))
	}
	hold := fmt.Sprintf("%s / %s / %s", fmtUs(r.Hold.P50), fmtUs(r.Hold.P99), fmtUs(r.Hold.P999))
	log, perOp, resyncs, pause, cpu := dash, dash, dash, dash, fmt.Sprintf("%.0f%% / –", r.CPUPrimary)
	frames, wakeups := fmt.Sprintf("%.2f / –", r.FramesPerOpPrimary), fmt.Sprintf("%.1f / –", r.WakeupsPerOpPrimary)
	if r.Setup.Protected {
		frames = fmt.Sprintf("%.2f / %.2f", r.FramesPerOpPrimary, r.FramesPerOpSecondary)
		wakeups = fmt.Sprintf("%.1f / %.1f", r.WakeupsPerOpPrimary, r.WakeupsPerOpSecondary)
		log = fmt.Sprintf("%.2f", r.LogMbitPerSec)
		perOp = fmt.Sprintf("%.0f /%s", r.LogBytesPerOp, r.PerOp)
		resyncs = fmt.Sprintf("%.1f", r.ResyncsPerSec)
		cpu = fmt.Sprintf("%.0f%% / %.0f%%", r.CPUPrimary, r.CPUSecondary)
		if r.ResyncPause != nil {
			pause = fmt.Sprintf("%s / %s", fmtUs(r.ResyncPause.P50), fmtUs(r.ResyncPause.P99))
		}
	}
	return []string{r.Workload, r.Setup.Name, fmtThroughput(r.Throughput) + " " + r.Unit, r.ratioCell(),
		client, hold, log, perOp, frames, wakeups, resyncs, pause, cpu, escapeCell(r.Why)}
}

// ratioCell is the ratio, then its target and whether it was met.
func (r *Row) ratioCell() string {
	if !r.Setup.Protected {
		return "1 (baseline)"
	}
	if r.BaselineThroughput == 0 {
		return "– (no baseline)"
	}
	s := fmt.Sprintf("%.3f", r.Ratio)
	if r.Met != nil {
		if *r.Met {
			s += fmt.Sprintf(" (≥ %.2f ✓)", r.Target)
		} else {
			s += fmt.Sprintf(" (≥ %.2f: missed)", r.Target)
		}
	}
	return s
}

func fmtThroughput(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// fmtUs renders microseconds as µs or ms.
func fmtUs(us float64) string {
	if us < 1000 {
		return fmt.Sprintf("%.0f µs", us)
	}
	return fmt.Sprintf("%.2f ms", us/1000)
}

func escapeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// Check verifies a report and its Markdown table: one row of the table
// per row of the report, every row with the header's cells, every
// workload with its unprotected baseline, and every ratio, in the report
// and in the table, the row's throughput over that baseline's throughput
// of the same report.
func Check(rep *Report, table string) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	base := map[string]*Row{}
	for i := range rep.Rows {
		if r := &rep.Rows[i]; !r.Setup.Protected {
			if base[r.Workload] != nil {
				bad("workload %s has two unprotected rows", r.Workload)
			}
			base[r.Workload] = r
		}
	}
	for _, w := range rep.Workloads {
		if base[w.Name] == nil {
			bad("workload %s has no unprotected row", w.Name)
		}
	}
	for i := range rep.Rows {
		r := &rep.Rows[i]
		b := base[r.Workload]
		if b == nil {
			continue
		}
		if r.Throughput <= 0 || r.Ops == 0 {
			bad("%s %s: no throughput (%d ops)", r.Workload, r.Setup.Name, r.Ops)
			continue
		}
		if want := float64(r.Ops) / r.WindowS; !near(r.Throughput, want, 1e-9) {
			bad("%s %s: throughput %v is not its %d ops over its %.3f s window (%v)", r.Workload, r.Setup.Name, r.Throughput, r.Ops, r.WindowS, want)
		}
		if r.BaselineThroughput != b.Throughput {
			bad("%s %s: baseline throughput %v is not the unprotected row's %v", r.Workload, r.Setup.Name, r.BaselineThroughput, b.Throughput)
		}
		if want := r.Throughput / b.Throughput; !near(r.Ratio, want, 1e-9) {
			bad("%s %s: ratio %v is not its throughput %v over the unprotected %v (%v)", r.Workload, r.Setup.Name, r.Ratio, r.Throughput, b.Throughput, want)
		}
	}
	lines := strings.Split(strings.TrimSpace(table), "\n")
	var tableRows [][]string
	for _, l := range lines {
		if !strings.HasPrefix(l, "|") {
			break
		}
		tableRows = append(tableRows, splitRow(l))
	}
	if len(tableRows) != len(rep.Rows)+2 {
		bad("the table has %d lines, want a header, a separator and %d rows", len(tableRows), len(rep.Rows))
		return errors.Join(errs...)
	}
	for i, cells := range tableRows {
		if len(cells) != len(tableHeader) {
			bad("table line %d has %d cells, want %d", i+1, len(cells), len(tableHeader))
		}
	}
	if strings.Join(tableRows[0], "|") != strings.Join(tableHeader, "|") {
		bad("the table's header is %q", tableRows[0])
	}
	for i, cells := range tableRows[2:] {
		r := &rep.Rows[i]
		if len(cells) != len(tableHeader) {
			continue
		}
		if cells[0] != r.Workload || cells[1] != r.Setup.Name {
			bad("table row %d is %s %s, the report's %s %s", i+1, cells[0], cells[1], r.Workload, r.Setup.Name)
		}
		if got, want := cells[2], fmtThroughput(r.Throughput)+" "+r.Unit; got != want {
			bad("table row %d: throughput %q, the report's %q", i+1, got, want)
		}
		if !r.Setup.Protected {
			continue
		}
		f := strings.Fields(cells[3])
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			bad("table row %d: ratio cell %q is not a number", i+1, cells[3])
			continue
		}
		if b := base[r.Workload]; b != nil && math.Abs(v-r.Throughput/b.Throughput) > 0.0005 {
			bad("table row %d (%s %s): ratio %s, but %v / %v is %.3f", i+1, r.Workload, r.Setup.Name, f[0], r.Throughput, b.Throughput, r.Throughput/b.Throughput)
		}
	}
	return errors.Join(errs...)
}

func near(a, b, rel float64) bool { return math.Abs(a-b) <= rel*math.Max(math.Abs(a), math.Abs(b)) }

// splitRow splits a Markdown table line into its trimmed cells.
func splitRow(l string) []string {
	l = strings.TrimSpace(l)
	l = strings.TrimPrefix(strings.TrimSuffix(l, "|"), "|")
	var cells []string
	var cur strings.Builder
	for i := 0; i < len(l); i++ {
		if l[i] == '\\' && i+1 < len(l) && l[i+1] == '|' {
			cur.WriteByte('|')
			i++
			continue
		}
		if l[i] == '|' {
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
			continue
		}
		cur.WriteByte(l[i])
	}
	return append(cells, strings.TrimSpace(cur.String()))
}
