package sim

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// Checker names one of the simulator's checkers.
type Checker uint8

// The checkers; see checker's comment for what each enforces.
const (
	OutputRule Checker = 1 + iota
	Consistency
	SplitBrain
	Resync
	Liveness
	Harness // the simulator itself found something impossible
	Storage
	Traffic
	DivergedLive
)

func (c Checker) String() string {
	return [...]string{"?", "output-rule", "consistency", "split-brain", "resync", "liveness", "harness", "storage", "traffic", "diverged-live"}[min(int(c), 9)]
}

// Violation is one checker firing.
type Violation struct {
	Checker Checker
	Step    int
	Msg     string
}

func (v Violation) String() string { return fmt.Sprintf("%s at step %d: %s", v.Checker, v.Step, v.Msg) }

// maxViolations bounds what one run reports: the first few say it all.
const maxViolations = 8

// checker watches the run from outside the nodes: it sees what the
// simulated network carried, what the guests did, what the arbiter granted
// and what reached the world, and never asks a node what it believes.
//
// It enforces:
//  1. output rule: an output leaves only when its mode's condition holds,
//     judged from acknowledgements the primary actually received, which in
//     turn must be true (an ack may cover only log items that were delivered;
//     a compare ack only an output the secondary really reproduced);
//  2. external consistency: the outputs the world saw, across failovers,
//     are one execution: output i is released only after 0..i-1, and a
//     repeat carries the same bytes and comes from a different incarnation;
//  3. one releaser per epoch;
//  4. a restored checkpoint equals the primary's state at its log position;
//  7. storage: a secondary applies to its own copy of local state
//     (CmdPersist) only outputs the world has seen, byte for byte, in
//     order, and never while it is live;
//  8. traffic: a checkpoint none of whose frames (nor any other
//     checkpoint's frame or acknowledgement) was lost while it was sent
//     costs at most twice its size and a few chunks on the wire, and no
//     host holds more checkpoint data than a chain of the largest
//     checkpoints sent (Status.CheckpointBytes);
//  9. diverged-live: in ack-on-receipt mode, a secondary that asked for a
//     resync (it found its VM off the primary's path) never goes live
//     before a checkpoint repaired it: the world may have seen outputs it
//     did not reproduce.
type checker struct {
	s          *Sim
	violations []Violation

	world    [][]byte       // output index → bytes the world saw
	firstBy  map[uint64]int // output index → incarnation that released it first
	repeats  int
	releaser map[uint64]int // epoch → incarnation that released in it
	owner    map[uint64]int // epoch → incarnation the arbiter granted it to

	inc map[int]*incState

	protectedSinceHeal int

	ckpts      map[ckptKey]*ckptTraffic
	ckptLossAt int // step of the last checkpoint frame or ack lost (-1: none)
	ckptMax    int // largest checkpoint sent in the run
}

type ckptKey struct {
	inc int
	id  uint64
}

// ckptTraffic is what the network carried of one checkpoint.
type ckptTraffic struct {
	start int    // step its first frame was sent
	total uint64 // size its CheckpointDone announced (0: not yet sent)
	bytes uint64 // chunk bytes sent, retransmissions included
	end   uint64 // the furthest a chunk sent reached
	fired bool
}

type incState struct {
	// As a primary.
	covEpoch    uint64
	recvCov     uint64
	cmpCov      uint64
	unprotected uint64 // epoch in which it was granted and has no secondary yet
	outBySeq    map[uint64][]byte
	stateAt     map[uint64][]byte
	// As a secondary.
	persistedNext uint64 // output index the next Persist must exceed or equal
	restoreSeq    uint64
	delivered     map[uint64]bool
	frontier      uint64
	produced      map[uint64][]byte // output index → bytes its guest produced
	repeats       int               // outputs it released that the world had seen
	resyncAsked   bool              // sent a ResyncRequest since its last restore
}

func newChecker(s *Sim) *checker {
	return &checker{s: s, firstBy: map[uint64]int{}, releaser: map[uint64]int{}, owner: map[uint64]int{}, inc: map[int]*incState{},
		ckpts: map[ckptKey]*ckptTraffic{}, ckptLossAt: -1}
}

func (c *checker) st(inc int) *incState {
	st := c.inc[inc]
	if st == nil {
		st = &incState{outBySeq: map[uint64][]byte{}, stateAt: map[uint64][]byte{}, delivered: map[uint64]bool{}, produced: map[uint64][]byte{}}
		c.inc[inc] = st
	}
	return st
}

