package lockstep

import (
	"fmt"

	"github.com/ftvm/ftvm/lockstep/wire"
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
	if n.sphase != sReplaying || len(n.pending) > 0 || len(n.rlog) == 0 {
		return nil, NotYet
	}
	e, ok := n.rlog[0].(*wire.Entry)
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
	if n.role != RoleSecondary || n.sphase != sReplaying {
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
	if n.sphase != sReplaying || len(n.pending) >= n.cfg.MaxPendingOutputs {
		return 0, NotYet
	}
	n.nextID++
	n.pending = append(n.pending, held{id: n.nextID, seq: exitIndex, device: device, data: clone(data)})
	n.comparePending()
	if n.sphase == sDiverged {
		return n.nextID, Diverged
	}
	return n.nextID, OK
}

// comparePending compares the VM's outputs with the records that have
// arrived, in order. pending[i].seq holds the exit index until matched.
//
// On a match the copy is dropped only once the primary reports it released
// (Heartbeat.ReleasedThrough): until then it is the one proof this node has
// of an output the world may have seen, and it must repeat it if it goes
// live.
func (n *Node) comparePending() {
	for len(n.pending) > 0 && len(n.rlog) > 0 && n.sphase == sReplaying {
		p := n.pending[0]
		rec, ok := n.rlog[0].(*wire.Output)
		if !ok || rec.ExitIndex != p.seq || rec.Device != p.device || rec.Length != uint32(len(p.data)) || rec.Digest != digest(p.data) {
			n.diverge(wire.ResyncOutputMismatch)
			return
		}
		n.pending = n.pending[1:]
		n.consume()
		n.sCompared = rec.Seq
		n.ackDue = true
		p.seq = rec.Seq
		if rec.Seq > n.primaryReleased {
			n.copies = append(n.copies, p)
		} else {
			n.retire(p)
		}
	}
}

// retire lets go of a copy the primary has released: a persistent one is
// applied to this host's own state, any other dropped.
func (n *Node) retire(c held) {
	if n.cfg.Persistent != nil && n.cfg.Persistent(c.device) {
		n.command(Command{Kind: CmdPersist, Output: Output{ID: c.id, Seq: c.seq, Device: c.device, Data: c.data, Epoch: n.epoch, Fence: n.fence, Carried: c.carried}})
		return
	}
	n.rd.Drop = append(n.rd.Drop, c.id)
}

func (n *Node) consume() {
	n.rlog[0] = nil
	n.rlog = n.rlog[1:]
	n.cursor++
	// Tell the primary now and then how far replay got, for its window.
	if n.cursor%uint64(max(1, n.cfg.LogWindowEntries/4)) == 0 {
		n.ackDue = true
	}
}

// diverge stops replay and asks for a checkpoint. Outputs the VM produced
// stay pending: if this node must go live before the checkpoint arrives,
// they are part of its execution and are released then.
func (n *Node) diverge(reason wire.ResyncReason) {
	n.sphase = sDiverged
	n.divergences++
	n.ticksRetry = 0
	n.send(&wire.ResyncRequest{Reason: reason, AtSeq: n.cursor})
	n.maybeGoLive()
}

func (n *Node) flushAck() {
	if !n.ackDue || n.role != RoleSecondary || (n.sphase != sReplaying && n.sphase != sDiverged) {
		n.ackDue = false
		return
	}
	n.ackDue = false
	recv := n.received
	if n.cfg.Bugs.AckBeforeAppend {
		recv = max(recv, n.ackSeen)
	}
	n.send(&wire.Ack{Received: recv, Compared: n.sCompared, Replayed: n.cursor - 1})
}

func (n *Node) tickSecondary() {
	switch n.sphase {
	case sJoining:
		if n.ticksRetry >= n.cfg.RetransmitTicks {
			n.ticksRetry = 0
			n.send(n.hello())
			n.wantCheckpoints()
		}
		return
	case sRestoring:
		return
	}
	if n.role == RoleSecondary && n.ticksSincePeer >= n.cfg.PeerTimeoutTicks {
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
	if n.sphase == sDiverged && n.ticksRetry >= n.cfg.RetransmitTicks {
		n.ticksRetry = 0
		n.send(&wire.ResyncRequest{Reason: wire.ResyncOutputMismatch, AtSeq: n.cursor})
		n.wantCheckpoints()
	}
	if n.ticksSinceSend >= n.cfg.HeartbeatTicks {
		n.ackDue = true // our ack is our heartbeat
	}
}

func (n *Node) stepSecondary(m wire.Msg) error {
	h := m.Head()
	if h.Epoch > n.epoch {
		if n.sphase != sJoining || n.role == RoleCandidate {
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
	n.ticksSincePeer = 0
	switch m := m.(type) {
	case *wire.Entry:
		n.appendItem(m, m.Seq)
	case *wire.Output:
		n.appendItem(m, m.Seq)
	case *wire.Heartbeat:
		if m.ReleasedThrough > n.primaryReleased {
			n.primaryReleased = m.ReleasedThrough
			k := 0
			for k < len(n.copies) && n.copies[k].seq <= n.primaryReleased {
				n.retire(n.copies[k])
				k++
			}
			n.copies = append(n.copies[:0], n.copies[k:]...)
		}
		if m.LastSeq > n.received {
			n.ackDue = true
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
	for _, c := range n.copies {
		n.rd.Drop = append(n.rd.Drop, c.id)
	}
	for _, p := range n.pending {
		n.rd.Drop = append(n.rd.Drop, p.id)
	}
	n.role = RoleSecondary
	n.sphase = sJoining
	n.acquireEpoch = 0
	n.rlog, n.pending, n.copies, n.ooo = nil, nil, nil, nil
	n.asms = nil
	n.dropChain()
	n.ticksRetry = 0
	n.send(n.hello())
}

func (n *Node) appendItem(m wire.Msg, seq uint64) {
	if n.sphase != sReplaying && n.sphase != sDiverged {
		return
	}
	n.ackSeen = max(n.ackSeen, seq)
	n.ackDue = true
	// Items past the window are dropped (the primary resends from our
	// cumulative ack); items ahead of a gap wait in a bounded reorder
	// buffer. The log itself only ever grows in order, which is what makes
	// a cumulative ack true.
	limit := n.cursor - 1 + 2*uint64(n.cfg.LogWindowEntries)
	if seq <= n.received || seq > limit {
		return
	}
	if seq > n.received+1 {
		if _, ok := n.ooo[seq]; !ok {
			if n.ooo == nil {
				n.ooo = map[uint64]wire.Msg{}
			}
			n.ooo[seq] = ownCopy(m)
		}
		return
	}
	n.rlog = append(n.rlog, ownCopy(m))
	n.received = seq
	for {
		next, ok := n.ooo[n.received+1]
		if !ok {
			break
		}
		delete(n.ooo, n.received+1)
		n.rlog = append(n.rlog, next)
		n.received++
	}
	n.comparePending()
}

// ownCopy copies a parsed item: parsed messages alias the receive buffer.
func ownCopy(m wire.Msg) wire.Msg {
	switch m := m.(type) {
	case *wire.Entry:
		c := *m
		c.Data = clone(m.Data)
		return &c
	case *wire.Output:
		c := *m
		c.Data = clone(m.Data)
		return &c
	}
	return m
}

// maxAssemblies bounds the checkpoints a secondary assembles at once: the
// parts of one pre-copy chain arrive interleaved when they are sent again.
const maxAssemblies = 8

// assemble returns the assembly of checkpoint id, starting one if its
// frames are wanted now, or nil. A checkpoint already restored or kept as
// a pre-copy part is not wanted; nor is one older than the newest begun,
// unless it belongs to the chain under way (a part sent again).
func (n *Node) assemble(id uint64) *assembly {
	if id == n.restoredID && n.restoredID != 0 {
		return nil
	}
	if _, kept := n.parts[id]; kept {
		return nil
	}
	if n.chainEnd != nil && id == n.chainEnd.id {
		return nil
	}
	if a := n.asms[id]; a != nil {
		return a
	}
	// Within PrecopyRounds of the newest, an older one may be a part of
	// the same chain whose done has not come yet.
	rounds := uint64(n.cfg.PrecopyRounds)
	stale := func(k uint64) bool {
		inChain := n.chainLow != 0 && k >= n.chainLow && k-n.chainLow <= rounds
		return k < n.asmHigh && !inChain && k+rounds < n.asmHigh
	}
	if stale(id) {
		return nil // a late copy of an older checkpoint
	}
	n.asmHigh = max(n.asmHigh, id)
	for k := range n.asms {
		if stale(k) {
			n.dropAssembly(k)
		}
	}
	if len(n.asms) >= maxAssemblies {
		var oldest uint64
		for k := range n.asms {
			if oldest == 0 || k < oldest {
				oldest = k
			}
		}
		n.dropAssembly(oldest)
	}
	if n.asms == nil {
		n.asms = map[uint64]*assembly{}
	}
	a := &assembly{id: id, chunks: map[uint64][]byte{}}
	n.asms[id] = a
	return a
}

func (n *Node) dropAssembliesBelow(id uint64) {
	for k := range n.asms {
		if k < id {
			n.dropAssembly(k)
		}
	}
}

func (n *Node) dropAssembly(id uint64) {
	if a := n.asms[id]; a != nil {
		n.asmBytes -= int(a.bytes)
		delete(n.asms, id)
	}
}

func (n *Node) stepChunk(m *wire.CheckpointChunk) error {
	if n.sphase != sJoining && n.sphase != sDiverged {
		return nil
	}
	a := n.assemble(m.ID)
	if a == nil {
		if n.keptCheckpoint(m.ID) {
			// Our acknowledgement was lost.
			n.ackCheckpoint(&wire.CheckpointAck{ID: m.ID, Kept: true})
		}
		return nil
	}
	if _, dup := a.chunks[m.Offset]; dup || len(m.Data) == 0 && m.Offset != 0 {
		n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Through: a.through})
		return nil
	}
	// Both hosts chunk with the same CheckpointChunkBytes, so more chunks
	// than this is a peer filling our memory with slivers.
	if maxChunks := n.cfg.MaxCheckpointBytes/n.cfg.CheckpointChunkBytes + 1; len(a.chunks) >= maxChunks {
		n.dropAssembly(a.id)
		return fmt.Errorf("lockstep: checkpoint %d arrives in more than %d chunks: set the same CheckpointChunkBytes on both hosts", m.ID, maxChunks)
	}
	// What is being assembled and what is kept of a chain share one bound.
	if n.asmBytes+n.partsBytes+len(m.Data) > n.cfg.MaxCheckpointBytes {
		n.dropAssembly(a.id)
		return fmt.Errorf("lockstep: checkpoint %d exceeds MaxCheckpointBytes %d with what else is being assembled: raise the bound on both hosts (ftvm sizes it from --mem, --disk-size and --precopy-rounds: give both hosts the same)", m.ID, n.cfg.MaxCheckpointBytes)
	}
	a.chunks[m.Offset] = clone(m.Data)
	a.bytes += uint64(len(m.Data))
	n.asmBytes += len(m.Data)
	a.seq = m.Seq
	for c, ok := a.chunks[a.through]; ok && len(c) > 0; c, ok = a.chunks[a.through] {
		a.through += uint64(len(c))
	}
	n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Through: a.through})
	return n.tryRestore(a)
}

func (n *Node) stepDone(m *wire.CheckpointDone) error {
	if m.Restored {
		return nil
	}
	if m.ID == n.restoredID && n.restoredID != 0 {
		if n.sphase == sReplaying || n.sphase == sDiverged {
			// Our confirmation was lost: say it again.
			n.send(&wire.CheckpointDone{ID: m.ID, Seq: n.restoredSeq, Restored: true})
		}
		return nil
	}
	if n.sphase != sJoining && n.sphase != sDiverged {
		return nil
	}
	if n.keptCheckpoint(m.ID) {
		n.ackCheckpoint(&wire.CheckpointAck{ID: m.ID, Kept: true})
		return nil
	}
	// A chain's first part is full; a part after it, or its end, is an
	// increment over the parts before: both are what a joiner wants.
	if n.sphase == sJoining && !m.Full && !m.Part && m.Base == 0 {
		return nil // an incremental checkpoint needs a base we do not have
	}
	// A chain is its base, at most PrecopyRounds-1 live parts after it and
	// the paused end: IDs base..base+PrecopyRounds. Anything else from the
	// peer would have us keep (or wait for) parts without a bound.
	if m.Base != 0 && m.ID-m.Base > uint64(n.cfg.PrecopyRounds) {
		return fmt.Errorf("lockstep: checkpoint %d ends a pre-copy chain from %d, more than PrecopyRounds %d parts: set the same --precopy-rounds on both hosts", m.ID, m.Base, n.cfg.PrecopyRounds)
	}
	if m.Part {
		low := n.chainLow
		if m.Full {
			low = m.ID
		}
		if n.cfg.PrecopyRounds == 0 {
			return fmt.Errorf("lockstep: the primary sends pre-copy part %d, this host has PrecopyRounds 0: set the same --precopy-rounds on both hosts", m.ID)
		}
		if low != 0 && (m.ID < low || m.ID-low >= uint64(n.cfg.PrecopyRounds)) {
			return nil // of another chain than the one under way
		}
	}
	switch {
	case m.Part && m.Full && m.ID > n.chainLow:
		// The first part of a new chain: what is kept of an older one is
		// of no use now, nor what is being assembled of it. Its own later
		// parts may have come first.
		n.dropChainBelow(m.ID)
		n.chainLow = m.ID
		n.dropAssembliesBelow(m.ID)
	case m.Base != 0 && (n.chainLow == 0 || m.Base < n.chainLow):
		n.chainLow = m.Base
		n.dropAssembliesBelow(m.Base)
	}
	a := n.assemble(m.ID)
	if a == nil {
		return nil
	}
	a.done, a.total, a.digest, a.full, a.seq = true, m.Total, m.Digest, m.Full, m.Seq
	a.part, a.base = m.Part, m.Base
	return n.tryRestore(a)
}

// dropChainBelow forgets the pre-copy parts kept of chains older than id.
func (n *Node) dropChainBelow(id uint64) {
	for k, p := range n.parts {
		if k < id {
			n.partsBytes -= len(p)
			delete(n.parts, k)
		}
	}
	if n.chainEnd != nil && n.chainEnd.base < id {
		n.chainEnd = nil
	}
}

// dropChain forgets the pre-copy parts kept so far.
func (n *Node) dropChain() {
	n.parts, n.partsBytes, n.chainLow, n.chainEnd = nil, 0, 0, nil
}

func (n *Node) tryRestore(a *assembly) error {
	if !a.done || a.bytes != a.total {
		return nil
	}
	// Whatever comes of it, this assembly is over.
	n.dropAssembly(a.id)
	buf := make([]byte, 0, a.total)
	for uint64(len(buf)) < a.total {
		c, ok := a.chunks[uint64(len(buf))]
		if !ok || len(c) == 0 {
			n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Missing: true})
			return fmt.Errorf("lockstep: checkpoint %d has overlapping or missing chunks; waiting for a retransmission", a.id)
		}
		buf = append(buf, c...)
	}
	if uint64(len(buf)) != a.total || digest(buf) != a.digest {
		n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Missing: true})
		return fmt.Errorf("lockstep: checkpoint %d digest mismatch; waiting for a retransmission", a.id)
	}
	released, outs, rest, err := parseCheckpointHeader(buf, 2*n.cfg.LogWindowEntries)
	if err != nil {
		return err
	}
	n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Through: a.total, Kept: true})
	if a.part && !(n.cfg.Bugs != nil && n.cfg.Bugs.PrecopySkipFinal) {
		// A copy of the running VM: keep it for the chain's end, which
		// repairs it.
		if n.partsBytes+len(rest) > n.cfg.MaxCheckpointBytes {
			n.dropChain()
			return fmt.Errorf("lockstep: pre-copy parts exceed MaxCheckpointBytes %d: raise the bound on both hosts (ftvm sizes it from --mem, --disk-size and --precopy-rounds: give both hosts the same)", n.cfg.MaxCheckpointBytes)
		}
		if len(n.parts) >= n.cfg.PrecopyRounds {
			n.dropChain()
			return fmt.Errorf("lockstep: more than PrecopyRounds %d pre-copy parts kept: set the same --precopy-rounds on both hosts", n.cfg.PrecopyRounds)
		}
		if n.parts == nil {
			n.parts = map[uint64][]byte{}
		}
		n.parts[a.id] = rest
		n.partsBytes += len(rest)
		if e := n.chainEnd; e != nil {
			return n.restoreChain(e)
		}
		return nil
	}
	if a.base != 0 {
		e := &chainEnd{id: a.id, seq: a.seq, base: a.base, released: released, outs: outs, data: rest}
		return n.restoreChain(e)
	}
	n.restore(a.id, a.seq, a.full, released, outs, rest, nil)
	return nil
}

