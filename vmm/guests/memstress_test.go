package guests

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

var checksumLine = regexp.MustCompile(`checksum=([0-9a-f]{16})$`)

// memstress runs hosted memstress and returns its console and final checksum.
func memstress(t *testing.T, args ...string) (string, string) {
	t.Helper()
	out, code := runHosted(t, "memstress", args...)
	if code != 0 {
		t.Fatalf("memstress %v: exit code %d, console:\n%s", args, code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	m := checksumLine.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("memstress %v: last line %q has no checksum", args, lines[len(lines)-1])
	}
	return out, m[1]
}

func TestMemstressDeterministic(t *testing.T) {
	for _, pattern := range []string{"seq", "stride", "random"} {
		args := []string{"pages=64", "iters=20", "dirty=16", "seed=42", "pattern=" + pattern}
		out1, sum1 := memstress(t, args...)
		out2, sum2 := memstress(t, args...)
		if out1 != out2 {
			t.Errorf("pattern=%s: two runs with the same options printed different consoles (checksums %s, %s)", pattern, sum1, sum2)
		}
		// One console line per iteration: one exit per iteration for the VMM.
		for i := 1; i <= 20; i++ {
			if !strings.Contains(out1, fmt.Sprintf("\niter %d sum ", i)) {
				t.Errorf("pattern=%s: no line for iteration %d", pattern, i)
			}
		}
		if n := strings.Count(out1, "\niter "); n != 20 {
			t.Errorf("pattern=%s: %d iteration lines, want 20", pattern, n)
		}
	}
}

func TestMemstressSensitive(t *testing.T) {
	base := []string{"pages=64", "iters=20", "dirty=16"}
	_, a := memstress(t, append(base, "pattern=random", "seed=1")...)
	_, b := memstress(t, append(base, "pattern=random", "seed=2")...)
	_, c := memstress(t, append(base, "pattern=seq", "seed=1")...)
	_, d := memstress(t, append(base, "pattern=stride", "seed=1")...)
	_, e := memstress(t, "pages=64", "iters=21", "dirty=16", "pattern=random", "seed=1")
	sums := map[string]string{"random/seed=1": a, "random/seed=2": b, "seq": c, "stride": d, "random/iters=21": e}
	seen := map[string]string{}
	for name, s := range sums {
		if other, dup := seen[s]; dup {
			t.Errorf("%s and %s both give checksum %s", name, other, s)
		}
		seen[s] = name
	}
}

func TestMemstressBadOptions(t *testing.T) {
	cases := []struct {
		args []string
		says string
	}{
		{[]string{"pattern=zigzag"}, "pattern=zigzag is not a pattern"},
		{[]string{"pages=0"}, "pages=0 is not a number"},
		{[]string{"iters=ten"}, "iters=ten is not a number"},
		{[]string{"-mem", "1048576", "--", "pages=1000"}, "lower pages= or give the VM more memory"},
		{[]string{"speed=1"}, `unknown option "speed"`},
	}
	for _, c := range cases {
		out, code := runHosted(t, "memstress", c.args...)
		if code != 2 || !strings.Contains(out, c.says) {
			t.Errorf("memstress %v: exit %d, console %q; want exit 2 and %q", c.args, code, out, c.says)
		}
	}
}
