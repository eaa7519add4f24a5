package lockstep

import "github.com/ftvm/ftvm/lockstep/wire"

// primaryLog is the primary's log and holds: every input and output record
// in one sequence, the part of it the secondary has not acknowledged, the
// secondary's progress through it, and the outputs held until the mode
// allows their release.
type primaryLog struct {
	lastSeq  uint64     // last log position assigned
	unacked  []wire.Msg // items after acked, kept for the secondary (resent from here)
	acked    uint64     // secondary's cumulative receipt
	compared uint64     // secondary's cumulative compare
	replayed uint64     // how far the secondary's VM has consumed the log
	held     []held     // outputs not yet released, in seq order
	released uint64     // seq of the last released output
	durable  uint64     // ConfirmDurable: every output released through here is durable (Durable)
}

// held is an output a node keeps: a primary's held output, or a
// secondary's copy of one it reproduced (or a checkpoint carried). On a
// secondary's pending output, seq holds the exit index until it is matched.
type held struct {
	id     uint64
	seq    uint64
	device uint16
	data   []byte

	carried bool // came with a checkpoint (Output.Carried)
}

// dropAcked forgets the log items the secondary acknowledged.
func (l *primaryLog) dropAcked() {
	k := 0
	for k < len(l.unacked) && seqOf(l.unacked[k]) <= l.acked {
		k++
	}
	l.unacked = append(l.unacked[:0], l.unacked[k:]...)
}

// appendLog keeps the item for the secondary when there is one to send to.
func (n *Node) appendLog(m wire.Msg) {
	switch n.primary.phase {
	case pProtected, pSyncing:
		n.log.unacked = append(n.log.unacked, m)
		if n.primary.phase == pProtected {
			n.send(m)
		}
	case pAcquiring:
		if n.primary.hadPeer {
			n.log.unacked = append(n.log.unacked, m)
		}
	}
	n.updateStall()
}

// updateStall stalls the vCPU while the secondary lags a full window behind:
// the log must not grow without bound.
func (n *Node) updateStall() {
	lag := 0
	if n.primary.phase == pProtected {
		lag = int(n.log.lastSeq - n.log.replayed)
	}
	want := lag >= n.cfg.LogWindowEntries || len(n.log.unacked) >= n.cfg.LogWindowEntries || len(n.log.held) >= n.cfg.LogWindowEntries
	if want != n.primary.stalled {
		n.primary.stalled = want
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
	for k < len(n.log.held) && n.mayRelease(n.log.held[k].seq) {
		k++
	}
	n.releaseHead(k)
	// Held outputs count against the window too: releasing them may be
	// what lets the vCPU run again.
	n.updateStall()
}

func (n *Node) mayRelease(seq uint64) bool {
	switch n.primary.phase {
	case pAlone, pPrecopy:
		return true
	case pProtected:
		if n.cfg.Mode == AckOnCompare {
			return n.log.compared >= seq
		}
		// Everything logged before the output has reached the secondary.
		return n.log.acked >= seq-1
	}
	return false
}

func (n *Node) releaseHead(k int) {
	for _, h := range n.log.held[:k] {
		n.rd.Release = append(n.rd.Release, Output{ID: h.id, Seq: h.seq, Device: h.device, Data: h.data, Epoch: n.epoch, Fence: n.fence})
		n.log.released = h.seq
	}
	n.log.held = append(n.log.held[:0], n.log.held[k:]...)
}

// Durable reports that every output this node released through log
// position seq is durable where it went (Config.ConfirmDurable): the
// caller performs releases in order and reports each once it is done. A
// position beyond what was released is capped at it.
func (n *Node) Durable(seq uint64) {
	n.log.durable = max(n.log.durable, min(seq, n.log.released))
}

// releasedThrough is what the primary tells the secondary it released:
// with ConfirmDurable only what is durable, never more, so that the
// secondary lets go of its copy of an output only once the world has it.
func (n *Node) releasedThrough() uint64 {
	if n.cfg.ConfirmDurable {
		return min(n.log.released, n.log.durable)
	}
	return n.log.released
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
