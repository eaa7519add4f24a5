package lockstep

import "github.com/ftvm/ftvm/lockstep/wire"

// sPhase is a secondary's phase (replayState.phase). A candidate keeps
// the phase it had: it replays on to the end of its log.
type sPhase uint8

const (
	sJoining   sPhase = iota // hello sent, waiting for a full checkpoint
	sRestoring               // restore command given, waiting for the agent
	sReplaying               // replaying the log
	sDiverged                // resync requested, waiting for a checkpoint
)

// NextInput returns the logged input for the secondary VM's exit exitIndex
// of kind. See Result for what to do with each answer.
func (n *Node) NextInput(exitIndex uint64, kind uint16) ([]byte, Result) {
	switch n.role {
	case RolePrimary:
		return nil, Live
	case RoleHalted:
		return nil, NotYet
	}
	if n.drained() && n.maybeGoLive() {
		return nil, Live
	}
	if n.replay.phase != sReplaying || len(n.replay.pending) > 0 || len(n.replay.log) == 0 {
		return nil, NotYet
	}
	e, ok := n.replay.log[0].(*wire.Entry)
	if !ok || e.ExitIndex != exitIndex || e.Kind != kind {
		n.diverge(wire.ResyncInputMismatch)
		return nil, Diverged
	}
	n.consume()
	return e.Data, OK
}

// InputDiverged tells the node that the input NextInput just returned OK
// for exitIndex does not answer the replica's request: its bytes name
// another request (arg, length) than the VM made, which the node cannot
// see, so the caller checks. The replicas have diverged; the node asks for
// a resync as on any divergence and returns Diverged: the exit waits for
// the checkpoint (or for this node to go live) as on a Diverged from
// NextInput. A node that is not replaying returns NotYet and changes
// nothing.
func (n *Node) InputDiverged(exitIndex uint64) Result {
	if n.role != RoleSecondary || n.replay.phase != sReplaying {
		return NotYet
	}
	n.diverge(wire.ResyncInputMismatch)
	return Diverged
}

// ReplayOutput gives the node an output the secondary VM produced at
// exitIndex; the node compares it with the primary's record. On OK the VM
// goes on; the returned ID names the copy in Ready.Drop.
func (n *Node) ReplayOutput(exitIndex uint64, device uint16, data []byte) (uint64, Result) {
	switch n.role {
	case RolePrimary:
		return 0, Live
	case RoleHalted:
		return 0, NotYet
	}
	if n.drained() && n.maybeGoLive() {
		return 0, Live
	}
	if n.replay.phase != sReplaying || len(n.replay.pending) >= n.cfg.MaxPendingOutputs {
		return 0, NotYet
	}
	n.nextID++
	n.replay.pending = append(n.replay.pending, held{id: n.nextID, seq: exitIndex, device: device, data: clone(data)})
	n.comparePending()
	if n.replay.phase == sDiverged {
		return n.nextID, Diverged
	}
	return n.nextID, OK
}

// diverge stops replay and asks for a checkpoint. Outputs the VM produced
// stay pending: if this node must go live before the checkpoint arrives,
// they are part of its execution and are released then.
func (n *Node) diverge(reason wire.ResyncReason) {
	n.replay.phase = sDiverged
	n.divergences++
	n.ticks.sinceProgress = 0
	n.sendResync(reason)
	n.maybeGoLive()
}

// sendResync asks the primary for a checkpoint, with the VMM's base for
// an incremental one when it gives one that fits.
func (n *Node) sendResync(reason wire.ResyncReason) {
	m := &wire.ResyncRequest{Reason: reason, AtSeq: n.replay.cursor}
	if n.cfg.ResyncBase != nil {
		if b := n.cfg.ResyncBase(); len(b) <= wire.MaxResyncBaseBytes {
			m.Base = b
		}
	}
	n.send(m)
}

func (n *Node) tickSecondary() {
	switch n.replay.phase {
	case sJoining:
		if n.ticks.sinceProgress >= n.cfg.RetransmitTicks {
			n.ticks.sinceProgress = 0
			n.send(n.hello())
			n.wantCheckpoints()
		}
		return
	case sRestoring:
		return
	}
	if n.role == RoleSecondary && n.ticks.sincePeer >= n.cfg.PeerTimeoutTicks {
		if n.divergedUnsafe() {
			n.halt(errDivergedReceipt)
			return
		}
		// The primary is gone: stop acknowledging (so it cannot release
		// anything more if it is alive after all) and ask for its epoch.
		n.role = RoleCandidate
		n.acquire(n.epoch + 1)
		return
	}
	if n.role != RoleSecondary {
		return
	}
	if n.replay.phase == sDiverged && n.ticks.sinceProgress >= n.cfg.RetransmitTicks {
		n.ticks.sinceProgress = 0
		n.sendResync(wire.ResyncOutputMismatch)
		n.wantCheckpoints()
	}
	if n.ticks.sinceSend >= n.cfg.HeartbeatTicks {
		n.replay.ackDue = true // our ack is our heartbeat
	}
}

