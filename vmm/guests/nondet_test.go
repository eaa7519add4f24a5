package guests

import (
	"strings"
	"testing"
)

func TestNondetDiverges(t *testing.T) {
	out1, code1 := runHosted(t, "nondet", "count=3")
	out2, code2 := runHosted(t, "nondet", "count=3")
	if code1 != 0 || code2 != 0 {
		t.Fatalf("nondet exit codes %d and %d, want 0", code1, code2)
	}
	for _, out := range []string{out1, out2} {
		if n := strings.Count(out, " tsc="); n != 3 {
			t.Fatalf("nondet count=3 printed %d value lines:\n%s", n, out)
		}
		if !strings.Contains(out, "nondet: done count=3") {
			t.Fatalf("no final line:\n%s", out)
		}
	}
	if out1 == out2 {
		t.Fatalf("two runs of nondet printed the same console; it must not be replayable:\n%s", out1)
	}
	// Each value line on its own must differ: the very first output after
	// an RDTSC is where a replay has to diverge.
	l1, l2 := strings.SplitN(out1, "\n", 2)[0], strings.SplitN(out2, "\n", 2)[0]
	if l1 == l2 {
		t.Fatalf("first lines are equal: %q", l1)
	}
}

func TestNondetModes(t *testing.T) {
	for _, mode := range []string{"input", "none"} {
		out, code := runHosted(t, "nondet", "count=3", "diverge="+mode, "interval_us=100")
		if code != 0 || strings.Count(out, "clock_ns=") != 3 || !strings.Contains(out, "nondet: done count=3") {
			t.Fatalf("diverge=%s: exit %d, want 0 and three lines:\n%s", mode, code, out)
		}
		if tsc := strings.Contains(out, " tsc="); tsc != (mode == "input") {
			t.Fatalf("diverge=%s: lines carry the TSC: %v, want %v:\n%s", mode, tsc, mode == "input", out)
		}
	}
	out, code := runHosted(t, "nondet", "diverge=sometimes")
	if code != 2 || !strings.Contains(out, "diverge=sometimes is not output, input or none") {
		t.Fatalf("a bad diverge=: exit %d, want 2 and a message:\n%s", code, out)
	}
}
