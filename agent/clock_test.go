package agent

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ftvm/ftvm/vmm"
)

func TestGuestClockRule(t *testing.T) {
	var c guestClock
	// A primary serves its own clock as it is.
	for _, v := range []uint64{100, 200, 300} {
		if got := c.serve(v); got != v {
			t.Fatalf("first host: served %d for a local %d", got, v)
		}
	}
	// A replica replays the primary's values, then goes live on a host
	// whose clock is 250 behind: the guest must not see 60 after 310.
	if !c.replayed(310) {
		t.Fatal("a growing logged value was refused")
	}
	if got := c.serve(60); got != 311 {
		t.Fatalf("live after replay: served %d for a local 60, want last+1 = 311", got)
	}
	// The offset (251) stays: the clock runs on at this host's rate.
	if got := c.serve(160); got != 411 {
		t.Fatalf("next live read: served %d for a local 160, want 160 + offset 251 = 411", got)
	}
	// A local clock that stands still still gives growing values.
	if a, b := c.serve(160), c.serve(160); !(a > 411 && b > a) {
		t.Fatalf("a clock standing still at 160 gave %d then %d after 411", a, b)
	}
	// The replay check: a logged value below what the guest saw is
	// reported (and counted), not taken as the new last.
	var r guestClock
	r.replayed(500)
	if r.replayed(499) || r.backwards != 1 || r.last != 500 {
		t.Fatalf("a logged value going back: backwards=%d last=%d", r.backwards, r.last)
	}
	if !r.replayed(500) {
		t.Fatal("an equal logged value was refused (two reads in one tick)")
	}
}

// A checkpoint carries the clock the guest sees, offset included, and a
// replica that restores it reads on from there even if it replays no
// clock read before it goes live.
func TestGuestClockCheckpoint(t *testing.T) {
	snap := func(ns uint64) *vmm.Snapshot {
		s := &vmm.Snapshot{Devices: []vmm.DeviceState{{Device: vmm.DeviceClock, State: make([]byte, 9)}}}
		s.Devices[0].State[0] = 1 // the clock state's version
		if !s.SetClockNs(ns) {
			t.Fatal("the clock state is not vmm's")
		}
		return s
	}
	var pri guestClock
	pri.replayed(1000)
	pri.serve(10) // offset 991
	s := snap(20) // the device's own clock at the checkpoint
	pri.stamp(s)
	if ns, _ := s.ClockNs(); ns != 20+991 {
		t.Fatalf("the checkpoint carries clock %d, want the device's 20 + offset 991", ns)
	}
	var sec guestClock
	sec.offset = 500 // from some earlier life: the restore makes it moot
	sec.restored(s)
	if sec.offset != 0 || sec.last != 1011 {
		t.Fatalf("after restore: offset %d last %d, want 0 and 1011", sec.offset, sec.last)
	}
	if got := sec.serve(15); got != 1012 {
		t.Fatalf("live right after the restore, local 15: served %d, want 1012", got)
	}
	// A live snapshot carries no clock and changes nothing.
	live := &vmm.Snapshot{Live: true}
	pri.stamp(live)
	sec.restored(live)
	if sec.last != 1012 {
		t.Fatalf("a live snapshot moved the clock to %d", sec.last)
	}
}

var clockLine = regexp.MustCompile(`^line (\d+) clock (\d+)$`)

// TestScriptPairClockMonotonicAcrossFailover kills the primary of a pair
// whose secondary's clock is far behind the primary's (as a secondary's
// is, by the time its checkpoint took to arrive): what the world saw, the
// old primary's lines then the new one's, must never show the guest's
// clock going back.
func TestScriptPairClockMonotonicAcrossFailover(t *testing.T) {
	const lines = 20000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startScriptPairWith(t, ctx, lines, scriptOpts{secClock: clockFrom(0, 3)})
	p.failOverWhen(t, func() (bool, string) {
		return len(p.priOut.lineList()) >= 200 && p.sec.Status().Released > 0,
			fmt.Sprintf("the primary released only %d lines", len(p.priOut.lineList()))
	})
	first, second := p.priOut.lineList(), p.secOut.lineList()
	if len(second) == 0 {
		t.Fatalf("the new primary released nothing after %d lines from the old", len(first))
	}
	var last uint64
	seen := map[string]string{}
	repeats := 0
	for i, l := range append(first, second...) {
		m := clockLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line %d: %q is not a script line", i, l)
		}
		// The new primary may repeat, byte for byte, what the old one
		// released without its knowing: nothing new the guest read.
		if prev, ok := seen[m[1]]; ok {
			if prev != l {
				t.Fatalf("line %s released twice, differently: %q then %q", m[1], prev, l)
			}
			repeats++
			continue
		}
		seen[m[1]] = l
		v, _ := strconv.ParseUint(m[2], 10, 64)
		if v < last {
			who := "old"
			if i >= len(first) {
				who = "new"
			}
			t.Fatalf("the guest's clock went back at released line %d (the %s primary's): %d after %d", i, who, v, last)
		}
		last = v
	}
	t.Logf("%d lines from the old primary, %d from the new (%d repeated); clock monotonic through %d", len(first), len(second), repeats, last)
}

// lineList returns the lines the backend got, without their newlines.
func (b *backend) lineList() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.lines))
	for _, l := range b.lines {
		out = append(out, string(l[:len(l)-1]))
	}
	return out
}