func (c *checker) violate(k Checker, format string, args ...any) {
	v := Violation{Checker: k, Step: c.s.now, Msg: fmt.Sprintf(format, args...)}
	if len(c.violations) < maxViolations {
		c.violations = append(c.violations, v)
	}
	c.s.tracef("VIOLATION %s", v)
}

func (c *checker) primaryState(h *host, seq uint64) { c.st(h.inc).stateAt[seq] = h.g.snapshot() }

func (c *checker) primaryOutput(h *host, seq uint64, data []byte) {
	c.st(h.inc).outBySeq[seq] = data
}

func (c *checker) secondaryOutput(h *host, data []byte) {
	if idx, ok := outputIndex(data); ok {
		c.st(h.inc).produced[idx] = data
	}
}

func (c *checker) granted(h *host, epoch uint64) {
	c.owner[epoch] = h.inc
	st := c.st(h.inc)
	st.unprotected, st.covEpoch, st.recvCov, st.cmpCov = epoch, epoch, 0, 0
}

func (c *checker) wentLive(h *host, epoch uint64) {
	if c.s.opts.Mode == lockstep.AckOnReceipt && c.st(h.inc).resyncAsked {
		c.violate(DivergedLive, "%s went live in epoch %d in ack-on-receipt mode after it asked for a resync no checkpoint answered", h.name, epoch)
	}
	if c.owner[epoch] != h.inc {
		c.violate(SplitBrain, "%s went live in epoch %d, which the arbiter granted to incarnation %d, not %d", h.name, epoch, c.owner[epoch], h.inc)
	}
}

// persisted is checker 7.
func (c *checker) persisted(h *host, o lockstep.Output) {
	st := c.st(h.inc)
	if h.live {
		c.violate(Storage, "%s persisted seq %d while live: a primary's outputs go out by Release", h.name, o.Seq)
	}
	idx, ok := outputIndex(o.Data)
	switch {
	case !ok:
		c.violate(Storage, "%s persisted %d bytes that are no output of the guest", h.name, len(o.Data))
	case idx >= uint64(len(c.world)) || !bytes.Equal(c.world[idx], o.Data):
		c.violate(Storage, "%s persisted output %d (%x), which the world has not seen as such", h.name, idx, o.Data)
	case idx < st.persistedNext:
		c.violate(Storage, "%s persisted output %d after output %d: out of order", h.name, idx, st.persistedNext-1)
	default:
		st.persistedNext = idx + 1
	}
}

// restored is checker 4.
func (c *checker) restored(h *host, seq uint64, data []byte) {
	st := c.st(h.inc)
	st.restoreSeq, st.frontier, st.delivered = seq, seq, map[uint64]bool{}
	st.resyncAsked = false
	// A checkpoint brings the state as of its position: what this host
	// persisted before it is overwritten, so order starts again.
	st.persistedNext = 0
	epoch := h.node.Status().Epoch
	p, ok := c.owner[epoch]
	if !ok {
		c.violate(Resync, "%s restored a checkpoint in epoch %d, which no primary was granted", h.name, epoch)
		return
	}
	want, ok := c.st(p).stateAt[seq]
	if !ok {
		c.violate(Resync, "%s restored a checkpoint at seq %d, a position the primary (incarnation %d) never reached", h.name, seq, p)
		return
	}
	if !bytes.Equal(want, data) {
		c.violate(Resync, "%s restored a state at seq %d that differs from the primary's there: %s", h.name, seq, stateDiff(want, data))
	}
}

// stateDiff names the first field where guest state got differs from
// want (snapshot's layout), with both values.
func stateDiff(want, got []byte) string {
	if len(want) != guestStateBytes || len(got) != guestStateBytes {
		return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	}
	for i := 0; i < guestStateBytes; i += 8 {
		w, g := binary.LittleEndian.Uint64(want[i:]), binary.LittleEndian.Uint64(got[i:])
		if w == g {
			continue
		}
		field := [...]string{"exit", "output index", "digest"}
		if i < 24 {
			return fmt.Sprintf("%s %#x, want %#x", field[i/8], g, w)
		}
		return fmt.Sprintf("page %d holds %#x, want %#x", (i-24)/8, g, w)
	}
	return "no field differs"
}

