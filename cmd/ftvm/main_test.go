package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/ringbench"
	"github.com/ftvm/ftvm/internal/testutil"
)

func runFtvm(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = commands.dispatch(&env{stdout: &out, stderr: &errb}, args)
	return code, out.String(), errb.String()
}

func TestUsageAndExitCodes(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{nil, exitUsage, "", "usage: ftvm <command>"},
		{[]string{"--help"}, exitOK, "bench", ""},
		{[]string{"nosuch"}, exitUsage, "", `unknown command "nosuch"`},
		{[]string{"bench"}, exitUsage, "", "rings"},
		{[]string{"bench", "nosuch"}, exitUsage, "", `ftvm bench: unknown command "nosuch"`},
		{[]string{"bench", "rings", "--help"}, exitOK, "", "usage: ftvm bench rings"},
		{[]string{"bench", "rings", "--nosuch"}, exitUsage, "", "flag provided but not defined"},
		{[]string{"bench", "rings", "extra"}, exitUsage, "", "unexpected arguments"},
		{[]string{"bench", "rings", "--count", "0"}, exitUsage, "", "--count 0"},
		{[]string{"bench", "rings", "--run", "("}, exitUsage, "", "not a regular expression"},
		{[]string{"bench", "rings", "--run", "NoSuchBench"}, exitUsage, "", "matches no benchmark"},
		{[]string{"bench", "rings", "--benchtime", "soon"}, exitUsage, "", "--benchtime"},
	}
	for _, c := range cases {
		code, out, errs := runFtvm(c.args...)
		if code != c.code || !strings.Contains(out, c.inStdout) || !strings.Contains(errs, c.inStderr) {
			t.Errorf("ftvm %q: exit %d, stdout %q, stderr %q; want exit %d with %q on stdout and %q on stderr",
				c.args, code, out, errs, c.code, c.inStdout, c.inStderr)
		}
	}
}

func TestRegistryRejectsDuplicates(t *testing.T) {
	r := newRegistry("x")
	r.add(&command{name: "a"})
	defer func() {
		if recover() == nil {
			t.Fatal("a second command named a was accepted")
		}
	}()
	r.add(&command{name: "a"})
}

func TestSelectCasesKeepsBaselines(t *testing.T) {
	got := selectCases(ringbench.Cases(), regexp.MustCompile("Records/64B/batch=16"))
	var names []string
	for _, c := range got {
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "ChanSPSC64B,Records/64B/batch=16" {
		t.Fatalf("selected %v, want the case and its baseline", names)
	}
}

// TestBenchRingsReport runs the whole suite for a few thousand items per
// benchmark and checks the table and the JSON report.
func TestBenchRingsReport(t *testing.T) {
	testutil.SkipShort(t, "runs every ring benchmark")
	path := filepath.Join(t.TempDir(), "rings.json")
	code, out, errs := runFtvm("bench", "rings", "--benchtime", "2000x", "--count", "1", "--json", path)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for _, want := range []string{"NAME", "RingSPSC/batch=16", "ChanSPSC", ">=40x", "load average"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep ringsReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("the JSON report does not parse: %v\n%s", err, data)
	}
	if len(rep.Rows) != len(ringbench.Cases()) || rep.Suite != "rings" || rep.Count != 1 {
		t.Fatalf("JSON report has %d rows, suite %q, count %d", len(rep.Rows), rep.Suite, rep.Count)
	}
	for _, r := range rep.Rows {
		if r.Status == ringbench.Failed || r.Value <= 0 {
			t.Errorf("%s: status %s, value %v, error %q", r.Name, r.Status, r.Value, r.Error)
		}
		if r.Baseline != "" && r.Speedup <= 0 {
			t.Errorf("%s: no speed-up over %s", r.Name, r.Baseline)
		}
	}
}

func TestCoSchedulingNote(t *testing.T) {
	var b bytes.Buffer
	warnIfNotCoScheduled(&b, []ringbench.Row{{Name: "PingPong/cacheline", Runs: 3, Value: 200}})
	if b.Len() != 0 {
		t.Fatalf("a 200 ns round trip drew a note: %s", b.String())
	}
	warnIfNotCoScheduled(&b, []ringbench.Row{{Name: "PingPong/cacheline", Runs: 3, Value: 4500}})
	if !strings.Contains(b.String(), "4.5 µs") || !strings.Contains(b.String(), "quiet machine") {
		t.Fatalf("a 4.5 µs round trip drew no note, or the wrong one: %q", b.String())
	}
}

// A body that never returns must end the guard with ok=false and the stuck
// goroutine's stack, not hang the command. The quick case runs first: a
// stuck testing.Benchmark keeps the testing package's benchmark lock, so
// nothing can be measured after it (the command exits at once).
func TestStallGuardReportsAStuckBenchmark(t *testing.T) {
	var stacks bytes.Buffer
	quick := ringbench.Case{Name: "Quick", Metric: "ns/item", Run: func(b *testing.B) {}}
	if _, ok := measureWithStallGuard(quick, 1, time.Minute, &stacks); !ok {
		t.Fatal("a body that returns was reported as stuck")
	}
	release := make(chan struct{})
	defer close(release)
	stuck := ringbench.Case{Name: "Stuck", Metric: "ns/item", Run: func(b *testing.B) { <-release }}
	if _, ok := measureWithStallGuard(stuck, 1, 50*time.Millisecond, &stacks); ok {
		t.Fatal("a body that never returns was reported as measured")
	}
	if !strings.Contains(stacks.String(), "TestStallGuardReportsAStuckBenchmark") {
		t.Fatalf("the stack dump does not show the stuck body:\n%.2000s", stacks.String())
	}
}

// ftvm probe refuses what it cannot probe with an error that says what
// to do: go test's own binary (this process) has no symbol table, or
// (built with -c) none of the daemon's probe points.
func TestProbeErrors(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"probe", "--help"}, exitOK, "usage: ftvm probe"},
		{[]string{"probe", "--interval", "0", "--pid", "1"}, exitUsage, "--interval"},
		{[]string{"probe", "--control", filepath.Join(t.TempDir(), "none.sock")}, exitFailure, "no ftvm daemon answers"},
		{[]string{"probe", "--pid", strconv.Itoa(os.Getpid())}, exitFailure, "no symbol table|agent.probeOutputHeld: symbol not in the binary"},
	}
	for _, c := range cases {
		code, _, errs := runFtvm(c.args...)
		if code != c.code || !regexp.MustCompile(c.inStderr).MatchString(errs) {
			t.Errorf("ftvm %q: exit %d, stderr %q; want exit %d with %q", c.args, code, errs, c.code, c.inStderr)
		}
	}
}