// restoreChain restores a pre-copy chain once every part of it is here;
// until then its end waits.
func (n *Node) restoreChain(e *chainEnd) error {
	parts := make([][]byte, 0, e.id-e.base)
	for id := e.base; id < e.id; id++ {
		p, ok := n.parts[id]
		if !ok {
			n.chainEnd = e
			return nil // waiting for a retransmission of part id
		}
		parts = append(parts, p)
	}
	n.dropChain()
	n.restore(e.id, e.seq, true, e.released, e.outs, e.data, parts)
	return nil
}

// restore asks the VMM to load a checkpoint (after parts, the pre-copy
// parts of its chain) and takes on the outputs the primary held at it.
func (n *Node) restore(id, seq uint64, full bool, released uint64, outs []held, data []byte, parts [][]byte) {
	// The checkpoint replaces everything this VM made: its unmatched
	// outputs are of an execution nobody follows, and its copies are in
	// the checkpoint (released ones in the state, held ones below).
	for _, p := range n.pending {
		if n.cfg.Bugs != nil && n.cfg.Bugs.PersistUnmatched {
			n.retire(p)
			continue
		}
		n.rd.Drop = append(n.rd.Drop, p.id)
	}
	for _, c := range n.copies {
		n.rd.Drop = append(n.rd.Drop, c.id)
	}
	n.pending, n.copies = nil, nil
	n.primaryReleased = released
	for _, o := range outs {
		n.nextID++
		o.id = n.nextID
		o.carried = true
		n.copies = append(n.copies, o)
	}
	n.sphase = sRestoring
	n.dropChain() // parts of a chain this checkpoint supersedes
	n.command(Command{Kind: CmdRestoreCheckpoint, Checkpoint: Checkpoint{ID: id, Seq: seq, Full: full, Data: data, Parts: parts}})
	n.restoredID, n.restoredSeq = id, seq
	n.asms, n.asmBytes = nil, 0
}

