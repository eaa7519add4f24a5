package lockstep

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/lockstep/wire"
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
	n.lastSeq++
	n.appendLog(&wire.Entry{Seq: n.lastSeq, ExitIndex: exitIndex, Kind: kind, Data: clone(data)})
	return n.lastSeq, nil
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
	n.lastSeq++
	rec := &wire.Output{Seq: n.lastSeq, ExitIndex: exitIndex, Device: device, Length: uint32(len(data)), Digest: digest(data)}
	if n.cfg.SendOutputData {
		rec.HasData, rec.Data = true, clone(data)
	}
	n.appendLog(rec)
	n.nextID++
	n.held = append(n.held, held{id: n.nextID, seq: n.lastSeq, device: device, data: clone(data)})
	if n.cfg.Bugs.ReleaseBeforeAck && n.pphase == pProtected {
		n.releaseHead(len(n.held))
	}
	n.releaseEligible()
	return n.nextID, nil
}

func (n *Node) roleErr(call string) error {
	if n.role == RoleHalted {
		return ErrHalted
	}
	return fmt.Errorf("%w: %s on a %s", ErrWrongRole, call, n.role)
}

// appendLog keeps the item for the secondary when there is one to send to.
func (n *Node) appendLog(m wire.Msg) {
	switch n.pphase {
	case pProtected, pSyncing:
		n.log = append(n.log, m)
		if n.pphase == pProtected {
			n.send(m)
		}
	case pAcquiring:
		if n.hadPeer {
			n.log = append(n.log, m)
		}
	}
	n.updateStall()
}

// updateStall stalls the vCPU while the secondary lags a full window behind:
// the log must not grow without bound.
func (n *Node) updateStall() {
	lag := 0
	if n.pphase == pProtected {
		lag = int(n.lastSeq - n.replayed)
	}
	want := lag >= n.cfg.LogWindowEntries || len(n.log) >= n.cfg.LogWindowEntries || len(n.held) >= n.cfg.LogWindowEntries
	if want != n.stalled {
		n.stalled = want
		if want {
			n.command(Command{Kind: CmdStall})
		} else {
			n.command(Command{Kind: CmdUnstall})
		}
	}
}

// releaseEligible releases held outputs, in order, while the mode allows.
func (n *Node) releaseEligible() {
	k := 0
	for k < len(n.held) && n.mayRelease(n.held[k].seq) {
		k++
	}
	n.releaseHead(k)
	// Held outputs count against the window too: releasing them may be
	// what lets the vCPU run again.
	n.updateStall()
}

func (n *Node) mayRelease(seq uint64) bool {
	switch n.pphase {
	case pAlone, pPrecopy:
		return true
	case pProtected:
		if n.cfg.Mode == AckOnCompare {
			return n.compared >= seq
		}
		// Everything logged before the output has reached the secondary.
		return n.acked >= seq-1
	}
	return false
}

func (n *Node) releaseHead(k int) {
	for _, h := range n.held[:k] {
		n.rd.Release = append(n.rd.Release, Output{ID: h.id, Seq: h.seq, Device: h.device, Data: h.data, Epoch: n.epoch, Fence: n.fence})
		n.released = h.seq
	}
	n.held = append(n.held[:0], n.held[k:]...)
}

// Durable reports that every output this node released through log
// position seq is durable where it went (Config.ConfirmDurable): the
// caller performs releases in order and reports each once it is done. A
// position beyond what was released is capped at it.
func (n *Node) Durable(seq uint64) {
	n.durable = max(n.durable, min(seq, n.released))
}

// releasedThrough is what the primary tells the secondary it released:
// with ConfirmDurable only what is durable, never more, so that the
// secondary lets go of its copy of an output only once the world has it.
func (n *Node) releasedThrough() uint64 {
	if n.cfg.ConfirmDurable {
		return min(n.released, n.durable)
	}
	return n.released
}

func (n *Node) goAlone() {
	n.pphase = pAlone
	n.log, n.ckptOut, n.ckptTaking, n.ckptBase = nil, nil, false, 0
	n.hadPeer = false
	if n.paused {
		n.paused = false
		n.command(Command{Kind: CmdResume})
	}
	n.updateStall()
	n.releaseEligible()
}

