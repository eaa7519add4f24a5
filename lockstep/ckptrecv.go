package lockstep

import (
	"fmt"
	"maps"
	"slices"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// incomingCheckpoints is a secondary's side of a checkpoint: the ones
// being assembled from chunks, the pre-copy parts of a chain kept until
// its end comes, and the last one restored.
type incomingCheckpoints struct {
	assemblies    map[uint64]*assembly // checkpoints being assembled, by ID
	assemblyBytes int                  // bytes in assemblies
	newestBegun   uint64               // newest checkpoint ID begun
	parts         map[uint64][]byte    // completed pre-copy parts, by ID (VMM data)
	partsBytes    int                  // bytes in parts
	chainLow      uint64               // lowest ID of the chain being assembled (0: none known)
	chainEnd      *chainEnd            // its end, when it came before a part
	// loaded is the last part of the chain from chainLow handed to the
	// VMM (CmdLoadPart; 0: none): parts chainLow..loaded went in order.
	loaded      uint64
	pendingAck  *wire.CheckpointAck // checkpoint acknowledgement to send (coalesced)
	restoredID  uint64              // the last checkpoint restored (or being restored)
	restoredSeq uint64              // its log position
	// restoredFull: that checkpoint stands on no state of this VM (a
	// full one, or a chain from a full part), so a failure to restore it
	// would not go away with another full one.
	restoredFull bool
	// restoreFailures counts the increments the VMM could not restore
	// (CheckpointRestoreFailed), each answered by a full checkpoint.
	restoreFailures uint64
}

// assembly is one checkpoint being put together from its chunks.
type assembly struct {
	id      uint64
	seq     uint64
	total   uint64
	done    bool
	full    bool
	part    bool   // a pre-copy part: kept, not restored on its own
	base    uint64 // the chain's first part, for the checkpoint that ends it
	digest  [wire.DigestBytes]byte
	chunks  map[uint64][]byte
	bytes   uint64
	through uint64 // bytes [0, through) are here, for CheckpointAck
	// gapSeen: at the last wantCheckpoints bytes were missing, and
	// through was gapThrough.
	gapSeen    bool
	gapThrough uint64
}

// chainEnd is the last checkpoint of a pre-copy chain, assembled, waiting
// for a part of the chain that has not arrived whole yet.
type chainEnd struct {
	id, seq, base uint64
	released      uint64
	outs          []held
	data          []byte
	waited        int // wantCheckpoints periods it waited for its parts
}

// bytes is the checkpoint data held: assemblies, parts and a chain's end.
func (c *incomingCheckpoints) bytes() int {
	b := c.assemblyBytes + c.partsBytes
	if c.chainEnd != nil {
		b += len(c.chainEnd.data)
	}
	return b
}

// maxAssemblies bounds the checkpoints a secondary assembles at once: the
// parts of one pre-copy chain arrive interleaved when they are sent again.
const maxAssemblies = 8

// assemble returns the assembly of checkpoint id, starting one if its
// frames are wanted now, or nil. A checkpoint already restored or kept as
// a pre-copy part is not wanted; nor is one older than the newest begun,
// unless it belongs to the chain under way (a part sent again).
func (n *Node) assemble(id uint64) *assembly {
	if id == n.incoming.restoredID && n.incoming.restoredID != 0 {
		return nil
	}
	if _, kept := n.incoming.parts[id]; kept {
		return nil
	}
	if n.incoming.chainEnd != nil && id == n.incoming.chainEnd.id {
		return nil
	}
	if a := n.incoming.assemblies[id]; a != nil {
		return a
	}
	// Within PrecopyRounds of the newest, an older one may be a part of
	// the same chain whose done has not come yet.
	rounds := uint64(n.cfg.PrecopyRounds)
	stale := func(k uint64) bool {
		inChain := n.incoming.chainLow != 0 && k >= n.incoming.chainLow && k-n.incoming.chainLow <= rounds
		return k < n.incoming.newestBegun && !inChain && k+rounds < n.incoming.newestBegun
	}
	if stale(id) {
		return nil // a late copy of an older checkpoint
	}
	n.incoming.newestBegun = max(n.incoming.newestBegun, id)
	for k := range n.incoming.assemblies {
		if stale(k) {
			n.incoming.dropAssembly(k)
		}
	}
	if len(n.incoming.assemblies) >= maxAssemblies {
		var oldest uint64
		for k := range n.incoming.assemblies {
			if oldest == 0 || k < oldest {
				oldest = k
			}
		}
		n.incoming.dropAssembly(oldest)
	}
	if n.incoming.assemblies == nil {
		n.incoming.assemblies = map[uint64]*assembly{}
	}
	a := &assembly{id: id, chunks: map[uint64][]byte{}}
	n.incoming.assemblies[id] = a
	return a
}

func (c *incomingCheckpoints) dropAssembliesBelow(id uint64) {
	for k := range c.assemblies {
		if k < id {
			c.dropAssembly(k)
		}
	}
}

func (c *incomingCheckpoints) dropAssembly(id uint64) {
	if a := c.assemblies[id]; a != nil {
		c.assemblyBytes -= int(a.bytes)
		delete(c.assemblies, id)
	}
}

func (n *Node) stepChunk(m *wire.CheckpointChunk) error {
	if n.replay.phase != sJoining && n.replay.phase != sDiverged {
		return nil
	}
	a := n.assemble(m.ID)
	if a == nil {
		if n.incoming.kept(m.ID) {
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
		n.incoming.dropAssembly(a.id)
		return fmt.Errorf("lockstep: checkpoint %d arrives in more than %d chunks: set the same CheckpointChunkBytes on both hosts", m.ID, maxChunks)
	}
	// What is being assembled and what is kept of a chain share one bound.
	if n.incoming.assemblyBytes+n.incoming.partsBytes+len(m.Data) > n.cfg.MaxCheckpointBytes {
		n.incoming.dropAssembly(a.id)
		return fmt.Errorf("lockstep: checkpoint %d exceeds MaxCheckpointBytes %d with what else is being assembled: raise the bound on both hosts (ftvm sizes it from --mem, --disk-size and --precopy-rounds: give both hosts the same)", m.ID, n.cfg.MaxCheckpointBytes)
	}
	a.chunks[m.Offset] = clone(m.Data)
	a.bytes += uint64(len(m.Data))
	n.incoming.assemblyBytes += len(m.Data)
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
	if m.ID == n.incoming.restoredID && n.incoming.restoredID != 0 {
		if n.replay.phase == sReplaying || n.replay.phase == sDiverged {
			// Our confirmation was lost: say it again.
			n.send(&wire.CheckpointDone{ID: m.ID, Seq: n.incoming.restoredSeq, Restored: true})
		}
		return nil
	}
	if n.replay.phase != sJoining && n.replay.phase != sDiverged {
		return nil
	}
	if n.incoming.kept(m.ID) {
		n.ackCheckpoint(&wire.CheckpointAck{ID: m.ID, Kept: true})
		return nil
	}
	// A chain's first part is full; a part after it, or its end, is an
	// increment over the parts before: both are what a joiner wants.
	if n.replay.phase == sJoining && !m.Full && !m.Part && m.Base == 0 {
		return nil // an incremental checkpoint needs a base we do not have
	}
	// A chain is its base, at most PrecopyRounds-1 live parts after it and
	// the paused end: IDs base..base+PrecopyRounds. Anything else from the
	// peer would have us keep (or wait for) parts without a bound.
	if m.Base != 0 && m.ID-m.Base > uint64(n.cfg.PrecopyRounds) {
		return fmt.Errorf("lockstep: checkpoint %d ends a pre-copy chain from %d, more than PrecopyRounds %d parts: set the same --precopy-rounds on both hosts", m.ID, m.Base, n.cfg.PrecopyRounds)
	}
	if m.Part {
		low := n.incoming.chainLow
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
	case m.Part && m.Full && m.ID > n.incoming.chainLow:
		// The first part of a new chain: what is kept of an older one is
		// of no use now, nor what is being assembled of it. Its own later
		// parts may have come first.
		n.incoming.dropChainBelow(m.ID)
		n.incoming.chainLow = m.ID
		n.incoming.dropAssembliesBelow(m.ID)
	case m.Base != 0 && (n.incoming.chainLow == 0 || m.Base < n.incoming.chainLow):
		n.incoming.chainLow = m.Base
		n.incoming.loaded = 0 // parts loaded were of another chain start
		n.incoming.dropAssembliesBelow(m.Base)
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
func (c *incomingCheckpoints) dropChainBelow(id uint64) {
	for k, p := range c.parts {
		if k < id {
			c.partsBytes -= len(p)
			delete(c.parts, k)
		}
	}
	if c.chainEnd != nil && c.chainEnd.base < id {
		c.chainEnd = nil
	}
	if c.loaded < id {
		c.loaded = 0
	}
}

// dropChain forgets the pre-copy parts kept so far.
func (c *incomingCheckpoints) dropChain() {
	c.parts, c.partsBytes, c.chainLow, c.chainEnd, c.loaded = nil, 0, 0, nil, 0
}

func (n *Node) tryRestore(a *assembly) error {
	if !a.done || a.bytes != a.total {
		return nil
	}
	// Whatever comes of it, this assembly is over.
	n.incoming.dropAssembly(a.id)
	buf := make([]byte, 0, a.total)
	for uint64(len(buf)) < a.total {
		c, ok := a.chunks[uint64(len(buf))]
		if !ok || len(c) == 0 {
			n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Missing: true})
			return fmt.Errorf("lockstep: checkpoint %d has overlapping or missing chunks; waiting for a retransmission", a.id)
		}
		buf = append(buf, c...)
	}
	// The digest covers the node's section and the VMM's data apart
	// (checkpointDigest), so the section is parsed first to find where it
	// ends; parsing is bounded and checks every length.
	released, outs, rest, err := parseCheckpointHeader(buf)
	if err != nil {
		n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Missing: true})
		return fmt.Errorf("lockstep: checkpoint %d: %w (corrupted on the way, or another protocol): waiting for a retransmission", a.id, err)
	}
	if uint64(len(buf)) != a.total || checkpointDigest(buf[:len(buf)-len(rest)], DataDigest(rest)) != a.digest {
		n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Missing: true})
		return fmt.Errorf("lockstep: checkpoint %d digest mismatch; waiting for a retransmission", a.id)
	}
	n.ackCheckpoint(&wire.CheckpointAck{ID: a.id, Through: a.total, Kept: true})
	if a.part && !(n.cfg.Bugs != nil && n.cfg.Bugs.PrecopySkipFinal) {
		// A copy of the running VM: keep it for the chain's end, which
		// repairs it.
		if n.incoming.partsBytes+len(rest) > n.cfg.MaxCheckpointBytes {
			n.incoming.dropChain()
			return fmt.Errorf("lockstep: pre-copy parts exceed MaxCheckpointBytes %d: raise the bound on both hosts (ftvm sizes it from --mem, --disk-size and --precopy-rounds: give both hosts the same)", n.cfg.MaxCheckpointBytes)
		}
		if len(n.incoming.parts) >= n.cfg.PrecopyRounds {
			n.incoming.dropChain()
			return fmt.Errorf("lockstep: more than PrecopyRounds %d pre-copy parts kept: set the same --precopy-rounds on both hosts", n.cfg.PrecopyRounds)
		}
		if n.incoming.parts == nil {
			n.incoming.parts = map[uint64][]byte{}
		}
		n.incoming.parts[a.id] = rest
		n.incoming.partsBytes += len(rest)
		n.loadParts()
		if e := n.incoming.chainEnd; e != nil {
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

// loadParts hands the VMM, in order, the parts of the chain under way
// that are here and follow the last it has (CmdLoadPart), while joining:
// a part loaded now is one fewer to restore while the primary is paused.
// A diverged secondary's VM must stay as it is (it may have to go live
// from it), so its parts wait for the chain's end as they always did.
func (n *Node) loadParts() {
	c := &n.incoming
	if n.replay.phase != sJoining || c.chainLow == 0 {
		return
	}
	next := c.chainLow
	if c.loaded >= c.chainLow {
		next = c.loaded + 1
	}
	for {
		p, ok := c.parts[next]
		if !ok {
			return
		}
		n.command(Command{Kind: CmdLoadPart, Checkpoint: Checkpoint{ID: next, Full: next == c.chainLow, Data: p}})
		c.loaded = next
		next++
	}
}

// restoreChain restores a pre-copy chain once every part of it is here;
// until then its end waits.
func (n *Node) restoreChain(e *chainEnd) error {
	parts := make([][]byte, 0, e.id-e.base)
	for id := e.base; id < e.id; id++ {
		p, ok := n.incoming.parts[id]
		if !ok {
			n.incoming.chainEnd = e
			return nil // waiting for a retransmission of part id
		}
		parts = append(parts, p)
	}
	n.incoming.dropChain()
	n.restore(e.id, e.seq, true, e.released, e.outs, e.data, parts)
	return nil
}

// restore asks the VMM to load a checkpoint (after parts, the pre-copy
// parts of its chain) and takes on the outputs the primary held at it.
func (n *Node) restore(id, seq uint64, full bool, released uint64, outs []held, data []byte, parts [][]byte) {
	// The checkpoint replaces everything this VM made: its unmatched
	// outputs are of an execution nobody follows, and its copies are in
	// the checkpoint (released ones in the state, held ones below).
	for _, p := range n.replay.pending {
		if n.cfg.Bugs != nil && n.cfg.Bugs.PersistUnmatched {
			n.retire(p)
			continue
		}
		n.rd.Drop = append(n.rd.Drop, p.id)
	}
	for _, c := range n.replay.copies {
		n.rd.Drop = append(n.rd.Drop, c.id)
	}
	n.replay.pending, n.replay.copies = nil, nil
	n.replay.primaryReleased = released
	for _, o := range outs {
		n.nextID++
		o.id = n.nextID
		o.carried = true
		n.replay.copies = append(n.replay.copies, o)
	}
	n.replay.phase = sRestoring
	n.incoming.dropChain() // parts of a chain this checkpoint supersedes
	n.command(Command{Kind: CmdRestoreCheckpoint, Checkpoint: Checkpoint{ID: id, Seq: seq, Full: full, Data: data, Parts: parts}})
	n.incoming.restoredID, n.incoming.restoredSeq, n.incoming.restoredFull = id, seq, full
	n.incoming.assemblies, n.incoming.assemblyBytes = nil, 0
}

// ackCheckpoint queues a secondary's acknowledgement of a checkpoint; one
// for the same checkpoint replaces it, so a burst of chunks costs one ack
// per Ready.
func (n *Node) ackCheckpoint(m *wire.CheckpointAck) {
	if p := n.incoming.pendingAck; p != nil && p.ID != m.ID {
		n.send(p)
	}
	n.incoming.pendingAck = m
}

func (n *Node) flushCheckpointAck() {
	if n.incoming.pendingAck != nil {
		n.send(n.incoming.pendingAck)
		n.incoming.pendingAck = nil
	}
}

// keptCheckpoint reports whether checkpoint id is here whole: restored,
// kept as a pre-copy part, or the chain's end waiting for its parts.
func (c *incomingCheckpoints) kept(id uint64) bool {
	if id == c.restoredID && c.restoredID != 0 {
		return true
	}
	if _, ok := c.parts[id]; ok {
		return true
	}
	return c.chainEnd != nil && c.chainEnd.id == id
}

// wantCheckpoints tells the primary, now and then, what a secondary knows
// it lacks: chunks of a checkpoint whose done came, and parts of the chain
// whose end came. Bounded by maxAssemblies and PrecopyRounds.
func (n *Node) wantCheckpoints() {
	// A gap, or bytes missing when the done came, may only be frames still
	// on their way: it counts once it outlasted a whole period.
	for _, id := range slices.Sorted(maps.Keys(n.incoming.assemblies)) {
		a := n.incoming.assemblies[id]
		if !(a.done && a.bytes < a.total || a.bytes > a.through) {
			a.gapSeen = false
			continue
		}
		if a.gapSeen && a.gapThrough == a.through {
			n.send(&wire.CheckpointAck{ID: a.id, Through: a.through, Missing: true})
		}
		a.gapSeen, a.gapThrough = true, a.through
	}
	if e := n.incoming.chainEnd; e != nil {
		if e.waited++; e.waited < 2 {
			return
		}
		for id := e.base; id < e.id; id++ {
			if _, ok := n.incoming.parts[id]; ok {
				continue
			}
			if a := n.incoming.assemblies[id]; a != nil && a.done {
				continue // asked for above
			} else if a != nil {
				n.send(&wire.CheckpointAck{ID: id, Through: a.through, Missing: true})
			} else {
				n.send(&wire.CheckpointAck{ID: id, Missing: true})
			}
		}
	}
}

// CheckpointRestoreFailed tells the node the VMM could not restore
// checkpoint id (CmdRestoreCheckpoint), and left its VM of no use.
//
// An incremental checkpoint (a resync's, over the state the VM held)
// fails when that state is not what the increment needs (the VM changed
// a page the increment lacks, say): the node then joins again as a new
// secondary would (a Hello, with no resync base), so the primary, still
// paused, sends a full checkpoint instead, which goes into a fresh VM.
// Meanwhile the node cannot take over: the VM it had is gone. A full
// checkpoint (or a pre-copy chain) that fails would fail again: the node
// halts (CmdHalt) rather than ask for it for ever, and returns the
// failure. A call for a checkpoint the node no longer awaits does nothing.
func (n *Node) CheckpointRestoreFailed(id uint64, err error) error {
	if n.role != RoleSecondary && n.role != RoleCandidate {
		return n.roleErr("CheckpointRestoreFailed")
	}
	if n.replay.phase != sRestoring || id != n.incoming.restoredID {
		return nil // superseded
	}
	if n.incoming.restoredFull {
		why := fmt.Sprintf("restoring full checkpoint %d from the primary failed (%v); another would fail the same way: "+
			"this host stops protecting the VM (restart it to join again)", id, err)
		n.halt(why)
		return fmt.Errorf("lockstep: %s", why)
	}
	n.incoming.restoreFailures++
	n.rejoin()
	return nil
}

// CheckpointRestored tells the node the VMM loaded checkpoint id; replay
// continues from the checkpoint's log position.
func (n *Node) CheckpointRestored(id uint64) error {
	if n.role != RoleSecondary && n.role != RoleCandidate {
		return n.roleErr("CheckpointRestored")
	}
	if n.replay.phase != sRestoring || id != n.incoming.restoredID {
		return fmt.Errorf("lockstep: CheckpointRestored(%d) but the node awaits %d", id, n.incoming.restoredID)
	}
	n.replay.phase = sReplaying
	n.replay.received, n.replay.cursor, n.replay.compared = n.incoming.restoredSeq, n.incoming.restoredSeq+1, n.incoming.restoredSeq
	n.replay.ackSeen = n.incoming.restoredSeq
	n.replay.log, n.replay.outOfOrder = nil, nil
	n.ticks.sincePeer = 0
	n.send(&wire.CheckpointDone{ID: id, Seq: n.incoming.restoredSeq, Restored: true})
	return nil
}
