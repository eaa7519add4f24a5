package lockstep

import "github.com/ftvm/ftvm/lockstep/wire"

// replayState is a secondary's replay and compare: the log received from
// the primary, in order, with what came ahead of a gap; the VM's outputs
// waiting for their record; and the copies of matched outputs it keeps
// until the primary reports them released.
type replayState struct {
	phase           sPhase              // where the secondary stands (secondary.go)
	log             []wire.Msg          // received items from cursor on
	outOfOrder      map[uint64]wire.Msg // items received ahead of a gap, by seq
	received        uint64              // last contiguous position appended
	cursor          uint64              // next position the VM consumes
	compared        uint64              // last position whose output matched its record
	primaryReleased uint64              // what the primary last reported released (ReleasedThrough)
	pending         []held              // VM outputs whose record has not arrived
	copies          []held              // outputs reproduced; the primary may have released them
	ackDue          bool                // an Ack goes out with the next Ready
	ackSeen         uint64              // AckBeforeAppend bug: highest seq seen
}

// comparePending compares the VM's outputs with the records that have
// arrived, in order. pending[i].seq holds the exit index until matched.
//
// On a match the copy is dropped only once the primary reports it released
// (Heartbeat.ReleasedThrough): until then it is the one proof this node has
// of an output the world may have seen, and it must repeat it if it goes
// live.
func (n *Node) comparePending() {
	for len(n.replay.pending) > 0 && len(n.replay.log) > 0 && n.replay.phase == sReplaying {
		p := n.replay.pending[0]
		rec, ok := n.replay.log[0].(*wire.Output)
		if !ok || rec.ExitIndex != p.seq || rec.Device != p.device || rec.Length != uint32(len(p.data)) || rec.Digest != digest(p.data) {
			n.diverge(wire.ResyncOutputMismatch)
			return
		}
		n.replay.pending = n.replay.pending[1:]
		n.consume()
		n.replay.compared = rec.Seq
		if n.cfg.Mode == AckOnCompare {
			// The primary releases the output on this. In
			// ack-on-receipt it released it on the record's receipt,
			// and Compared goes with the next acknowledgement.
			n.replay.ackDue = true
		}
		p.seq = rec.Seq
		if rec.Seq > n.replay.primaryReleased {
			n.replay.copies = append(n.replay.copies, p)
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
	n.replay.log[0] = nil
	n.replay.log = n.replay.log[1:]
	n.replay.cursor++
	// Tell the primary now and then how far replay got, for its window.
	if n.replay.cursor%uint64(max(1, n.cfg.LogWindowEntries/4)) == 0 {
		n.replay.ackDue = true
	}
}

func (n *Node) flushAck() {
	if !n.replay.ackDue || n.role != RoleSecondary || (n.replay.phase != sReplaying && n.replay.phase != sDiverged) {
		n.replay.ackDue = false
		return
	}
	n.replay.ackDue = false
	recv := n.replay.received
	if n.cfg.Bugs.AckBeforeAppend {
		recv = max(recv, n.replay.ackSeen)
	}
	n.send(&wire.Ack{Received: recv, Compared: n.replay.compared, Replayed: n.replay.cursor - 1})
}

func (n *Node) appendItem(m wire.Msg, seq uint64) {
	if n.replay.phase != sReplaying && n.replay.phase != sDiverged {
		return
	}
	n.replay.ackSeen = max(n.replay.ackSeen, seq)
	n.replay.ackDue = true
	// Items past the window are dropped (the primary resends from our
	// cumulative ack); items ahead of a gap wait in a bounded reorder
	// buffer. The log itself only ever grows in order, which is what makes
	// a cumulative ack true.
	limit := n.replay.cursor - 1 + 2*uint64(n.cfg.LogWindowEntries)
	if seq <= n.replay.received || seq > limit {
		return
	}
	if seq > n.replay.received+1 {
		if _, ok := n.replay.outOfOrder[seq]; !ok {
			if n.replay.outOfOrder == nil {
				n.replay.outOfOrder = map[uint64]wire.Msg{}
			}
			n.replay.outOfOrder[seq] = ownCopy(m)
		}
		return
	}
	n.replay.log = append(n.replay.log, ownCopy(m))
	n.replay.received = seq
	for {
		next, ok := n.replay.outOfOrder[n.replay.received+1]
		if !ok {
			break
		}
		delete(n.replay.outOfOrder, n.replay.received+1)
		n.replay.log = append(n.replay.log, next)
		n.replay.received++
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
