package agent

import (
	"sync"
	"time"

	"github.com/ftvm/ftvm/vmm"
)

// joinGC keeps the garbage collector off across a join's critical
// stretch, on both hosts: on the primary from the first checkpoint it is
// asked for to joinGCTail after the pause ends (the secondary's first
// acknowledgements and the first frames out), on the joiner from its
// first pre-copy part to joinGCTail after its restore. Each live copy,
// encoding and part load already runs with the collector off
// (vmm.AtLowPriority), and the megabytes they allocate made a collection
// start the moment each one ended: between the live full copy and the
// next live increment (whose hold then waited for that collection's
// mark to end), and during the pause and its tail. Each collection
// stopped the world twice for about a millisecond on a 2-core machine
// (GODEBUG=gctrace=1 in the e2e bed: "1.0+3.3+0.99 ms clock"), and a
// stopped primary's vCPU thread cannot run its exits. In 30-kill runs a
// collection of the primary or the joiner fell within the client's
// longest silence of 26 of 30 joins. The collection now comes after.
//
// A hold lasts joinGCHoldMax at most, whatever happens to the join (a
// join given up without a pause, a joiner that never restores): the heap
// grows without a collection for as long as it lasts.
type joinGC struct {
	mu    sync.Mutex
	held  bool
	timer *time.Timer
	// holds counts the holds begun, for the tests.
	holds int
}

// joinGCTail is how long after a join's pause (primary) or restore
// (joiner) the collector stays off: past the secondary's first
// acknowledgements and the first frames out, 0.2 to 3 ms after the
// resume in the e2e bed.
const joinGCTail = 20 * time.Millisecond

// joinGCHoldMax bounds one hold.
var joinGCHoldMax = 2 * time.Second

// hold keeps the collector off, for joinGCHoldMax at most from now.
func (g *joinGC) hold() {
	if joinGCBugNoHold {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.held {
		vmm.HoldGC()
		g.held = true
		g.holds++
	}
	g.arm(joinGCHoldMax)
}

// releaseAfter lets the collector run again d from now, if it is held.
func (g *joinGC) releaseAfter(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held {
		g.arm(d)
	}
}

// arm makes the release due d from now, replacing one due before. g.mu
// held.
func (g *joinGC) arm(d time.Duration) {
	if g.timer != nil {
		g.timer.Stop()
	}
	g.timer = time.AfterFunc(d, g.release)
}

// release lets the collector run again now, if it is held.
func (g *joinGC) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	if g.held {
		g.held = false
		vmm.ReleaseGC()
	}
}

// isHeld reports whether this hold is on, for the tests.
func (g *joinGC) isHeld() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// joinGCBugNoHold is a planted bug for the tests, which must catch it:
// a join holds the collector off only while a copy or a load runs, as
// before joinGC.
var joinGCBugNoHold = false