func (n *Node) tickPrimary() {
	switch n.pphase {
	case pPrecopy:
		if n.ticksSincePeer >= n.cfg.SyncTimeoutTicks {
			// The joiner is gone; we never stopped being alone.
			n.goAlone()
			return
		}
		if n.ticksRetry >= n.ckptRetryTicks {
			n.ticksRetry = 0
			n.retransmitCheckpoint()
		}
	case pProtected, pSyncing:
		timeout := n.cfg.PeerTimeoutTicks
		if n.pphase == pSyncing {
			timeout = n.cfg.SyncTimeoutTicks
		}
		if n.ticksSincePeer >= timeout {
			// The secondary is gone. Going on alone needs a new epoch, so
			// that a secondary that thinks the same of us cannot also win.
			n.pphase = pAcquiring
			n.hadPeer = true
			n.acquire(n.epoch + 1)
			return
		}
		// Heartbeats go out on their own clock, not only when the link is
		// idle: they carry ReleasedThrough, and the fresher the secondary's
		// idea of it, the fewer outputs it repeats if it must go live.
		if n.ticksSinceHeartbeat >= n.cfg.HeartbeatTicks {
			n.ticksSinceHeartbeat = 0
			n.send(&wire.Heartbeat{LastSeq: n.lastSeq, ReleasedThrough: n.releasedThrough()})
		}
		if n.pphase == pSyncing && n.ticksRetry >= n.ckptRetryTicks {
			n.ticksRetry = 0
			n.retransmitCheckpoint()
		}
		if n.pphase == pProtected && n.ticksRetry >= n.cfg.RetransmitTicks {
			n.ticksRetry = 0
			for _, m := range n.log[:min(len(n.log), n.cfg.RetransmitBurstItems)] {
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
		if m.Role != wire.RoleSecondary || n.pphase == pAcquiring || n.joinBackoffTicks > 0 {
			return nil // a joiner retries its hello until we can serve it
		}
		if n.pphase == pPrecopy || n.pphase == pSyncing && n.ckptFull {
			n.ticksSincePeer = 0
			return nil // the checkpoint under way serves this joiner too
		}
		if n.pphase == pProtected && n.ticksSinceSync < n.cfg.PeerTimeoutTicks {
			// Most likely a late copy of the hello we just served. If it is
			// a restarted secondary, it says hello again later, and its old
			// self's silence times out meanwhile.
			return nil
		}
		n.ticksSincePeer = 0
		if n.pphase == pAlone && n.cfg.PrecopyRounds > 0 {
			n.beginPrecopy()
		} else {
			n.beginSync(true)
		}
	case *wire.Ack:
		if n.pphase != pProtected {
			return nil
		}
		n.ticksSincePeer = 0
		if m.Received > n.lastSeq || m.Compared > n.lastSeq {
			return fmt.Errorf("lockstep: ack for position %d/%d beyond the log's end %d", m.Received, m.Compared, n.lastSeq)
		}
		if m.Received > n.acked {
			n.acked = m.Received
			n.ticksRetry = 0
			k := 0
			for k < len(n.log) && seqOf(n.log[k]) <= n.acked {
				k++
			}
			n.log = append(n.log[:0], n.log[k:]...)
			n.updateStall()
		}
		n.compared = max(n.compared, m.Compared)
		if m.Replayed > n.replayed && m.Replayed <= n.lastSeq {
			n.replayed = m.Replayed
			n.updateStall()
		}
		n.releaseEligible()
	case *wire.CheckpointAck:
		if n.pphase != pSyncing && n.pphase != pPrecopy {
			return nil
		}
		n.ticksSincePeer = 0
		return n.stepCheckpointAck(m)
	case *wire.ResyncRequest:
		n.ticksSincePeer = 0
		// A request about a position at or before the last checkpoint was
		// already repaired by it (a late duplicate).
		if n.pphase == pProtected && m.AtSeq > n.ckptSeq {
			n.beginSync(false)
		}
	case *wire.CheckpointDone:
		if !m.Restored || n.pphase != pSyncing || m.ID != n.ckptID || n.ckptTaking {
			return nil
		}
		n.ticksSincePeer = 0
		n.ticksSinceSync = 0
		n.pphase = pProtected
		n.ckptOut, n.ckptBase = nil, 0
		n.acked, n.compared, n.replayed = max(n.acked, n.ckptSeq), max(n.compared, n.ckptSeq), max(n.replayed, n.ckptSeq)
		k := 0
		for k < len(n.log) && seqOf(n.log[k]) <= n.acked {
			k++
		}
		n.log = append(n.log[:0], n.log[k:]...)
		// Items logged after the checkpoint (none when paused) go now.
		for _, it := range n.log {
			n.send(it)
		}
		n.updateStall()
		n.releaseEligible()
		if n.paused {
			n.paused = false
			n.command(Command{Kind: CmdResume})
		}
	case *wire.GoLive, *wire.Fence:
		// Same epoch from another node: it cannot have won our epoch.
	}
	return nil
}

func seqOf(m wire.Msg) uint64 {
	switch m := m.(type) {
	case *wire.Entry:
		return m.Seq
	case *wire.Output:
		return m.Seq
	}
	return 0
}

// beginSync pauses the VM and asks for a checkpoint for the secondary: a
// full one for a joiner, an incremental one to repair a divergence. Outputs
// held from now on wait for the secondary's restore confirmation.
func (n *Node) beginSync(full bool) {
	n.ckptOut, n.ckptBase = nil, 0
	n.syncPaused(full)
}

// syncPaused pauses the VM and asks for the checkpoint that brings the
// secondary in step: one standing alone, or (ckptBase set) the last part
// of a pre-copy chain, an increment over the live parts.
func (n *Node) syncPaused(full bool) {
	n.pphase = pSyncing
	n.ckptID++
	n.ckptSeq = n.lastSeq
	n.ckptFull = full
	n.ckptTaking, n.ckptLive = true, false
	n.ticksRetry, n.ckptRetryTicks = 0, n.cfg.RetransmitTicks
	if !n.paused && !n.cfg.Bugs.ResyncWithoutPause {
		n.paused = true
		n.command(Command{Kind: CmdPause})
	}
	n.command(Command{Kind: CmdTakeCheckpoint, Checkpoint: Checkpoint{ID: n.ckptID, Seq: n.ckptSeq, Full: full && n.ckptBase == 0, Chain: n.ckptBase != 0}})
}

// beginPrecopy starts bringing a joiner up while the VM runs: a live full
// copy first. The primary stays alone meanwhile (outputs released at once,
// no log kept: the paused part at the end covers everything before it).
func (n *Node) beginPrecopy() {
	n.pphase = pPrecopy
	n.ckptID++
	n.ckptBase = n.ckptID
	n.precopyRound = 1
	n.ckptFull = true
	n.ckptTaking, n.ckptLive = true, true
	n.ckptOut = nil
	n.ticksRetry, n.ckptRetryTicks = 0, n.cfg.RetransmitTicks
	n.command(Command{Kind: CmdTakeCheckpoint, Checkpoint: Checkpoint{ID: n.ckptID, Seq: n.lastSeq, Full: true, Live: true}})
}

// CheckpointTaken hands the node the VMM's checkpoint for CmdTakeCheckpoint
// id; the node ships it to the secondary in chunks.
func (n *Node) CheckpointTaken(id uint64, data []byte) error {
	if n.role != RolePrimary {
		return n.roleErr("CheckpointTaken")
	}
	if n.pphase != pSyncing && n.pphase != pPrecopy || id != n.ckptID || !n.ckptTaking {
		return nil // superseded by a newer sync or by going alone
	}
	n.ckptTaking = false
	if n.pphase == pPrecopy {
		return n.abandonOnError(n.shipPart(id, data))
	}
	// The vCPU may have run exits between the Step that asked for the
	// checkpoint and the pause taking effect; the checkpoint shows the VM
	// as of now, so its log position is now.
	n.ckptSeq = n.lastSeq
	return n.abandonOnError(n.ship(id, data, &wire.CheckpointDone{Full: n.ckptFull, Base: n.ckptBase}))
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
	if n.pphase != pSyncing && n.pphase != pPrecopy || id != n.ckptID || !n.ckptTaking {
		return nil // superseded
	}
	n.ckptTaking = false
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
	n.joinBackoffTicks = n.cfg.SyncTimeoutTicks
	if n.pphase == pPrecopy {
		n.goAlone()
	} else {
		n.ckptOut, n.ckptBase = nil, 0
		n.pphase = pAcquiring
		n.hadPeer = true
		n.acquire(n.epoch + 1)
	}
	return fmt.Errorf("%w: %w", ErrSyncAbandoned, err)
}

// shipPart ships a live pre-copy part and asks for the next: another live
// increment while rounds remain and the last one was large, else the
// paused increment that ends the chain.
func (n *Node) shipPart(id uint64, data []byte) error {
	if err := n.ship(id, data, &wire.CheckpointDone{Full: id == n.ckptBase, Part: true}); err != nil {
		return err
	}
	if n.precopyRound < n.cfg.PrecopyRounds && len(data) >= n.cfg.PrecopyDoneBytes {
		n.precopyRound++
		n.ckptID++
		n.ckptTaking, n.ckptLive = true, true
		n.command(Command{Kind: CmdTakeCheckpoint, Checkpoint: Checkpoint{ID: n.ckptID, Seq: n.lastSeq, Live: true, Chain: true}})
		return nil
	}
	n.syncPaused(true)
	return nil
}

// ship chunks one checkpoint (the node's header, then the VMM's data),
// closed by done, and sends what the window allows; the rest goes as the
// secondary acknowledges (stepCheckpointAck).
func (n *Node) ship(id uint64, data []byte, done *wire.CheckpointDone) error {
	seq := n.lastSeq
	payload := n.checkpointHeader()
	payload = append(payload, data...)
	if len(payload) > n.cfg.MaxCheckpointBytes {
		return fmt.Errorf("lockstep: checkpoint of %d bytes exceeds MaxCheckpointBytes %d: raise the bound on both hosts (ftvm sizes it from --mem, --disk-size and --precopy-rounds: give both hosts the same)", len(payload), n.cfg.MaxCheckpointBytes)
	}
	done.ID, done.Seq, done.Total, done.Digest = id, seq, uint64(len(payload)), digest(payload)
	n.ckptOut = append(n.ckptOut, &outCkpt{id: id, seq: seq, payload: payload, done: done})
	n.pumpCheckpoint()
	return nil
}

// checkpointHeader is the node's part of a checkpoint: the outputs held at
// the checkpoint, which the secondary must be able to release if it takes
// over (the primary will release them once the restore is confirmed).
//
//	u64 released-through, u32 count, count × (u64 seq, u16 device, u32 len, data)
func (n *Node) checkpointHeader() []byte {
	b := binary.LittleEndian.AppendUint64(nil, n.releasedThrough())
	b = binary.LittleEndian.AppendUint32(b, uint32(len(n.held)))
	for _, h := range n.held {
		b = binary.LittleEndian.AppendUint64(b, h.seq)
		b = binary.LittleEndian.AppendUint16(b, h.device)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(h.data)))
		b = append(b, h.data...)
	}
	return b
}

var errCheckpointHeader = errors.New("lockstep: checkpoint node section malformed")

func parseCheckpointHeader(b []byte, maxOutputs int) (released uint64, outs []held, rest []byte, err error) {
	if len(b) < 12 {
		return 0, nil, nil, errCheckpointHeader
	}
	released = binary.LittleEndian.Uint64(b)
	count := binary.LittleEndian.Uint32(b[8:])
	b = b[12:]
	if uint64(count) > uint64(maxOutputs) {
		return 0, nil, nil, fmt.Errorf("%w: %d held outputs, bound %d", errCheckpointHeader, count, maxOutputs)
	}
	for range count {
		if len(b) < 14 {
			return 0, nil, nil, errCheckpointHeader
		}
		h := held{seq: binary.LittleEndian.Uint64(b), device: binary.LittleEndian.Uint16(b[8:])}
		l := binary.LittleEndian.Uint32(b[10:])
		b = b[14:]
		if uint64(l) > uint64(len(b)) || l > wire.MaxOutputDataBytes {
			return 0, nil, nil, errCheckpointHeader
		}
		h.data = clone(b[:l])
		b = b[l:]
		outs = append(outs, h)
	}
	return released, outs, b, nil
}
