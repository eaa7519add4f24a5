package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ftvm/ftvm/bench/ft"
	"github.com/ftvm/ftvm/bench/ringbench"
)

func init() {
	benchSuites.add(&command{
		name:    "rings",
		summary: "lock-free rings (package ring) against a channel and a mutex queue",
		run:     runBenchRings,
	})
}

// ringsReport is what --json writes.
type ringsReport struct {
	Suite       string          `json:"suite"`
	Started     time.Time       `json:"started"`
	GoVersion   string          `json:"goVersion"`
	CPUs        int             `json:"cpus"`
	GOMAXPROCS  int             `json:"gomaxprocs"`
	LoadAverage string          `json:"loadAverage,omitempty"` // /proc/loadavg at start: others' load skews ratios
	Benchtime   string          `json:"benchtime"`
	Count       int             `json:"count"`
	Rows        []ringbench.Row `json:"results"`
}

func runBenchRings(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm bench rings", flag.ContinueOnError)
	benchtime := fs.String("benchtime", "300ms", "how long to run each benchmark: a duration (300ms) or an item count (100000x)")
	count := fs.Int("count", 3, "runs per benchmark; the report uses the median")
	jsonPath := fs.String("json", "", "also write the results as JSON to this file ('-' for standard output, which then gets no table)")
	run := fs.String("run", "", "only benchmarks whose name matches this regular expression (their baselines always run)")
	strict := fs.Bool("strict", false, "exit 1 when a benchmark misses its target (by default a miss is reported, and only a failed check exits 1)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm bench rings [flags]

Runs the ring benchmarks of package ring and their baselines (a buffered
channel, a mutex-guarded queue) in one process, and prints each one's median
ns/item (p50-ns for the ping-pong round trip), its speed-up over its
baseline measured in the same run, its target, and PASS or MISS. The same
bodies run under 'go test -bench . ./ring/'.

On a machine shared with other work the ratios are noisy; the load average
at the start is printed with the report.

Exit codes: 0 ok, 1 a benchmark failed its own checks (or missed a target
with --strict), 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	if *count < 1 {
		fmt.Fprintf(e.stderr, "ftvm bench rings: --count %d: give at least 1\n", *count)
		return exitUsage
	}
	var filter *regexp.Regexp
	if *run != "" {
		var err error
		if filter, err = regexp.Compile(*run); err != nil {
			fmt.Fprintf(e.stderr, "ftvm bench rings: --run %q is not a regular expression: %v\n", *run, err)
			return exitUsage
		}
	}
	// testing.Benchmark reads its duration from the test.benchtime flag,
	// which testing.Init registers on the default flag set.
	testing.Init()
	if err := flag.Set("test.benchtime", *benchtime); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench rings: --benchtime %q: %v (use a duration like 300ms or a count like 100000x)\n", *benchtime, err)
		return exitUsage
	}
	cases := selectCases(ringbench.Cases(), filter)
	if len(cases) == 0 {
		fmt.Fprintf(e.stderr, "ftvm bench rings: --run %q matches no benchmark\n", *run)
		return exitUsage
	}

	report := ringsReport{
		Suite: "rings", Started: time.Now().UTC(), GoVersion: runtime.Version(),
		CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		LoadAverage: ft.LoadAverage(), Benchtime: *benchtime, Count: *count,
	}
	table := e.stdout
	if *jsonPath == "-" {
		table = e.stderr
	}
	fmt.Fprintf(table, "ftvm bench rings: %d benchmarks x %d runs of %s; %s, %d CPUs, GOMAXPROCS %d, load average %s\n",
		len(cases), *count, *benchtime, report.GoVersion, report.CPUs, report.GOMAXPROCS, report.LoadAverage)
	measured := map[string]ringbench.Measurement{}
	for _, c := range cases {
		fmt.Fprintf(e.stderr, "  running %s\n", c.Name)
		m, ok := measureWithStallGuard(c, *count, benchStallLimit, e.stderr)
		if !ok {
			fmt.Fprintf(e.stderr, "ftvm bench rings: %s made no progress for %s: a ring side is blocked that should not be "+
				"(a lost wake-up is a bug: please report it with the goroutine stacks above)\n", c.Name, benchStallLimit)
			return exitFailure
		}
		measured[c.Name] = m
	}
	report.Rows = ringbench.Evaluate(cases, measured)
	printRingsTable(table, report.Rows)
	warnIfNotCoScheduled(table, report.Rows)

	code := exitOK
	for _, r := range report.Rows {
		if r.Status == ringbench.Failed || (*strict && r.Status == ringbench.Miss) {
			code = exitFailure
		}
	}
	if *jsonPath != "" {
		if err := writeJSON(e, *jsonPath, report); err != nil {
			fmt.Fprintf(e.stderr, "ftvm bench rings: %v\n", err)
			return exitFailure
		}
	}
	return code
}