// CheckpointRestored tells the node the VMM loaded checkpoint id; replay
// continues from the checkpoint's log position.
func (n *Node) CheckpointRestored(id uint64) error {
	if n.role != RoleSecondary && n.role != RoleCandidate {
		return n.roleErr("CheckpointRestored")
	}
	if n.sphase != sRestoring || id != n.restoredID {
		return fmt.Errorf("lockstep: CheckpointRestored(%d) but the node awaits %d", id, n.restoredID)
	}
	n.sphase = sReplaying
	n.received, n.cursor, n.sCompared = n.restoredSeq, n.restoredSeq+1, n.restoredSeq
	n.ackSeen = n.restoredSeq
	n.rlog, n.ooo = nil, nil
	n.ticksSincePeer = 0
	n.send(&wire.CheckpointDone{ID: id, Seq: n.restoredSeq, Restored: true})
	return nil
}

// drained reports whether replay has used all of the log it can: everything
// received, or everything up to a divergence.
func (n *Node) drained() bool {
	return n.sphase == sReplaying && len(n.rlog) == 0 || n.sphase == sDiverged
}

// maybeGoLive makes a granted candidate the primary once it has consumed
// all of the log it will ever use: everything received, or everything up to
// a divergence (the rest came from an execution it no longer follows).
func (n *Node) maybeGoLive() bool {
	if n.role != RoleCandidate || n.grantEpoch == 0 {
		return false
	}
	if !n.drained() && !(n.cfg.Bugs.GoLiveBeforeDrain && n.sphase == sReplaying) {
		return false
	}
	if n.divergedUnsafe() {
		// It diverged while it consumed the rest of its log.
		n.halt(errDivergedReceipt)
		return false
	}
	n.role = RolePrimary
	n.pphase = pAlone
	n.epoch, n.fence = n.grantEpoch, n.grantFence
	n.lastSeq = n.received
	n.rlog = nil
	n.command(Command{Kind: CmdGoLive, Epoch: n.epoch, Fence: n.fence})
	// Outputs the old primary may have released, then outputs it never
	// recorded: this execution is the one the world sees from now on, and
	// a repeat of the last few is the price of not knowing.
	for _, c := range n.copies {
		if c.seq > n.primaryReleased {
			n.rd.Release = append(n.rd.Release, Output{ID: c.id, Seq: c.seq, Device: c.device, Data: c.data, Epoch: n.epoch, Fence: n.fence, Carried: c.carried})
		}
	}
	for _, p := range n.pending {
		n.lastSeq++
		n.rd.Release = append(n.rd.Release, Output{ID: p.id, Seq: n.lastSeq, Device: p.device, Data: p.data, Epoch: n.epoch, Fence: n.fence})
	}
	n.copies, n.pending = nil, nil
	n.send(&wire.GoLive{LastSeq: n.lastSeq})
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
	return n.cfg.Mode == AckOnReceipt && n.sphase == sDiverged && !n.cfg.Bugs.GoLiveDiverged
}