// sent checks that a secondary's acknowledgement is true when it is made.
func (c *checker) sent(h *host, m wire.Msg) {
	c.traffic(h, m)
	// A request sent in the same Ready as the restore that answers it
	// leaves after the restore; it is about a position before it.
	if r, ok := m.(*wire.ResyncRequest); ok && !h.live && r.AtSeq > c.st(h.inc).restoreSeq {
		c.st(h.inc).resyncAsked = true
	}
	a, ok := m.(*wire.Ack)
	if !ok {
		return
	}
	st := c.st(h.inc)
	if a.Received > st.frontier {
		c.violate(OutputRule, "%s acked receipt through %d, but only %d..%d were ever delivered to it in order", h.name, a.Received, st.restoreSeq+1, st.frontier)
	}
	if a.Compared > st.restoreSeq {
		prim := c.st(c.owner[a.Epoch]).outBySeq[a.Compared]
		idx, ok := outputIndex(prim)
		if !ok {
			c.violate(OutputRule, "%s acked a compare at %d, which is not an output of the epoch-%d primary", h.name, a.Compared, a.Epoch)
		} else if !bytes.Equal(st.produced[idx], prim) {
			c.violate(OutputRule, "%s acked output %d as compared, but its guest never produced those bytes", h.name, idx)
		}
	}
}

func (c *checker) delivered(to *host, m wire.Msg) {
	st := c.st(to.inc)
	switch m := m.(type) {
	case *wire.Entry, *wire.Output:
		var s uint64
		if e, ok := m.(*wire.Entry); ok {
			s = e.Seq
		} else {
			s = m.(*wire.Output).Seq
		}
		if s > st.frontier {
			st.delivered[s] = true
			for st.delivered[st.frontier+1] {
				delete(st.delivered, st.frontier+1)
				st.frontier++
			}
		}
	case *wire.Ack:
		if m.Epoch == to.node.Status().Epoch && to.node.Status().Role == lockstep.RolePrimary {
			c.cover(st, m.Epoch, m.Received, m.Compared)
		}
	case *wire.CheckpointDone:
		if m.Restored && m.Epoch == to.node.Status().Epoch && to.node.Status().Role == lockstep.RolePrimary {
			c.cover(st, m.Epoch, m.Seq, m.Seq)
			if st.unprotected == m.Epoch {
				st.unprotected = 0
			}
		}
	}
}

func (c *checker) cover(st *incState, epoch, recv, cmp uint64) {
	if st.covEpoch != epoch {
		st.covEpoch, st.recvCov, st.cmpCov = epoch, 0, 0
	}
	st.recvCov = max(st.recvCov, recv)
	st.cmpCov = max(st.cmpCov, cmp)
}

// release is where an output reaches the world: checkers 1, 2 and 3.
func (c *checker) release(h *host, o lockstep.Output) {
	st := c.st(h.inc)
	// 3: one releaser per epoch.
	if r, ok := c.releaser[o.Epoch]; ok && r != h.inc {
		c.violate(SplitBrain, "incarnations %d and %d (%s) both released outputs in epoch %d", r, h.inc, h.name, o.Epoch)
	}
	c.releaser[o.Epoch] = h.inc
	// 1: the output rule.
	protected := false
	switch {
	case st.unprotected != 0 && st.unprotected == o.Epoch:
	case st.covEpoch != o.Epoch:
		c.violate(OutputRule, "%s released seq %d in epoch %d with no acknowledgement from that epoch's secondary", h.name, o.Seq, o.Epoch)
	case c.s.opts.Mode == lockstep.AckOnReceipt && st.recvCov+1 < o.Seq:
		c.violate(OutputRule, "%s released seq %d but the secondary had acked receipt only through %d", h.name, o.Seq, st.recvCov)
	case c.s.opts.Mode == lockstep.AckOnCompare && st.cmpCov < o.Seq:
		c.violate(OutputRule, "%s released seq %d but the secondary had compared only through %d", h.name, o.Seq, st.cmpCov)
	default:
		protected = true
	}
	if protected {
		c.protectedSinceHeal++
	}
	// 2: external consistency.
	idx, ok := outputIndex(o.Data)
	if !ok {
		c.violate(Consistency, "%s released %d bytes that are no output of the guest", h.name, len(o.Data))
		return
	}
	switch {
	case idx < uint64(len(c.world)):
		if !bytes.Equal(c.world[idx], o.Data) {
			c.violate(Consistency, "%s released output %d as %x, the world already saw %x", h.name, idx, o.Data, c.world[idx])
		} else if c.firstBy[idx] == h.inc {
			c.violate(Consistency, "%s released output %d twice", h.name, idx)
		} else {
			c.repeats++
			// Repeats come from not knowing what the old primary released:
			// at most the copies a secondary keeps (a window of log it
			// received past the last heartbeat, a window of outputs held
			// across a checkpoint) and its outputs still awaiting records.
			st.repeats++
			if w := 2*c.s.opts.Node.LogWindowEntries + c.s.opts.Node.MaxPendingOutputs; st.repeats > w {
				c.violate(Consistency, "%s repeated %d outputs, more than its copies (at most %d) can explain", h.name, st.repeats, w)
			}
		}
	case idx == uint64(len(c.world)):
		c.world = append(c.world, o.Data)
		c.firstBy[idx] = h.inc
	default:
		c.violate(Consistency, "%s released output %d but the world has seen only %d outputs: %d..%d were lost", h.name, idx, len(c.world), len(c.world), idx-1)
	}
}

