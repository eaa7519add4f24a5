package agent

import (
	"context"
	"runtime/debug"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
)

// gcOff reports whether the collector is off now (GOGC < 0), reading it
// without changing it.
func gcOff() bool {
	p := debug.SetGCPercent(-1)
	debug.SetGCPercent(p)
	return p < 0
}

// awaitGCOn waits until the collector is on again, failing after a while
// far beyond joinGCTail.
func awaitGCOn(t *testing.T, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); gcOff(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the collector is still off", what)
		}
	}
}

// longJoinGCHold makes a hold's own bound too long to end it within a
// test, so that only the release a test looks for can.
func longJoinGCHold(t *testing.T) {
	was := joinGCHoldMax
	joinGCHoldMax = time.Minute
	t.Cleanup(func() { joinGCHoldMax = was })
}

// A primary keeps the collector off from the checkpoint it takes for a
// joiner until a little after the pause ends: a collection started by the
// copies' allocations stopped the world, and the primary's vCPU with it,
// in the pause and in the first frames after it (the client's longest
// silence during a join). After the tail the collector runs again.
func TestPrimaryKeepsGCOffFromCheckpointToPauseTail(t *testing.T) {
	longJoinGCHold(t)
	awaitGCOn(t, "before the test")
	a := newUnitAgent(t, &opLog{})
	ctx := context.Background()
	for _, c := range []lockstep.Command{{Kind: lockstep.CmdPause}, {Kind: lockstep.CmdTakeCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 1, Full: true}}} {
		if err := a.command(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if !gcOff() {
		t.Fatal("the collector is on between the checkpoint and the end of the pause")
	}
	if err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdResume}); err != nil {
		t.Fatal(err)
	}
	if !gcOff() {
		t.Fatal("the collector is on right after the resume, before the pause's tail")
	}
	awaitGCOn(t, "after the pause's tail")
}

// A joiner keeps the collector off from its first pre-copy part until a
// little after its restore, not only while each part loads: between the
// loads, and in the restore the paused primary waits for, a collection
// stopped the joiner's loop and readers.
func TestJoinerKeepsGCOffFromFirstPartToRestoreTail(t *testing.T) {
	longJoinGCHold(t)
	awaitGCOn(t, "before the test")
	a := newJoiningUnitAgent(t, &opLog{})
	ctx := context.Background()
	p1, p2, end := chainPart(t, 0, true), chainPart(t, 1, true), chainPart(t, 2, false)
	for id, p := range [][]byte{p1, p2} {
		if err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdLoadPart, Checkpoint: lockstep.Checkpoint{ID: uint64(id + 1), Full: id == 0, Data: p}}); err != nil {
			t.Fatalf("load-part %d: %v", id+1, err)
		}
		if !gcOff() {
			t.Fatalf("the collector is on after part %d was loaded, before the restore", id+1)
		}
	}
	// The node was sent no checkpoint and refuses the confirmation; the
	// VM did its work and the tail begins all the same.
	_ = a.command(ctx, lockstep.Command{Kind: lockstep.CmdRestoreCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 3, Full: true, Data: end, Parts: [][]byte{p1, p2}}})
	if !gcOff() {
		t.Fatal("the collector is on right after the restore, before its tail")
	}
	awaitGCOn(t, "after the restore's tail")
}

// The planted bug (no hold beyond each copy and load) is caught.
func TestJoinGCPlantedBugIsCaught(t *testing.T) {
	longJoinGCHold(t)
	joinGCBugNoHold = true
	defer func() { joinGCBugNoHold = false }()
	awaitGCOn(t, "before the test")
	a := newJoiningUnitAgent(t, &opLog{})
	if err := a.command(context.Background(), lockstep.Command{Kind: lockstep.CmdLoadPart, Checkpoint: lockstep.Checkpoint{ID: 1, Full: true, Data: chainPart(t, 0, true)}}); err != nil {
		t.Fatal(err)
	}
	if gcOff() {
		t.Fatal("with the planted bug the collector is off after a part's load: the joiner tests could not catch it")
	}
}

// A hold ends by itself after joinGCHoldMax, whatever the join does.
func TestJoinGCHoldIsBounded(t *testing.T) {
	was := joinGCHoldMax
	joinGCHoldMax = 30 * time.Millisecond
	defer func() { joinGCHoldMax = was }()
	awaitGCOn(t, "before the test")
	var g joinGC
	g.hold()
	if !gcOff() || !g.isHeld() {
		t.Fatal("hold did not turn the collector off")
	}
	awaitGCOn(t, "after joinGCHoldMax")
	if g.isHeld() {
		t.Fatal("the hold says it is held after its bound")
	}
}
