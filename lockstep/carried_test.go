package lockstep

import (
	"encoding/binary"
	"errors"
	"testing"
)

// Outputs a checkpoint carried (held on the primary when it was taken)
// come out marked Carried, and only those: the agent holds every other
// output, and a release it holds nothing for must be an error there, not
// taken for a carried one.
func TestCheckpointCarriedOutputsAreMarked(t *testing.T) {
	p, s := pair(t, AckOnCompare)
	p.HoldOutput(0, 0, []byte("held at the checkpoint"))
	exchange(t, p, s)
	// The replica makes another output: it asks for a resync, and the
	// primary's checkpoint carries the output it holds.
	if _, r := s.ReplayOutput(0, 0, []byte("another output")); r != Diverged {
		t.Fatalf("a mismatching output: %v, want diverged", r)
	}
	// The checkpoint ships a chunk at a time, paced by ticks.
	for i := 0; !p.Status().Protected || s.Status().LogItems > 0; i++ {
		if i == 100 {
			t.Fatalf("the resync never finished: primary %+v, secondary %+v", p.Status(), s.Status())
		}
		exchange(t, p, s)
		p.Tick()
		s.Tick()
	}
	// The restored VM makes an output of its own, then the primary dies.
	if _, r := s.ReplayOutput(3, 0, []byte("made by this VM")); r != OK {
		t.Fatalf("ReplayOutput after the restore: %v", r)
	}
	s.PeerLost()
	take(s)
	s.ArbiterResult(2, true, 8, nil)
	rd := take(s)
	got := map[string]bool{}
	for _, o := range rd.Release {
		got[string(o.Data)] = o.Carried
	}
	if c, ok := got["held at the checkpoint"]; !ok || !c {
		t.Errorf("the output the checkpoint carried: released %v, Carried %v; want released and Carried", ok, c)
	}
	if c, ok := got["made by this VM"]; !ok || c {
		t.Errorf("the output this VM made: released %v, Carried %v; want released and not Carried", ok, c)
	}
}

// A primary may hold more outputs than its log window (those its vCPU
// made while the loop was pausing it for a checkpoint): the secondary must
// take a checkpoint that carries them all. It refused any with more than
// twice the window, so a resync of such a primary never ended. The count
// is bounded by the section's size instead.
func TestCheckpointCarriesMoreHeldOutputsThanTheWindow(t *testing.T) {
	p, _ := pair(t, AckOnCompare)
	window := p.cfg.LogWindowEntries
	for i := range 3 * window {
		if _, err := p.HoldOutput(uint64(i), 0, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if len(p.log.held) <= 2*window {
		t.Fatalf("the primary holds %d outputs; the test needs more than twice its window of %d", len(p.log.held), window)
	}
	_, outs, rest, err := parseCheckpointHeader(p.checkpointHeader())
	if err != nil || len(outs) != len(p.log.held) || len(rest) != 0 {
		t.Fatalf("a node section with %d held outputs (window %d): %d parsed, %d bytes left, %v", len(p.log.held), window, len(outs), len(rest), err)
	}
	// A count its bytes cannot hold is refused before anything is made.
	bomb := binary.LittleEndian.AppendUint32(make([]byte, 8), 1<<31)
	if _, _, _, err := parseCheckpointHeader(append(bomb, make([]byte, 20)...)); !errors.Is(err, errCheckpointHeader) {
		t.Fatalf("a section announcing 2^31 outputs in 20 bytes: %v, want refused", err)
	}
}
