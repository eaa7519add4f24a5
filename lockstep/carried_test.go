package lockstep

import (
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
