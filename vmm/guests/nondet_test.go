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
