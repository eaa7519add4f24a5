package lockstep

import (
	"fmt"
	"maps"
	"slices"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// outCkpt is one checkpoint a primary ships to its secondary: the payload,
// how much of it was sent and how much the secondary acknowledged
// (wire.CheckpointAck). The payload stays until the chain is restored, so
// that a secondary that lost a part can have it again.
type outCkpt struct {
	id, seq  uint64
	payload  []byte
	done     *wire.CheckpointDone
	acked    uint64 // the secondary holds [0, acked)
	sent     uint64 // chunks were sent up to here
	doneSent bool
	kept     bool // the secondary has it whole: nothing more to send
	dupAcks  int  // acks repeating acked while later chunks were sent
	// recover is sent when a chunk was resent (0: none): until acked
	// reaches it, each ack that advances shows the next chunk lost too,
	// which is resent at once (as TCP NewReno does).
	recover uint64
}

// resend sends o's chunk at acked again, for a loss.
func (n *Node) resend(o *outCkpt) {
	if o.acked < o.size() {
		n.sendChunk(o, o.acked)
		o.recover = max(o.recover, o.sent)
	}
}

func (o *outCkpt) size() uint64 { return uint64(len(o.payload)) }

// ckptInflight is what was sent and not acknowledged, over the chain.
func (n *Node) ckptInflight() int {
	f := 0
	for _, o := range n.ckptOut {
		if !o.kept {
			f += int(o.sent - o.acked)
		}
	}
	return f
}

// sendChunk sends the chunk of o at off and returns its length.
func (n *Node) sendChunk(o *outCkpt, off uint64) uint64 {
	end := min(off+uint64(n.cfg.CheckpointChunkBytes), o.size())
	n.send(&wire.CheckpointChunk{ID: o.id, Seq: o.seq, Offset: off, Data: o.payload[off:end]})
	return end - off
}

// pumpCheckpoint sends what the window allows, in order: the chain's
// parts one after the other, each closed by its CheckpointDone.
func (n *Node) pumpCheckpoint() {
	inflight := n.ckptInflight()
	for _, o := range n.ckptOut {
		if o.kept {
			continue
		}
		for o.sent < o.size() {
			l := min(uint64(n.cfg.CheckpointChunkBytes), o.size()-o.sent)
			if inflight > 0 && inflight+int(l) > n.cfg.CheckpointWindowBytes {
				return
			}
			n.sendChunk(o, o.sent)
			o.sent += l
			inflight += int(l)
		}
		if !o.doneSent {
			o.doneSent = true
			n.send(o.done)
		}
	}
}

// retransmitCheckpoint runs when RetransmitTicks (doubled while no ack
// comes) passed without progress: it resends what the secondary may have
// lost at the head of each part, not the whole chain.
func (n *Node) retransmitCheckpoint() {
	if n.cfg.Bugs.ResendWholeCheckpoint {
		for _, o := range n.ckptOut {
			for off := uint64(0); off < o.size(); off += n.sendChunk(o, off) {
			}
			n.send(o.done)
		}
		return
	}
	n.ckptRetryTicks = min(2*n.ckptRetryTicks, 8*n.cfg.RetransmitTicks)
	all := true
	for _, o := range n.ckptOut {
		switch {
		case o.kept:
			continue
		case o.acked < o.sent:
			n.resend(o)
		case o.doneSent:
			n.send(o.done)
		}
		all = false
	}
	if all && n.pphase == pSyncing && len(n.ckptOut) > 0 && !n.ckptTaking {
		// Everything is kept: the secondary is restoring, or its
		// confirmation was lost. Its answer to the done is a new one.
		n.send(n.ckptOut[len(n.ckptOut)-1].done)
	}
}

// stepCheckpointAck takes the secondary's acknowledgement of a checkpoint.
func (n *Node) stepCheckpointAck(m *wire.CheckpointAck) error {
	var o *outCkpt
	for _, c := range n.ckptOut {
		if c.id == m.ID {
			o = c
		}
	}
	if o == nil {
		return nil // of a chain given up
	}
	if m.Through > o.size() {
		return fmt.Errorf("lockstep: checkpoint ack through byte %d of checkpoint %d, which has %d", m.Through, m.ID, o.size())
	}
	progress := func() {
		n.ticksRetry, n.ckptRetryTicks, o.dupAcks = 0, n.cfg.RetransmitTicks, 0
	}
	switch {
	case m.Kept:
		if !o.kept {
			o.kept, o.acked, o.sent = true, o.size(), o.size()
			progress()
		}
	case m.Missing:
		// The secondary lacks the chunk at Through. Below what it
		// acknowledged before, it lost its copy (it restarted, or gave
		// it up), or this is a late message: either way the chunks from
		// there go again one by one as its acks show them missing, which
		// costs a late message one chunk.
		if m.Through < o.size() {
			o.kept, o.acked = false, m.Through
			o.sent = max(o.sent, o.acked)
			n.resend(o)
		} else if !o.kept {
			n.send(o.done)
		}
	case o.kept || m.Through < o.acked:
		// A late ack.
	case m.Through > o.acked:
		o.acked = m.Through
		o.sent = max(o.sent, o.acked)
		progress()
		if o.acked < o.recover {
			n.resend(o) // a partial ack: the next chunk was lost too
		} else {
			o.recover = 0
		}
	case o.acked < o.sent:
		// Later chunks arrive and this one is still missing.
		o.dupAcks++
		if o.dupAcks == 3 {
			n.resend(o)
		}
	}
	n.pumpCheckpoint()
	return nil
}

// ackCheckpoint queues a secondary's acknowledgement of a checkpoint; one
// for the same checkpoint replaces it, so a burst of chunks costs one ack
// per Ready.
func (n *Node) ackCheckpoint(m *wire.CheckpointAck) {
	if p := n.ckptAck; p != nil && p.ID != m.ID {
		n.send(p)
	}
	n.ckptAck = m
}

func (n *Node) flushCheckpointAck() {
	if n.ckptAck != nil {
		n.send(n.ckptAck)
		n.ckptAck = nil
	}
}

// keptCheckpoint reports whether checkpoint id is here whole: restored,
// kept as a pre-copy part, or the chain's end waiting for its parts.
func (n *Node) keptCheckpoint(id uint64) bool {
	if id == n.restoredID && n.restoredID != 0 {
		return true
	}
	if _, ok := n.parts[id]; ok {
		return true
	}
	return n.chainEnd != nil && n.chainEnd.id == id
}

// wantCheckpoints tells the primary, now and then, what a secondary knows
// it lacks: chunks of a checkpoint whose done came, and parts of the chain
// whose end came. Bounded by maxAssemblies and PrecopyRounds.
func (n *Node) wantCheckpoints() {
	// A gap, or bytes missing when the done came, may only be frames still
	// on their way: it counts once it outlasted a whole period.
	for _, id := range slices.Sorted(maps.Keys(n.asms)) {
		a := n.asms[id]
		if !(a.done && a.bytes < a.total || a.bytes > a.through) {
			a.gapSeen = false
			continue
		}
		if a.gapSeen && a.gapThrough == a.through {
			n.send(&wire.CheckpointAck{ID: a.id, Through: a.through, Missing: true})
		}
		a.gapSeen, a.gapThrough = true, a.through
	}
	if e := n.chainEnd; e != nil {
		if e.waited++; e.waited < 2 {
			return
		}
		for id := e.base; id < e.id; id++ {
			if _, ok := n.parts[id]; ok {
				continue
			}
			if a := n.asms[id]; a != nil && a.done {
				continue // asked for above
			} else if a != nil {
				n.send(&wire.CheckpointAck{ID: id, Through: a.through, Missing: true})
			} else {
				n.send(&wire.CheckpointAck{ID: id, Missing: true})
			}
		}
	}
}
