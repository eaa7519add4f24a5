package lockstep

import (
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// primaryState is a primary's phase and what the agent's vCPU is told
// (stall, pause). Its log and held outputs are in primaryLog, the
// checkpoints it ships in checkpointShipping.
type primaryState struct {
	phase        pPhase // where the primary stands with its secondary
	stalled      bool   // CmdStall given and not yet undone: the log or the held outputs fill a window
	paused       bool   // CmdPause given for a checkpoint and not yet resumed
	hadPeer      bool   // a secondary was attached when acquiring began: keep the log for it
	sinceRestore int    // ticks since the last restore confirmation (a late hello is ignored within PeerTimeoutTicks)
	// joinBackoffTicks: hellos are not served until it is 0 again, after
	// a sync was abandoned (PeerLost does not shorten it).
	joinBackoffTicks int
}

// pPhase is a primary's phase.
type pPhase uint8

const (
	pAcquiring pPhase = iota // waiting for the arbiter; outputs held
	pAlone                   // granted, no secondary: release at once
	pPrecopy                 // copying the running VM to a joiner; still alone
	pSyncing                 // checkpoint under way to a secondary; outputs held
	pProtected               // secondary in step; release by Mode
)

// RecordInput logs one nondeterministic input the primary's VM received at
// exitIndex and returns its log position. Call it before the VM sees data.
func (n *Node) RecordInput(exitIndex uint64, kind uint16, data []byte) (uint64, error) {
	if n.role != RolePrimary {
		return 0, n.roleErr("RecordInput")
	}
	if len(data) > wire.MaxEntryDataBytes {
		return 0, fmt.Errorf("lockstep: input of %d bytes exceeds wire.MaxEntryDataBytes %d: split it across exits: %w", len(data), wire.MaxEntryDataBytes, wire.ErrTooLarge)
	}
	n.log.lastSeq++
	n.appendLog(&wire.Entry{Seq: n.log.lastSeq, ExitIndex: exitIndex, Kind: kind, Data: clone(data)})
	return n.log.lastSeq, nil
}

// HoldOutput holds one externally visible output the primary's VM produced
// at exitIndex. It comes back in Ready.Release when the mode allows; the
// returned ID names it there.
func (n *Node) HoldOutput(exitIndex uint64, device uint16, data []byte) (uint64, error) {
	if n.role != RolePrimary {
		return 0, n.roleErr("HoldOutput")
	}
	if len(data) > wire.MaxOutputDataBytes {
		return 0, fmt.Errorf("lockstep: output of %d bytes exceeds wire.MaxOutputDataBytes %d: split it across exits: %w", len(data), wire.MaxOutputDataBytes, wire.ErrTooLarge)
	}
	n.log.lastSeq++
	rec := &wire.Output{Seq: n.log.lastSeq, ExitIndex: exitIndex, Device: device, Length: uint32(len(data)), Digest: digest(data)}
	if n.cfg.SendOutputData {
		rec.HasData, rec.Data = true, clone(data)
	}
	n.appendLog(rec)
	n.nextID++
	n.log.held = append(n.log.held, held{id: n.nextID, seq: n.log.lastSeq, device: device, data: clone(data)})
	if n.cfg.Bugs.ReleaseBeforeAck && n.primary.phase == pProtected {
		n.releaseHead(len(n.log.held))
	}
	n.releaseEligible()
	return n.nextID, nil
}

func (n *Node) goAlone() {
	n.primary.phase = pAlone
	n.log.unacked, n.shipping.checkpoints, n.shipping.taking, n.shipping.chainBase = nil, nil, false, 0
	n.primary.hadPeer = false
	if n.primary.paused {
		n.primary.paused = false
		n.command(Command{Kind: CmdResume})
	}
	n.updateStall()
	n.releaseEligible()
}

func (n *Node) tickPrimary() {
	switch n.primary.phase {
	case pPrecopy:
		if n.ticks.sincePeer >= n.cfg.SyncTimeoutTicks {
			// The joiner is gone; we never stopped being alone.
			n.goAlone()
			return
		}
		if n.ticks.sinceProgress >= n.shipping.retryTicks {
			n.ticks.sinceProgress = 0
			n.retransmitCheckpoint()
		}
	case pProtected, pSyncing:
		timeout := n.cfg.PeerTimeoutTicks
		if n.primary.phase == pSyncing {
			timeout = n.cfg.SyncTimeoutTicks
		}
		if n.ticks.sincePeer >= timeout {
			// The secondary is gone. Going on alone needs a new epoch, so
			// that a secondary that thinks the same of us cannot also win.
			n.primary.phase = pAcquiring
			n.primary.hadPeer = true
			n.acquire(n.epoch + 1)
			return
		}
		// Heartbeats go out on their own clock, not only when the link is
		// idle: they carry ReleasedThrough, and the fresher the secondary's
		// idea of it, the fewer outputs it repeats if it must go live.
		if n.ticks.sinceHeartbeat >= n.cfg.HeartbeatTicks {
			n.ticks.sinceHeartbeat = 0
			n.send(&wire.Heartbeat{LastSeq: n.log.lastSeq, ReleasedThrough: n.releasedThrough()})
		}
		if n.primary.phase == pSyncing && n.ticks.sinceProgress >= n.shipping.retryTicks {
			n.ticks.sinceProgress = 0
			n.retransmitCheckpoint()
		}
		if n.primary.phase == pProtected && n.ticks.sinceProgress >= n.cfg.RetransmitTicks {
			n.ticks.sinceProgress = 0
			for _, m := range n.log.unacked[:min(len(n.log.unacked), n.cfg.RetransmitBurstItems)] {
				n.send(m)
			}
		}
	}
}

func (n *Node) stepPrimary(m wire.Msg) error {
	h := m.Head()
	if h.Epoch > n.epoch {
		n.halt(fmt.Sprintf("peer is at epoch %d, this primary at %d: it was replaced", h.Epoch, n.epoch))
		return nil
	}
	switch m := m.(type) {
	case *wire.Hello:
		if m.Role != wire.RoleSecondary || n.primary.phase == pAcquiring || n.primary.joinBackoffTicks > 0 {
			return nil // a joiner retries its hello until we can serve it
		}
		if n.primary.phase == pPrecopy || n.primary.phase == pSyncing && n.shipping.full {
			n.ticks.sincePeer = 0
			return nil // the checkpoint under way serves this joiner too
		}
		if n.primary.phase == pProtected && n.primary.sinceRestore < n.cfg.PeerTimeoutTicks {
			// Most likely a late copy of the hello we just served. If it is
			// a restarted secondary, it says hello again later, and its old
			// self's silence times out meanwhile.
			return nil
		}
		n.ticks.sincePeer = 0
		if n.primary.phase == pAlone && n.cfg.PrecopyRounds > 0 {
			n.beginPrecopy()
		} else {
			n.beginSync(true)
		}
	case *wire.Ack:
		if n.primary.phase != pProtected {
			return nil
		}
		n.ticks.sincePeer = 0
		if m.Received > n.log.lastSeq || m.Compared > n.log.lastSeq {
			return fmt.Errorf("lockstep: ack for position %d/%d beyond the log's end %d", m.Received, m.Compared, n.log.lastSeq)
		}
		if m.Received > n.log.acked {
			n.log.acked = m.Received
			n.ticks.sinceProgress = 0
			n.log.dropAcked()
			n.updateStall()
		}
		n.log.compared = max(n.log.compared, m.Compared)
		if m.Replayed > n.log.replayed && m.Replayed <= n.log.lastSeq {
			n.log.replayed = m.Replayed
			n.updateStall()
		}
		n.releaseEligible()
	case *wire.CheckpointAck:
		if n.primary.phase != pSyncing && n.primary.phase != pPrecopy {
			return nil
		}
		n.ticks.sincePeer = 0
		return n.stepCheckpointAck(m)
	case *wire.ResyncRequest:
		n.ticks.sincePeer = 0
		// A request about a position at or before the last checkpoint was
		// already repaired by it (a late duplicate).
		if n.primary.phase == pProtected && m.AtSeq > n.shipping.seq {
			n.shipping.base = clone(m.Base) // m aliases the transport's buffer
			n.beginSync(false)
		}
	case *wire.CheckpointDone:
		if !m.Restored || n.primary.phase != pSyncing || m.ID != n.shipping.id || n.shipping.taking {
			return nil
		}
		n.ticks.sincePeer = 0
		n.primary.sinceRestore = 0
		n.primary.phase = pProtected
		n.shipping.checkpoints, n.shipping.chainBase = nil, 0
		n.log.acked, n.log.compared, n.log.replayed = max(n.log.acked, n.shipping.seq), max(n.log.compared, n.shipping.seq), max(n.log.replayed, n.shipping.seq)
		n.log.dropAcked()
		// Items logged after the checkpoint (none when paused) go now.
		for _, it := range n.log.unacked {
			n.send(it)
		}
		n.updateStall()
		n.releaseEligible()
		if n.primary.paused {
			n.primary.paused = false
			n.command(Command{Kind: CmdResume})
		}
	case *wire.GoLive, *wire.Fence:
		// Same epoch from another node: it cannot have won our epoch.
	}
	return nil
}

// beginSync pauses the VM and asks for a checkpoint for the secondary: a
// full one for a joiner, an incremental one to repair a divergence. Outputs
// held from now on wait for the secondary's restore confirmation.
func (n *Node) beginSync(full bool) {
	n.shipping.checkpoints, n.shipping.chainBase = nil, 0
	n.syncPaused(full)
}

// syncPaused pauses the VM and asks for the checkpoint that brings the
// secondary in step: one standing alone, or (shipping.chainBase set) the last part
// of a pre-copy chain, an increment over the live parts.
func (n *Node) syncPaused(full bool) {
	n.primary.phase = pSyncing
	n.shipping.id++
	n.shipping.seq = n.log.lastSeq
	n.shipping.full = full
	n.shipping.taking, n.shipping.live = true, false
	n.ticks.sinceProgress, n.shipping.retryTicks = 0, n.cfg.RetransmitTicks
	if !n.primary.paused && !n.cfg.Bugs.ResyncWithoutPause {
		n.primary.paused = true
		n.command(Command{Kind: CmdPause})
	}
	ck := Checkpoint{ID: n.shipping.id, Seq: n.shipping.seq, Full: full && n.shipping.chainBase == 0, Chain: n.shipping.chainBase != 0}
	if !full && n.shipping.chainBase == 0 {
		ck.Base = n.shipping.base
	}
	n.shipping.base = nil
	n.command(Command{Kind: CmdTakeCheckpoint, Checkpoint: ck})
}

// beginPrecopy starts bringing a joiner up while the VM runs: a live full
// copy first. The primary stays alone meanwhile (outputs released at once,
// no log kept: the paused part at the end covers everything before it).
func (n *Node) beginPrecopy() {
	n.primary.phase = pPrecopy
	n.shipping.awaitParts = false
	n.shipping.id++
	n.shipping.chainBase = n.shipping.id
	n.shipping.precopyRound = 1
	n.shipping.full = true
	n.shipping.taking, n.shipping.live = true, true
	n.shipping.checkpoints = nil
	n.ticks.sinceProgress, n.shipping.retryTicks = 0, n.cfg.RetransmitTicks
	n.command(Command{Kind: CmdTakeCheckpoint, Checkpoint: Checkpoint{ID: n.shipping.id, Seq: n.log.lastSeq, Full: true, Live: true}})
}

// CheckpointTaken hands the node the VMM's checkpoint for CmdTakeCheckpoint
// id, with its digest (DataDigest(data), computed by the caller where it
// made data); the node ships it to the secondary in chunks. The node keeps
// data, without copying it, until the sync is over: the caller must not
// write it again.
func (n *Node) CheckpointTaken(id uint64, data []byte, dataDigest [wire.DigestBytes]byte) error {
	if n.role != RolePrimary {
		return n.roleErr("CheckpointTaken")
	}
	if n.primary.phase != pSyncing && n.primary.phase != pPrecopy || id != n.shipping.id || !n.shipping.taking {
		return nil // superseded by a newer sync or by going alone
	}
	n.shipping.taking = false
	if n.primary.phase == pPrecopy {
		return n.abandonOnError(n.shipPart(id, data, dataDigest))
	}
	// The vCPU may have run exits between the Step that asked for the
	// checkpoint and the pause taking effect; the checkpoint shows the VM
	// as of now, so its log position is now.
	n.shipping.seq = n.log.lastSeq
	return n.abandonOnError(n.ship(id, data, dataDigest, &wire.CheckpointDone{Full: n.shipping.full, Base: n.shipping.chainBase}))
}

// ErrSyncAbandoned wraps the reason a primary gave up bringing a secondary
// up (a checkpoint it could not take or ship): it goes on unprotected and
// serves the secondary's next hello after SyncTimeoutTicks. Never a
// reason to stop the VM.
var ErrSyncAbandoned = errors.New("lockstep: bringing the secondary up abandoned; the VM goes on unprotected and the join is retried later")

// CheckpointFailed tells the node the VMM could not take checkpoint id
// (CmdTakeCheckpoint): the node gives up the sync it was for, as
// ErrSyncAbandoned says. It returns that error, wrapping err, for the log.
func (n *Node) CheckpointFailed(id uint64, err error) error {
	if n.role != RolePrimary {
		return n.roleErr("CheckpointFailed")
	}
	if n.primary.phase != pSyncing && n.primary.phase != pPrecopy || id != n.shipping.id || !n.shipping.taking {
		return nil // superseded
	}
	n.shipping.taking = false
	return n.abandonOnError(fmt.Errorf("checkpoint %d: %w", id, err))
}

// abandonOnError gives up the sync under way if err is set. A joiner with
// live parts only never depended on us: we go on alone at once. A
// secondary we were protected by, or a joiner of a paused sync, is handled
// as one that went silent: a new epoch first, so that it cannot take over
// while we go on alone.
func (n *Node) abandonOnError(err error) error {
	if err == nil {
		return nil
	}
	n.primary.joinBackoffTicks = n.cfg.SyncTimeoutTicks
	if n.primary.phase == pPrecopy {
		n.goAlone()
	} else {
		n.shipping.checkpoints, n.shipping.chainBase = nil, 0
		n.primary.phase = pAcquiring
		n.primary.hadPeer = true
		n.acquire(n.epoch + 1)
	}
	return fmt.Errorf("%w: %w", ErrSyncAbandoned, err)
}

// shipPart ships a live pre-copy part and asks for the next: another live
// increment while rounds remain and the last one was large, else the
// paused increment that ends the chain.
func (n *Node) shipPart(id uint64, data []byte, dataDigest [wire.DigestBytes]byte) error {
	if err := n.ship(id, data, dataDigest, &wire.CheckpointDone{Full: id == n.shipping.chainBase, Part: true}); err != nil {
		return err
	}
	if n.shipping.precopyRound < n.cfg.PrecopyRounds && len(data) >= n.cfg.PrecopyDoneBytes {
		n.shipping.precopyRound++
		n.shipping.id++
		n.shipping.taking, n.shipping.live = true, true
		n.command(Command{Kind: CmdTakeCheckpoint, Checkpoint: Checkpoint{ID: n.shipping.id, Seq: n.log.lastSeq, Live: true, Chain: true}})
		return nil
	}
	// The pause lasts until the secondary restored the chain: it should
	// not also wait for live parts still on their way, which take as long
	// as the VM's size to arrive. The VM runs meanwhile (outputs released
	// as they come: we are alone), so the paused end waits for them.
	if !n.shipping.allKept() {
		n.shipping.awaitParts = true
		return nil
	}
	n.syncPaused(true)
	return nil
}