// selectCases keeps the cases whose name matches filter, and the baselines
// they are compared with, in the original order.
func selectCases(all []ringbench.Case, filter *regexp.Regexp) []ringbench.Case {
	if filter == nil {
		return all
	}
	keep := map[string]bool{}
	for _, c := range all {
		if filter.MatchString(c.Name) {
			keep[c.Name] = true
			if c.Baseline != "" {
				keep[c.Baseline] = true
			}
		}
	}
	var out []ringbench.Case
	for _, c := range all {
		if keep[c.Name] {
			out = append(out, c)
		}
	}
	return out
}

func printRingsTable(w io.Writer, rows []ringbench.Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVALUE\tBASELINE\tSPEEDUP\tTARGET\tRESULT")
	for _, r := range rows {
		value, speedup, target := "-", "-", "-"
		if r.Runs > 0 {
			value = fmt.Sprintf("%.2f %s", r.Value, r.Metric)
		}
		if r.Speedup > 0 {
			speedup = fmt.Sprintf("%.1fx", r.Speedup)
		}
		if r.MinSpeedup > 0 {
			target = fmt.Sprintf(">=%gx", r.MinSpeedup)
		}
		base := r.Baseline
		if base == "" {
			base = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, value, base, speedup, target, r.Status)
	}
	tw.Flush()
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", r.Name, r.Error)
		}
	}
}

func writeJSON(e *env, path string, report ringsReport) error {
	data, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the JSON report: %v", err)
	}
	data = append(data, '\n')
	if path == "-" {
		_, err = e.stdout.Write(data)
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("writing the JSON report: %v (check that the directory exists and is writable)", err)
	}
	return nil
}

// coScheduledRoundTripMaxNs bounds the core-to-core cache-line round trip
// (PingPong/cacheline) of two threads that run at the same time: real
// hardware takes 50-300 ns; above this, the threads mostly took turns.
const coScheduledRoundTripMaxNs = 1000

// warnIfNotCoScheduled says when the machine did not run the benchmark's two
// threads at once, which makes every cross-core figure a measure of the
// scheduler rather than of the rings.
func warnIfNotCoScheduled(w io.Writer, rows []ringbench.Row) {
	for _, r := range rows {
		if r.Name == "PingPong/cacheline" && r.Runs > 0 && r.Value > coScheduledRoundTripMaxNs {
			fmt.Fprintf(w, "\nnote: a bare cache-line round trip between the two threads took %.1f µs (p50), not the\n"+
				"50-300 ns of two cores running at once: this machine mostly ran them in turns (other load,\n"+
				"or vCPUs not co-scheduled), so the cross-core figures above measure its scheduler. Run\n"+
				"again on a quiet machine for the rings' own figures.\n", r.Value/1000)
		}
	}
}

// benchStallLimit bounds one benchmark's runs: a body normally finishes in
// a few seconds (testing.Benchmark aims each run at --benchtime), so one
// that is still running after this long is stuck, not slow.
const benchStallLimit = 2 * time.Minute

// measureWithStallGuard runs ringbench.Measure, and if it has not returned
// within limit writes every goroutine's stack to stacks and reports
// ok=false, so that a hang becomes a failure that can be diagnosed instead
// of a demo that never ends. The stuck goroutines are left behind: the
// process is about to exit.
func measureWithStallGuard(c ringbench.Case, count int, limit time.Duration, stacks io.Writer) (m ringbench.Measurement, ok bool) {
	done := make(chan ringbench.Measurement, 1)
	go func() { done <- ringbench.Measure(c, count) }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case m = <-done:
		return m, true
	case <-t.C:
		pprof.Lookup("goroutine").WriteTo(stacks, 2)
		return m, false
	}
}
