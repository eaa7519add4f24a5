package lockstep

import (
	"errors"
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
)

func newTestNode(t *testing.T, role wire.Role, mode Mode) *Node {
	t.Helper()
	return newTestNodeWindow(t, role, mode, 4)
}

// newTestNodeWindow is newTestNode with a log window of window entries.
func newTestNodeWindow(t *testing.T, role wire.Role, mode Mode, window int) *Node {
	t.Helper()
	n, err := NewNode(Config{VMID: "vm", Role: role, Mode: mode, LogWindowEntries: window, CheckpointChunkBytes: 8})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// take returns the pending Ready and advances past it.
func take(n *Node) Ready {
	rd := n.Ready()
	cp := Ready{
		Commands: append([]Command(nil), rd.Commands...),
		Release:  append([]Output(nil), rd.Release...),
		Drop:     append([]uint64(nil), rd.Drop...),
		Messages: append([]wire.Msg(nil), rd.Messages...),
	}
	n.Advance(rd)
	return cp
}

// wireTrip sends m through the codec, as an agent would.
func wireTrip(t *testing.T, m wire.Msg) wire.Msg {
	t.Helper()
	out, _, err := wire.Parse(m.Append(nil))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pair brings a primary and a secondary to protected, in memory.
func pair(t *testing.T, mode Mode) (p, s *Node) {
	p, s = newTestNode(t, wire.RolePrimary, mode), newTestNode(t, wire.RoleSecondary, mode)
	take(p)
	p.ArbiterResult(1, true, 7, nil)
	exchange(t, p, s)
	return p, s
}

// exchange delivers messages both ways and performs commands until quiet.
func exchange(t *testing.T, p, s *Node) {
	t.Helper()
	for range 100 {
		if !p.HasReady() && !s.HasReady() {
			return
		}
		for _, n := range []*Node{p, s} {
			other := s
			if n == s {
				other = p
			}
			rd := take(n)
			for _, c := range rd.Commands {
				switch c.Kind {
				case CmdTakeCheckpoint:
					if err := n.CheckpointTaken(c.Checkpoint.ID, []byte("guest-state"), DataDigest([]byte("guest-state"))); err != nil {
						t.Fatal(err)
					}
				case CmdRestoreCheckpoint:
					if string(c.Checkpoint.Data) != "guest-state" {
						t.Fatalf("restored %q, want the primary's checkpoint", c.Checkpoint.Data)
					}
					if err := n.CheckpointRestored(c.Checkpoint.ID); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, m := range rd.Messages {
				_ = other.Step(wireTrip(t, m))
			}
		}
	}
	t.Fatal("the pair never went quiet")
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, c := range []Config{
		{Role: wire.RolePrimary, Mode: AckOnCompare},
		{VMID: "vm", Mode: AckOnCompare},
		{VMID: "vm", Role: wire.RolePrimary},
		{VMID: "vm", Role: wire.RolePrimary, Mode: AckOnCompare, HeartbeatTicks: 5, PeerTimeoutTicks: 6},
	} {
		if _, err := NewNode(c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

func TestPairBecomesProtected(t *testing.T) {
	p, s := pair(t, AckOnReceipt)
	if st := p.Status(); !st.Protected || st.Epoch != 1 || st.Fence != 7 {
		t.Fatalf("primary status %+v, want protected in epoch 1 with fence 7", st)
	}
	if st := s.Status(); !st.Synced || st.Epoch != 1 {
		t.Fatalf("secondary status %+v, want synced in epoch 1", st)
	}
}

func TestReceiptModeHoldsOutputUntilAck(t *testing.T) {
	p, s := pair(t, AckOnReceipt)
	if _, err := p.RecordInput(1, 2, []byte("in")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.HoldOutput(2, 0, []byte("out")); err != nil {
		t.Fatal(err)
	}
	rd := take(p)
	if len(rd.Release) != 0 {
		t.Fatalf("released %d outputs before any ack", len(rd.Release))
	}
	for _, m := range rd.Messages {
		_ = s.Step(wireTrip(t, m))
	}
	for _, m := range take(s).Messages {
		_ = p.Step(wireTrip(t, m))
	}
	if rd := take(p); len(rd.Release) != 1 || string(rd.Release[0].Data) != "out" {
		t.Fatalf("after the ack: release %+v, want the held output", rd.Release)
	}
}

func TestCompareModeReleasesOnlyAfterSameOutput(t *testing.T) {
	p, s := pair(t, AckOnCompare)
	p.HoldOutput(5, 1, []byte("hello"))
	exchange(t, p, s)
	if p.Status().Held != 1 {
		t.Fatal("output released before the secondary reproduced it")
	}
	if _, r := s.ReplayOutput(5, 1, []byte("hello")); r != OK {
		t.Fatalf("replay of the same output: %s", r)
	}
	var released []Output
	for range 5 {
		released = append(released, p.Ready().Release...)
		exchange(t, p, s)
	}
	if p.Status().Held != 0 {
		t.Fatalf("output still held after a matching compare")
	}
}

func TestSecondaryMismatchRequestsResync(t *testing.T) {
	p, s := pair(t, AckOnCompare)
	p.HoldOutput(5, 1, []byte("hello"))
	rd := take(p)
	for _, m := range rd.Messages {
		_ = s.Step(wireTrip(t, m))
	}
	if _, r := s.ReplayOutput(5, 1, []byte("HELLO")); r != Diverged {
		t.Fatalf("different output: got %s, want diverged", r)
	}
	var asked bool
	for _, m := range take(s).Messages {
		if rr, ok := m.(*wire.ResyncRequest); ok && rr.Reason == wire.ResyncOutputMismatch {
			asked = true
			_ = p.Step(wireTrip(t, m))
		}
	}
	if !asked {
		t.Fatal("no resync request sent")
	}
	rd = take(p)
	if len(rd.Commands) < 2 || rd.Commands[0].Kind != CmdPause || rd.Commands[1].Kind != CmdTakeCheckpoint {
		t.Fatalf("primary commands %+v, want pause then take-checkpoint", rd.Commands)
	}
}

func TestNextInputWrongKindDiverges(t *testing.T) {
	p, s := pair(t, AckOnReceipt)
	p.RecordInput(3, 1, []byte("x"))
	for _, m := range take(p).Messages {
		_ = s.Step(wireTrip(t, m))
	}
	if _, r := s.NextInput(3, 2); r != Diverged {
		t.Fatalf("wrong kind: got %s, want diverged", r)
	}
}

// An input whose bytes name another request than the replica made (the
// caller finds it; the node cannot) is a divergence like any other: a
// resync is asked for, and the primary pauses for a checkpoint.
func TestInputDivergedRequestsResync(t *testing.T) {
	p, s := pair(t, AckOnCompare)
	p.RecordInput(3, 1, []byte("request a"))
	for _, m := range take(p).Messages {
		_ = s.Step(wireTrip(t, m))
	}
	if _, r := s.NextInput(3, 1); r != OK {
		t.Fatalf("logged input: got %s, want ok", r)
	}
	before := s.Status().Divergences
	if r := s.InputDiverged(3); r != Diverged {
		t.Fatalf("InputDiverged: got %s, want diverged", r)
	}
	if d := s.Status().Divergences; d != before+1 {
		t.Fatalf("divergences %d, want %d", d, before+1)
	}
	var asked bool
	for _, m := range take(s).Messages {
		if rr, ok := m.(*wire.ResyncRequest); ok && rr.Reason == wire.ResyncInputMismatch {
			asked = true
			_ = p.Step(wireTrip(t, m))
		}
	}
	if !asked {
		t.Fatal("no resync request for an input mismatch")
	}
	if rd := take(p); len(rd.Commands) < 2 || rd.Commands[0].Kind != CmdPause || rd.Commands[1].Kind != CmdTakeCheckpoint {
		t.Fatalf("primary commands %+v, want pause then take-checkpoint", rd.Commands)
	}
	// Once diverged, a second report changes nothing, and a primary has
	// no replay to diverge from.
	if r := s.InputDiverged(3); r != NotYet || s.Status().Divergences != before+1 {
		t.Fatalf("second report: %s, divergences %d", r, s.Status().Divergences)
	}
	if r := p.InputDiverged(3); r != NotYet {
		t.Fatalf("on a primary: %s, want not-yet", r)
	}
}

func TestStaleEpochRefusedWithFence(t *testing.T) {
	p, _ := pair(t, AckOnReceipt)
	err := p.Step(&wire.Ack{Header: wire.Header{Epoch: 0}, Received: 1})
	if !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale ack: got %v, want ErrStaleEpoch", err)
	}
	rd := take(p)
	if len(rd.Messages) != 1 || rd.Messages[0].Type() != wire.TypeFence {
		t.Fatalf("reply %+v, want one fence notice", rd.Messages)
	}
}

func TestNewerEpochHaltsPrimary(t *testing.T) {
	p, _ := pair(t, AckOnReceipt)
	p.HoldOutput(1, 0, []byte("held"))
	_ = p.Step(&wire.GoLive{Header: wire.Header{Epoch: 2, Fence: 9}})
	rd := take(p)
	if p.Status().Role != RoleHalted || len(rd.Release) != 0 {
		t.Fatalf("after a newer go-live: role %s, released %d; want halted, nothing released", p.Status().Role, len(rd.Release))
	}
	if len(rd.Drop) != 1 {
		t.Fatalf("held output not dropped: %+v", rd.Drop)
	}
}

func TestWindowStallsVCPU(t *testing.T) {
	p, _ := pair(t, AckOnReceipt)
	for i := range 4 {
		p.RecordInput(uint64(i), 0, nil)
	}
	var stalled bool
	for _, c := range take(p).Commands {
		stalled = stalled || c.Kind == CmdStall
	}
	if !stalled || !p.Status().Stalled {
		t.Fatal("a full log window did not stall the vCPU")
	}
}

func TestPrimaryAloneAfterSecondaryTimeout(t *testing.T) {
	p, _ := pair(t, AckOnReceipt)
	for range DefaultPeerTimeoutTicks {
		p.Tick()
	}
	var acq *Command
	for _, c := range take(p).Commands {
		if c.Kind == CmdAcquire {
			acq = &c
		}
	}
	if acq == nil || acq.Epoch != 2 {
		t.Fatalf("no arbiter request for epoch 2 after the secondary went silent")
	}
	p.HoldOutput(1, 0, []byte("x"))
	if len(take(p).Release) != 0 {
		t.Fatal("released while waiting for the arbiter")
	}
	p.ArbiterResult(2, true, 8, nil)
	if rd := take(p); len(rd.Release) != 1 || rd.Release[0].Epoch != 2 {
		t.Fatalf("after the grant: %+v, want the held output released in epoch 2", rd.Release)
	}
}

// Outputs held across a resync fill the window; releasing them at the
// restore confirmation must also unstall the vCPU (found by the harsh
// simulator regime: the pair sat protected and stalled forever).
func TestResyncReleaseUnstalls(t *testing.T) {
	p, _ := pair(t, AckOnCompare)
	for i := range 4 {
		p.HoldOutput(uint64(i), 0, []byte{byte(i)})
	}
	take(p)
	if !p.Status().Stalled {
		t.Fatal("a window of held outputs did not stall")
	}
	h := wire.Header{Epoch: 1, Fence: 7}
	_ = p.Step(&wire.ResyncRequest{Header: h, Reason: wire.ResyncOutputMismatch, AtSeq: 4})
	var id uint64
	for _, c := range take(p).Commands {
		if c.Kind == CmdTakeCheckpoint {
			id = c.Checkpoint.ID
		}
	}
	if err := p.CheckpointTaken(id, []byte("s"), DataDigest([]byte("s"))); err != nil {
		t.Fatal(err)
	}
	take(p)
	_ = p.Step(&wire.CheckpointDone{Header: h, ID: id, Seq: p.Status().LastSeq, Restored: true})
	rd := take(p)
	var unstalled bool
	for _, c := range rd.Commands {
		unstalled = unstalled || c.Kind == CmdUnstall
	}
	if len(rd.Release) != 4 || !unstalled || p.Status().Stalled {
		t.Fatalf("after the confirmation: %d released, unstall=%v; want 4 released and the vCPU unstalled", len(rd.Release), unstalled)
	}
}

// An arbiter that cannot be asked (a read-only directory, say) is asked
// again after a delay that doubles with each failure up to
// ArbiterRetryMaxTicks, not every RetransmitTicks forever, and the error
// shows in Status until an answer comes (issue 15).
func TestArbiterErrorsBackOff(t *testing.T) {
	n, err := NewNode(Config{VMID: "vm", Role: wire.RolePrimary, Mode: AckOnReceipt, RetransmitTicks: 3, ArbiterRetryMaxTicks: 20})
	if err != nil {
		t.Fatal(err)
	}
	asks := func() int {
		k := 0
		for _, c := range take(n).Commands {
			if c.Kind == CmdAcquire {
				k++
			}
		}
		return k
	}
	if asks() != 1 {
		t.Fatal("a primary must first ask the arbiter")
	}
	var gaps []int
	for range 8 {
		n.ArbiterResult(1, false, 0, errors.New("open /arb/vm.arbiter: read-only file system"))
		st := n.Status()
		if st.ArbiterFailures != len(gaps)+1 || st.ArbiterErr == "" {
			t.Fatalf("after %d failures status says %d failures, error %q", len(gaps)+1, st.ArbiterFailures, st.ArbiterErr)
		}
		ticks := 0
		for asks() == 0 {
			if ticks++; ticks > 100 {
				t.Fatal("the arbiter was never asked again")
			}
			n.Tick()
		}
		gaps = append(gaps, ticks)
	}
	want := []int{3, 6, 12, 20, 20, 20, 20, 20}
	for i := range want {
		if gaps[i] != want[i] {
			t.Fatalf("ticks between asks %v, want %v", gaps, want)
		}
	}
	n.ArbiterResult(1, true, 1, nil)
	if st := n.Status(); st.ArbiterFailures != 0 || st.ArbiterErr != "" || st.Epoch != 1 {
		t.Fatalf("after a grant status %+v: want the error cleared and epoch 1", st)
	}
}

// A resync base the VMM makes too large for the wire is not sent: the
// request goes without one (the primary answers with a full checkpoint)
// rather than as a frame the peer refuses, which would leave the
// secondary asking for ever.
func TestResyncBaseOverTheBoundIsLeftOut(t *testing.T) {
	for _, size := range []int{wire.MaxResyncBaseBytes, wire.MaxResyncBaseBytes + 1} {
		p, s := pair(t, AckOnCompare)
		s.cfg.ResyncBase = func() []byte { return make([]byte, size) }
		p.HoldOutput(5, 1, []byte("hello"))
		for _, m := range take(p).Messages {
			_ = s.Step(wireTrip(t, m))
		}
		if _, r := s.ReplayOutput(5, 1, []byte("HELLO")); r != Diverged {
			t.Fatalf("different output: got %s, want diverged", r)
		}
		var rr *wire.ResyncRequest
		for _, m := range take(s).Messages {
			if r, ok := wireTrip(t, m).(*wire.ResyncRequest); ok {
				rr = r
			}
		}
		want := size
		if size > wire.MaxResyncBaseBytes {
			want = 0
		}
		if rr == nil || len(rr.Base) != want {
			t.Fatalf("base of %d bytes: request %v, want one with a base of %d bytes", size, rr, want)
		}
		_ = p.Step(rr)
		var ck *Checkpoint
		for _, c := range take(p).Commands {
			if c.Kind == CmdTakeCheckpoint {
				ck = &c.Checkpoint
			}
		}
		if ck == nil || ck.Full || len(ck.Base) != want {
			t.Fatalf("base of %d bytes: take-checkpoint %+v, want an incremental one with a base of %d bytes", size, ck, want)
		}
	}
}

// CheckpointRestoreFailed for a checkpoint the node does not await (a
// late call, another id) changes nothing.
func TestCheckpointRestoreFailedSuperseded(t *testing.T) {
	_, s := pair(t, AckOnCompare)
	before := s.Status()
	if err := s.CheckpointRestoreFailed(99, errors.New("late")); err != nil {
		t.Fatalf("a late failure: %v", err)
	}
	if after := s.Status(); after != before {
		t.Fatalf("a late failure changed the node: %+v, was %+v", after, before)
	}
}

// Ships names the checkpoint a primary is shipping, and no other: not
// after its secondary restored it, and not once the node gave a join up
// for a lost secondary (an agent drops what it has queued of it).
func TestShipsOnlyTheCheckpointUnderWay(t *testing.T) {
	p, s := newTestNode(t, wire.RolePrimary, AckOnCompare), newTestNode(t, wire.RoleSecondary, AckOnCompare)
	take(p)
	p.ArbiterResult(1, true, 7, nil)
	// The secondary's hello starts a join; the checkpoint is taken.
	for _, m := range take(s).Messages {
		if err := p.Step(wireTrip(t, m)); err != nil {
			t.Fatal(err)
		}
	}
	var id uint64
	for _, c := range take(p).Commands {
		if c.Kind == CmdTakeCheckpoint {
			id = c.Checkpoint.ID
		}
	}
	if id == 0 {
		t.Fatal("a hello started no join")
	}
	if p.Ships(id) {
		t.Fatalf("checkpoint %d shipped before it was taken", id)
	}
	if err := p.CheckpointTaken(id, []byte("guest-state"), DataDigest([]byte("guest-state"))); err != nil {
		t.Fatal(err)
	}
	if !p.Ships(id) || p.Ships(id+1) || s.Ships(id) {
		t.Fatalf("Ships(%d) %t, Ships(%d) %t, secondary's Ships(%d) %t: want only the primary's %d", id, p.Ships(id), id+1, p.Ships(id+1), id, s.Ships(id), id)
	}
	p.PeerLost()
	if p.Ships(id) {
		t.Fatalf("checkpoint %d still shipped after the node gave the join up", id)
	}

	// A join that ends: once restored, the checkpoint is not shipped.
	p2, _ := pair(t, AckOnCompare)
	if p2.Ships(1) || !p2.Status().Protected {
		t.Fatalf("a protected primary ships checkpoint 1 (%+v)", p2.Status())
	}
}
