package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// clockKills is the failovers of TestE2EClockFailovers:
// FTVM_E2E_CLOCK_KILLS, default 5 (the scenario is 20).
func clockKills(t *testing.T) int {
	if s := os.Getenv("FTVM_E2E_CLOCK_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FTVM_E2E_CLOCK_KILLS=%q: want a positive number", s)
		}
		return n
	}
	return 5
}

// TestE2EClockFailovers kills the primary of the nondet guest again and
// again (ack-on-compare, diverge=none: it prints its clock every 200 µs
// and replays exactly), each time bringing the killed host back as a
// secondary. What every primary released, in the order they served, must
// show the guest's clock never going back: a new primary's own clock lags
// the old one's by the time its checkpoint took to arrive, and must not
// show through.
func TestE2EClockFailovers(t *testing.T) {
	kills := clockKills(t)
	c := newTestCluster(t, "clock", ClusterConfig{Guest: guestPath("nondet"), Cmdline: "count=100000000 diverge=none interval_us=200", Mode: "compare", NoNetwork: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(kills)*20*time.Second+30*time.Second)
	defer cancel()
	pri, err := c.StartPrimary(HostA, "--wait-for-secondary")
	if err != nil {
		t.Fatal(err)
	}
	served := []*Daemon{pri} // every daemon that went live, in order
	primary, secondary := HostA, HostB
	if _, err := c.StartSecondary(secondary, primary); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= kills; i++ {
		if _, err := c.Await(ctx, primary, "protected", Protected); err != nil {
			t.Fatal(err)
		}
		// Let the new secondary replay a while: the failover then
		// comes from a replica in step, as in service.
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		if err := c.Kill(primary); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Await(ctx, secondary, "live", Live); err != nil {
			t.Fatal(err)
		}
		served = append(served, c.Daemon(secondary))
		primary, secondary = secondary, primary
		if _, err := c.StartSecondary(secondary, primary); err != nil {
			t.Fatal(err)
		}
	}
	// The last primary serves a little longer, then the consoles are read.
	if _, err := c.Await(ctx, primary, "protected", Protected); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	var consoles [][]string
	for _, d := range served {
		consoles = append(consoles, readLines(t, d.Console))
	}
	n, repeats, err := checkClockLines(consoles)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d failovers: %d lines released by %d primaries (%d repeated at take-overs), the guest's clock never went back", kills, n, len(served), repeats)
}

var clockOnlyLine = regexp.MustCompile(`^nondet: (\d+) clock_ns=(\d+)$`)

// checkClockLines checks what successive primaries released (consoles, in
// the order they served) of nondet diverge=none: lines numbered from 1 on
// with none lost, a repeat only byte for byte (what a new primary could
// not know was out), and clock values that never decrease. Each console's
// last line may be cut short (the daemon was killed while writing it).
func checkClockLines(consoles [][]string) (lines, repeats int, err error) {
	seen := map[int]string{}
	next := 1
	var last uint64
	for ci, con := range consoles {
		for li, l := range con {
			m := clockOnlyLine.FindStringSubmatch(l)
			if m == nil {
				if li == len(con)-1 {
					continue
				}
				return 0, 0, fmt.Errorf("primary %d, line %d: %q is not a nondet diverge=none line", ci+1, li+1, l)
			}
			i, _ := strconv.Atoi(m[1])
			v, _ := strconv.ParseUint(m[2], 10, 64)
			if prev, ok := seen[i]; ok {
				if prev != l {
					return 0, 0, fmt.Errorf("primary %d released line %d again, differently:\n%s\n%s", ci+1, i, prev, l)
				}
				repeats++
				continue
			}
			if i != next {
				return 0, 0, fmt.Errorf("primary %d released line %d after line %d: lines %d.. lost", ci+1, i, next-1, next)
			}
			if v < last {
				return 0, 0, fmt.Errorf("the guest's clock went back by %v at line %d, the first lines of primary %d: %d after %d", time.Duration(last-v), i, ci+1, v, last)
			}
			seen[i] = l
			last = v
			next++
		}
	}
	if next == 1 {
		return 0, 0, fmt.Errorf("no line released")
	}
	return next - 1, repeats, nil
}

// The checker is proven on planted histories: one where the clock goes
// back at a take-over, one with a lost line, one with a repeat that
// differs, and a good one with a repeat and a torn last line.
func TestClockCheckerCatchesBackwards(t *testing.T) {
	good := [][]string{
		{"nondet: 1 clock_ns=100", "nondet: 2 clock_ns=200", "nondet: 3 clock_n"},
		{"nondet: 2 clock_ns=200", "nondet: 3 clock_ns=300"},
	}
	if n, rep, err := checkClockLines(good); err != nil || n != 3 || rep != 1 {
		t.Fatalf("a good history: %d lines, %d repeats, %v; want 3, 1, nil", n, rep, err)
	}
	for name, bad := range map[string][][]string{
		"clock back": {{"nondet: 1 clock_ns=100", "nondet: 2 clock_ns=200"}, {"nondet: 3 clock_ns=199"}},
		"lost line":  {{"nondet: 1 clock_ns=100"}, {"nondet: 3 clock_ns=300"}},
		"bad repeat": {{"nondet: 1 clock_ns=100"}, {"nondet: 1 clock_ns=101"}},
	} {
		if _, _, err := checkClockLines(bad); err == nil {
			t.Errorf("%s: the checker passed %q", name, bad)
		}
	}
}
