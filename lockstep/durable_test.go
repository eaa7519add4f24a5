package lockstep

import (
	"fmt"
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// durablePair is pair() with ConfirmDurable set as the agent sets it, or
// not (the planted bug: released-through reported at hand-out).
func durablePair(t *testing.T, confirm bool) (p, s *Node) {
	t.Helper()
	mk := func(role wire.Role) *Node {
		n, err := NewNode(Config{VMID: "vm", Role: role, Mode: AckOnReceipt, LogWindowEntries: 4, CheckpointChunkBytes: 8, ConfirmDurable: confirm})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	p, s = mk(wire.RolePrimary), mk(wire.RoleSecondary)
	take(p)
	p.ArbiterResult(1, true, 7, nil)
	exchange(t, p, s)
	return p, s
}

// heartbeatReleased ticks the primary until it sends a heartbeat, hands
// everything it sends to the secondary, and returns the heartbeat's
// ReleasedThrough.
func heartbeatReleased(t *testing.T, p, s *Node) uint64 {
	t.Helper()
	for range 2 * DefaultHeartbeatTicks {
		p.Tick()
		var hb *wire.Heartbeat
		for _, m := range take(p).Messages {
			if h, ok := m.(*wire.Heartbeat); ok {
				hb = h
			}
			_ = s.Step(wireTrip(t, m))
		}
		if hb != nil {
			return hb.ReleasedThrough
		}
	}
	t.Fatal("no heartbeat")
	return 0
}

// releasedThroughNeverPassesDurable holds outputs, releases them, and
// checks every heartbeat against what the caller reported durable: the
// secondary must not hear an output is out (and drop its copy) before it
// is durable where it went.
func releasedThroughNeverPassesDurable(t *testing.T, confirm bool) (violation string) {
	p, s := durablePair(t, confirm)
	var durable uint64
	for i := range 3 {
		if _, err := p.HoldOutput(uint64(10+i), 1, []byte("write")); err != nil {
			t.Fatal(err)
		}
		exchange(t, p, s)
	}
	if p.Status().Released == 0 {
		t.Fatal("nothing was released")
	}
	released := p.Status().Released
	for step := 0; step <= 3; step++ {
		if got := heartbeatReleased(t, p, s); got > durable {
			return fmt.Sprintf("heartbeat said released through %d with only %d durable", got, durable)
		}
		if s.Status().Released > durable {
			return "the secondary let its copies go past what is durable"
		}
		durable = min(released, durable+1)
		p.Durable(durable)
	}
	p.Durable(released + 100) // capped at what was released
	if got := heartbeatReleased(t, p, s); confirm && got != released {
		return fmt.Sprintf("after everything was reported durable, heartbeats say %d, want %d", got, released)
	}
	return ""
}

func TestReleasedThroughNeverPassesDurable(t *testing.T) {
	if v := releasedThroughNeverPassesDurable(t, true); v != "" {
		t.Fatal(v)
	}
}

// The check above catches a primary that reports an output released as
// soon as it handed it out (what ConfirmDurable exists to prevent).
func TestReleasedThroughCheckCatchesReleaseAtHandOut(t *testing.T) {
	if v := releasedThroughNeverPassesDurable(t, false); v == "" {
		t.Fatal("released-through reported at hand-out passed the check")
	}
}
