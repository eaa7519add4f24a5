package lockstep

import (
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// acksIn returns the acknowledgements among a Ready's messages.
func acksIn(rd Ready) []*wire.Ack {
	var acks []*wire.Ack
	for _, m := range rd.Messages {
		if a, ok := m.(*wire.Ack); ok {
			acks = append(acks, a)
		}
	}
	return acks
}

func wideNode(t *testing.T, role wire.Role, mode Mode) *Node {
	t.Helper()
	return newTestNodeWindow(t, role, mode, 64)
}

// In ack-on-receipt the primary releases an output once everything
// logged before it reached the secondary, so the secondary's compare of
// it sends no acknowledgement of its own (a frame a request, and a
// wake-up of the primary's reader, for nothing): the compared position
// goes with the next acknowledgement. In ack-on-compare the compare is
// what releases the output, and it is acknowledged at once.
func TestCompareAcknowledgedAtOnceOnlyInCompareMode(t *testing.T) {
	for _, mode := range []Mode{AckOnReceipt, AckOnCompare} {
		t.Run(mode.String(), func(t *testing.T) {
			// A window large enough that no consume in the test is
			// one of those reported for the window's sake.
			p, s := wideNode(t, wire.RolePrimary, mode), wideNode(t, wire.RoleSecondary, mode)
			take(p)
			p.ArbiterResult(1, true, 7, nil)
			exchange(t, p, s)
			outSeq := p.Status().LastSeq + 1
			if _, err := p.HoldOutput(5, 1, []byte("hello")); err != nil {
				t.Fatal(err)
			}
			for _, m := range take(p).Messages {
				_ = s.Step(wireTrip(t, m))
			}
			if acks := acksIn(take(s)); len(acks) != 1 || acks[0].Received != outSeq {
				t.Fatalf("receipt of the output's record: acks %+v, want one of position %d", acks, outSeq)
			}
			if _, r := s.ReplayOutput(5, 1, []byte("hello")); r != OK {
				t.Fatalf("replay of the same output: %s", r)
			}
			acks := acksIn(take(s))
			want := 0
			if mode == AckOnCompare {
				want = 1
			}
			if len(acks) != want {
				t.Fatalf("the compare sent %d acknowledgements, want %d", len(acks), want)
			}
			if mode == AckOnCompare {
				if acks[0].Compared != outSeq {
					t.Fatalf("compare ack %+v, want compared %d", acks[0], outSeq)
				}
				return
			}
			// The compared position reaches the primary with the next
			// acknowledgement.
			if _, err := p.RecordInput(6, 2, []byte("in")); err != nil {
				t.Fatal(err)
			}
			for _, m := range take(p).Messages {
				_ = s.Step(wireTrip(t, m))
			}
			if acks := acksIn(take(s)); len(acks) != 1 || acks[0].Compared != outSeq || acks[0].Received != outSeq+1 {
				t.Fatalf("next receipt ack %+v, want received %d compared %d", acks, outSeq+1, outSeq)
			}
		})
	}
}