func (n *Node) stepSecondary(m wire.Msg) error {
	h := m.Head()
	if h.Epoch > n.epoch {
		if n.replay.phase != sJoining || n.role == RoleCandidate {
			// The primary went on in a newer epoch without us: our log is
			// of no use. Join again from a full checkpoint.
			n.rejoin()
		}
		n.epoch, n.fence = h.Epoch, h.Fence
	}
	switch m.(type) {
	case *wire.Fence, *wire.Hello, *wire.Ack, *wire.ResyncRequest:
		// Not from a primary: another secondary (say, our old primary
		// restarted as a joiner) must not keep our failure detector quiet.
		return nil
	}
	n.ticks.sincePeer = 0
	switch m := m.(type) {
	case *wire.Entry:
		n.appendItem(m, m.Seq)
	case *wire.Output:
		n.appendItem(m, m.Seq)
	case *wire.Heartbeat:
		if m.ReleasedThrough > n.replay.primaryReleased {
			n.replay.primaryReleased = m.ReleasedThrough
			k := 0
			for k < len(n.replay.copies) && n.replay.copies[k].seq <= n.replay.primaryReleased {
				n.retire(n.replay.copies[k])
				k++
			}
			n.replay.copies = append(n.replay.copies[:0], n.replay.copies[k:]...)
		}
		if m.LastSeq > n.replay.received {
			n.replay.ackDue = true
		}
	case *wire.CheckpointChunk:
		return n.stepChunk(m)
	case *wire.CheckpointDone:
		return n.stepDone(m)
	case *wire.GoLive:
		// The primary is someone new in this epoch (we adopted it above).
	}
	return nil
}

func (n *Node) rejoin() {
	for _, c := range n.replay.copies {
		n.rd.Drop = append(n.rd.Drop, c.id)
	}
	for _, p := range n.replay.pending {
		n.rd.Drop = append(n.rd.Drop, p.id)
	}
	n.role = RoleSecondary
	n.replay.phase = sJoining
	n.claim.epoch = 0
	n.replay.log, n.replay.pending, n.replay.copies, n.replay.outOfOrder = nil, nil, nil, nil
	n.incoming.assemblies = nil
	n.incoming.dropChain()
	n.ticks.sinceProgress = 0
	n.send(n.hello())
}

// drained reports whether replay has used all of the log it can: everything
// received, or everything up to a divergence.
func (n *Node) drained() bool {
	return n.replay.phase == sReplaying && len(n.replay.log) == 0 || n.replay.phase == sDiverged
}

// maybeGoLive makes a granted candidate the primary once it has consumed
// all of the log it will ever use: everything received, or everything up to
// a divergence (the rest came from an execution it no longer follows).
func (n *Node) maybeGoLive() bool {
	if n.role != RoleCandidate || n.claim.grantedEpoch == 0 {
		return false
	}
	if !n.drained() && !(n.cfg.Bugs.GoLiveBeforeDrain && n.replay.phase == sReplaying) {
		return false
	}
	if n.divergedUnsafe() {
		// It diverged while it consumed the rest of its log.
		n.halt(errDivergedReceipt)
		return false
	}
	n.role = RolePrimary
	n.primary.phase = pAlone
	n.epoch, n.fence = n.claim.grantedEpoch, n.claim.grantedFence
	n.log.lastSeq = n.replay.received
	n.replay.log = nil
	n.command(Command{Kind: CmdGoLive, Epoch: n.epoch, Fence: n.fence})
	// Outputs the old primary may have released, then outputs it never
	// recorded: this execution is the one the world sees from now on, and
	// a repeat of the last few is the price of not knowing.
	for _, c := range n.replay.copies {
		if c.seq > n.replay.primaryReleased {
			n.rd.Release = append(n.rd.Release, Output{ID: c.id, Seq: c.seq, Device: c.device, Data: c.data, Epoch: n.epoch, Fence: n.fence, Carried: c.carried})
		}
	}
	for _, p := range n.replay.pending {
		n.log.lastSeq++
		n.rd.Release = append(n.rd.Release, Output{ID: p.id, Seq: n.log.lastSeq, Device: p.device, Data: p.data, Epoch: n.epoch, Fence: n.fence})
	}
	n.replay.copies, n.replay.pending = nil, nil
	// Everything through lastSeq is out now (released by the old primary
	// or just above): say so to the next secondary, whose copies of these
	// outputs would otherwise wait for a release that never comes, and be
	// released again at its own go-live.
	n.log.released = n.log.lastSeq
	n.send(&wire.GoLive{LastSeq: n.log.lastSeq})
	return true
}

// errDivergedReceipt is why a secondary that diverged in ack-on-receipt
// mode halts rather than go live.
const errDivergedReceipt = "this replica diverged from the primary and was not resynced before the primary was lost; " +
	"in ack-on-receipt mode the primary released outputs this replica did not reproduce, so going live would contradict " +
	"what the world saw: the VM stops here. Run with ack-on-compare (--mode compare) where replay is not deterministic"

// divergedUnsafe reports whether this secondary knows its VM left the
// primary's path, has no checkpoint that repairs it, and runs in
// ack-on-receipt mode: the primary released outputs once they reached us,
// not once we reproduced them, so the world may have seen outputs this
// execution does not have. Such a replica must never go live. In
// ack-on-compare mode the world saw only what we reproduced, and going
// live from the divergence point is consistent.
func (n *Node) divergedUnsafe() bool {
	return n.cfg.Mode == AckOnReceipt && n.replay.phase == sDiverged && !n.cfg.Bugs.GoLiveDiverged
}