// isCheckpointFrame says whether a frame of type t carries or acknowledges
// a checkpoint.
func isCheckpointFrame(t wire.Type) bool {
	return t == wire.TypeCheckpointChunk || t == wire.TypeCheckpointDone || t == wire.TypeCheckpointAck
}

// lost records that the network dropped a frame of type t.
func (c *checker) lost(t wire.Type) {
	if isCheckpointFrame(t) {
		c.ckptLossAt = c.s.now
	}
}

// traffic is checker 8's count of what a primary sends of a checkpoint.
func (c *checker) traffic(h *host, m wire.Msg) {
	var id, total, n uint64
	switch m := m.(type) {
	case *wire.CheckpointChunk:
		id, n = m.ID, uint64(len(m.Data))
	case *wire.CheckpointDone:
		if m.Restored {
			return
		}
		id, total = m.ID, m.Total
	default:
		return
	}
	k := ckptKey{h.inc, id}
	t := c.ckpts[k]
	if t == nil {
		t = &ckptTraffic{start: c.s.now}
		c.ckpts[k] = t
	}
	t.bytes += n
	if ch, ok := m.(*wire.CheckpointChunk); ok {
		t.end = max(t.end, ch.Offset+n)
	}
	c.ckptMax = max(c.ckptMax, int(t.end))
	if total > 0 {
		t.total = total
		c.ckptMax = max(c.ckptMax, int(total))
		// Every checkpoint the primary holds was announced by now, but
		// for one taken meanwhile.
		c.held(h)
	}
	chunk := uint64(c.s.opts.Node.CheckpointChunkBytes)
	// Judged only where a one-way delay fits the retransmission timeout:
	// beyond that, timeouts fire while acks are on their way, by design.
	o := c.s.opts
	timely := o.MaxDelaySteps <= o.Node.RetransmitTicks*o.TickEverySteps
	if timely && t.total > 0 && !t.fired && c.ckptLossAt < t.start && t.bytes > 2*t.total+4*chunk {
		t.fired = true
		c.violate(Traffic, "%s sent %d bytes of checkpoint %d, which has %d, and none of its frames was lost", h.name, t.bytes, id, t.total)
	}
}

// held is checker 8's bound on what a host keeps of checkpoints, judged
// for a primary when it announces one (the sizes of those it holds are
// known then), for a secondary whenever (it holds only what was sent).
func (c *checker) held(h *host) {
	if h.node == nil || c.ckptMax == 0 {
		return
	}
	// Parts of a chain differ in size (the node's section carries the
	// outputs held), and one may be taken before the last is sent: twice
	// a chain of the largest seen so far. A secondary may also hold the
	// chain under way, parts of syncs given up since and the newest ones
	// begun: three times.
	k := 2
	if !h.live {
		k = 3
	}
	b := h.node.Status().CheckpointBytes
	if bound := k * (c.s.opts.Node.PrecopyRounds + 1) * c.ckptMax; b > bound {
		c.violate(Traffic, "%s holds %d bytes of checkpoints, more than %d chains of %d of the largest sent (%d bytes)", h.name, b, k, c.s.opts.Node.PrecopyRounds+1, c.ckptMax)
	}
}
