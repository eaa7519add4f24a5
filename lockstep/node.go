package lockstep

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// Role is where a node stands in the protocol.
type Role uint8

// Roles.
const (
	RolePrimary Role = 1 + iota
	RoleSecondary
	// RoleCandidate is a secondary that declared its primary dead and is
	// consuming the rest of the log while it asks the arbiter to go live.
	RoleCandidate
	// RoleHalted never acts again.
	RoleHalted
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleSecondary:
		return "secondary"
	case RoleCandidate:
		return "candidate"
	case RoleHalted:
		return "halted"
	}
	return "role?"
}

// Result is the answer to NextInput and ReplayOutput.
type Result uint8

const (
	// OK: the input is in data, or the output was accepted.
	OK Result = 1 + iota
	// NotYet: the log does not reach this exit yet (or a checkpoint is on
	// its way); keep the vCPU at this exit and ask again after the next Ready.
	NotYet
	// Diverged: the replica asked for something the log does not have at
	// this point; a resync has been requested. Ask again later.
	Diverged
	// Live: this node is primary now; serve the exit from live devices
	// (RecordInput / HoldOutput) instead.
	Live
)

func (r Result) String() string {
	return [...]string{"?", "ok", "not-yet", "diverged", "live"}[min(int(r), 4)]
}

// Errors callers can test for.
var (
	ErrHalted     = errors.New("lockstep: node halted")
	ErrStaleEpoch = errors.New("lockstep: message from an older epoch refused")
	ErrWrongRole  = errors.New("lockstep: call not valid in this role")
)

// primary phases
type pPhase uint8

const (
	pAcquiring pPhase = iota // waiting for the arbiter; outputs held
	pAlone                   // granted, no secondary: release at once
	pPrecopy                 // copying the running VM to a joiner; still alone
	pSyncing                 // checkpoint under way to a secondary; outputs held
	pProtected               // secondary in step; release by Mode
)

// secondary phases
type sPhase uint8

const (
	sJoining   sPhase = iota // hello sent, waiting for a full checkpoint
	sRestoring               // restore command given, waiting for the agent
	sReplaying               // replaying the log
	sDiverged                // resync requested, waiting for a checkpoint
)

type held struct {
	id     uint64
	seq    uint64
	device uint16
	data   []byte

	carried bool // came with a checkpoint (Output.Carried)
}

// Node is one side of a protected VM. It is not safe for concurrent use: the
// agent calls it from one goroutine (or under one lock).
type Node struct {
	cfg   Config
	role  Role
	epoch uint64
	fence uint64

	divergences uint64 // resyncs this node asked for (secondary)

	// Pending effects, handed out by Ready and cleared by Advance.
	rd Ready

	ticksSincePeer      int
	ticksSinceSend      int // since our last heartbeat-like message
	ticksRetry          int // since progress on what we retransmit
	ticksSinceHeartbeat int

	nextID uint64

	// Arbiter request in flight (0: none).
	acquireEpoch uint64
	acquireErr   bool
	// acquireFailures counts the arbiter's errors in a row (no answer at
	// all, not a refusal); the next ask waits acquireRetryTicks() after
	// the last, counted in ticksAcquire. acquireLastErr is the last one,
	// for Status.
	acquireFailures int
	acquireLastErr  string
	ticksAcquire    int

	// Primary state.
	pphase         pPhase
	lastSeq        uint64     // last log position assigned
	log            []wire.Msg // items after acked, kept for the secondary
	acked          uint64     // secondary's cumulative receipt
	compared       uint64     // secondary's cumulative compare
	replayed       uint64     // how far the secondary VM has consumed the log
	ticksSinceSync int        // since the last restore confirmation
	held           []held     // outputs not yet released, in seq order
	released       uint64     // seq of the last released output
	durable        uint64     // ConfirmDurable: every output released through here is durable (Durable)
	stalled        bool
	paused         bool
	ckptID         uint64
	ckptSeq        uint64
	ckptFull       bool
	ckptTaking     bool
	ckptOut        []*outCkpt // checkpoints being shipped, in order (every part of a chain)
	ckptRetryTicks int        // retransmit timeout of ckptOut, doubled while no ack comes
	ckptBase       uint64     // first part of the chain being shipped (0: none)
	ckptLive       bool       // the checkpoint asked for is a live (pre-copy) part
	precopyRound   int        // live parts taken of the chain so far
	hadPeer        bool       // a secondary was attached when acquiring began
	// joinBackoffTicks: hellos are not served until it is 0 again, after
	// a sync was abandoned (PeerLost does not shorten it).
	joinBackoffTicks int

	// Secondary state.
	sphase          sPhase
	rlog            []wire.Msg          // received items from cursor on
	ooo             map[uint64]wire.Msg // items received ahead of a gap
	received        uint64              // last contiguous position appended
	cursor          uint64              // next position the VM consumes
	sCompared       uint64
	primaryReleased uint64
	pending         []held // VM outputs whose record has not arrived
	copies          []held // outputs reproduced; the primary may have released them
	ackDue          bool
	ackSeen         uint64               // AckBeforeAppend bug: highest seq seen
	asms            map[uint64]*assembly // checkpoints being assembled, by ID
	asmBytes        int                  // bytes in asms
	asmHigh         uint64               // newest checkpoint ID begun
	parts           map[uint64][]byte    // completed pre-copy parts, by ID (VMM data)
	partsBytes      int
	chainLow        uint64              // lowest ID of the chain being assembled (0: none known)
	chainEnd        *chainEnd           // its end, when it came before a part
	ckptAck         *wire.CheckpointAck // checkpoint acknowledgement to send (coalesced)
	restoredID      uint64
	restoredSeq     uint64
	grantEpoch      uint64
	grantFence      uint64
}

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

// NewNode returns a node in cfg.Role. A primary starts by asking the arbiter
// for cfg.FirstEpoch (see Ready); a secondary starts by sending Hello.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg}
	switch cfg.Role {
	case wire.RolePrimary:
		n.role = RolePrimary
		n.acquire(max(1, cfg.FirstEpoch))
	case wire.RoleSecondary:
		n.role = RoleSecondary
		n.sphase = sJoining
		n.send(n.hello())
	}
	return n, nil
}

// Status is a read-only view for agents, metrics and tests.
type Status struct {
	Role      Role
	Epoch     uint64
	Fence     uint64
	Protected bool   // primary: a secondary is in step
	Syncing   bool   // primary: a checkpoint is under way to a secondary
	Synced    bool   // secondary: holds a restored checkpoint
	LastSeq   uint64 // primary: last log position; secondary: last received
	Acked     uint64
	Held      int
	LogItems  int
	Stalled   bool
	Paused    bool
	// Divergences counts the times this node, as a secondary, found the
	// replica off the primary's path and asked for a checkpoint.
	Divergences uint64
	// Released is the log position through which outputs have left: the
	// primary's own, or what a secondary last heard of it (heartbeats'
	// ReleasedThrough). A secondary that goes live repeats what it made
	// past this point.
	Released uint64
	// ArbiterFailures counts the arbiter's errors in a row on the request
	// in flight (it could not be asked; a refusal is not an error), and
	// ArbiterErr is the last of them; both clear when an answer comes.
	ArbiterFailures int
	ArbiterErr      string
	// Diverged: a secondary found its VM off the primary's path and waits
	// for the checkpoint that repairs it. In ack-on-receipt mode it cannot
	// take over meanwhile (it halts if the primary is lost): the VM is
	// unprotected until the checkpoint comes.
	Diverged bool
	// CheckpointBytes is the checkpoint data the node holds: a primary's
	// checkpoints being shipped (every part of a chain), a secondary's
	// being assembled and the pre-copy parts it keeps.
	CheckpointBytes int
}

// Status reports the node's state.
func (n *Node) Status() Status {
	s := Status{Role: n.role, Epoch: n.epoch, Fence: n.fence, Stalled: n.stalled, Paused: n.paused, Held: len(n.held), Divergences: n.divergences,
		ArbiterFailures: n.acquireFailures, ArbiterErr: n.acquireLastErr}
	switch n.role {
	case RolePrimary:
		s.Protected = n.pphase == pProtected
		s.Syncing = n.pphase == pSyncing || n.pphase == pPrecopy
		s.LastSeq, s.Acked, s.LogItems, s.Released = n.lastSeq, n.acked, len(n.log), n.released
		for _, o := range n.ckptOut {
			s.CheckpointBytes += len(o.payload)
		}
	case RoleSecondary, RoleCandidate:
		s.Synced = n.sphase == sReplaying || n.sphase == sDiverged
		s.LastSeq, s.LogItems, s.Released = n.received, len(n.rlog), n.primaryReleased
		s.Diverged = n.sphase == sDiverged
		s.CheckpointBytes = n.asmBytes + n.partsBytes
		if n.chainEnd != nil {
			s.CheckpointBytes += len(n.chainEnd.data)
		}
	}
	return s
}

// HasReady reports whether Ready has anything to do.
func (n *Node) HasReady() bool {
	n.flushCheckpointAck()
	n.flushAck()
	return !n.rd.IsEmpty()
}

// Ready returns the pending work. Call Advance with it once done.
func (n *Node) Ready() Ready {
	n.flushCheckpointAck()
	n.flushAck()
	return n.rd
}

// Advance tells the node the agent performed rd.
//
// Slices in rd are reused by the node after Advance: copy what must outlive it.
func (n *Node) Advance(rd Ready) {
	n.rd.Commands = advance(n.rd.Commands, len(rd.Commands))
	n.rd.Release = advance(n.rd.Release, len(rd.Release))
	n.rd.Drop = advance(n.rd.Drop, len(rd.Drop))
	n.rd.Messages = advance(n.rd.Messages, len(rd.Messages))
}

// advance removes the first k items, reusing the array once it is empty so
// a steady state allocates nothing. k may exceed len(s) when a halt dropped
// pending releases between Ready and Advance.
func advance[T any](s []T, k int) []T {
	if k >= len(s) {
		clear(s)
		return s[:0]
	}
	return s[k:]
}

func (n *Node) send(m wire.Msg) {
	h := m.Head()
	h.Epoch, h.Fence = n.epoch, n.fence
	n.rd.Messages = append(n.rd.Messages, m)
	n.ticksSinceSend = 0
}

func (n *Node) command(c Command) { n.rd.Commands = append(n.rd.Commands, c) }

func (n *Node) hello() *wire.Hello {
	r := wire.RolePrimary
	if n.role != RolePrimary {
		r = wire.RoleSecondary
	}
	return &wire.Hello{ProtocolVersion: wire.ProtocolVersion, VMID: n.cfg.VMID, Role: r}
}

func (n *Node) acquire(epoch uint64) {
	if epoch != n.acquireEpoch {
		n.acquireFailures, n.acquireLastErr = 0, ""
	}
	n.acquireEpoch = epoch
	n.acquireErr = false
	n.ticksRetry = 0
	n.ticksAcquire = 0
	n.command(Command{Kind: CmdAcquire, Epoch: epoch})
}

// acquireRetryTicks is how long to wait after the arbiter failed
// acquireFailures times in a row before asking again: RetransmitTicks,
// doubled with each failure, at most ArbiterRetryMaxTicks. An arbiter
// that cannot be reached is asked a few times a second at first (a
// transient fault costs little) and then about once per
// ArbiterRetryMaxTicks, not every RetransmitTicks forever.
func (n *Node) acquireRetryTicks() int {
	d := n.cfg.RetransmitTicks
	for i := 1; i < n.acquireFailures && d < n.cfg.ArbiterRetryMaxTicks; i++ {
		d *= 2
	}
	return min(d, n.cfg.ArbiterRetryMaxTicks)
}

func (n *Node) halt(reason string) {
	if n.role == RoleHalted {
		return
	}
	n.role = RoleHalted
	// Nothing held may leave any more, not even what a Ready not yet
	// handed out meant to release.
	for _, o := range n.rd.Release {
		n.rd.Drop = append(n.rd.Drop, o.ID)
	}
	n.rd.Release = n.rd.Release[:0]
	for _, h := range n.held {
		n.rd.Drop = append(n.rd.Drop, h.id)
	}
	for _, h := range n.copies {
		n.rd.Drop = append(n.rd.Drop, h.id)
	}
	n.held, n.copies, n.pending, n.log, n.rlog, n.ckptOut = nil, nil, nil, nil, nil, nil
	n.command(Command{Kind: CmdHalt, Reason: reason})
}

// Tick advances logical time by one tick.
func (n *Node) Tick() {
	if n.role == RoleHalted {
		return
	}
	n.ticksSincePeer++
	n.ticksSinceSend++
	n.ticksRetry++
	n.ticksSinceSync++
	n.ticksSinceHeartbeat++
	n.ticksAcquire++
	if n.joinBackoffTicks > 0 {
		n.joinBackoffTicks--
	}
	if n.acquireEpoch != 0 && n.acquireErr && n.ticksAcquire >= n.acquireRetryTicks() {
		n.acquire(n.acquireEpoch)
	}
	if n.role == RolePrimary {
		n.tickPrimary()
	} else {
		n.tickSecondary()
	}
}

// PeerLost tells the node that the connection to its peer broke (the
// transport saw it reset or closed, as when the peer's process dies): it
// acts now as it would after PeerTimeoutTicks of silence instead of waiting
// them out. Only availability depends on it: the arbiter decides who goes
// on, so a false alarm costs a failover or a re-protection, never a second
// primary.
func (n *Node) PeerLost() {
	if n.role == RoleHalted {
		return
	}
	n.ticksSincePeer = max(n.ticksSincePeer, n.cfg.PeerTimeoutTicks, n.cfg.SyncTimeoutTicks)
	if n.role == RolePrimary {
		n.tickPrimary()
	} else {
		n.tickSecondary()
	}
}

// Step feeds one message from the peer.
func (n *Node) Step(m wire.Msg) error {
	if n.role == RoleHalted {
		return ErrHalted
	}
	h := m.Head()
	if hello, ok := m.(*wire.Hello); ok {
		if hello.VMID != n.cfg.VMID {
			return fmt.Errorf("lockstep: hello for VM %q reached the node of VM %q: check the peer address", hello.VMID, n.cfg.VMID)
		}
		if hello.ProtocolVersion != wire.ProtocolVersion {
			return fmt.Errorf("lockstep: peer speaks protocol %d, this node %d: run the same ftvm version on both hosts", hello.ProtocolVersion, wire.ProtocolVersion)
		}
	}
	if h.Epoch < n.epoch {
		// A joiner's hello carries whatever epoch it knew; it is how a node
		// comes back, so it is not refused.
		if _, ok := m.(*wire.Hello); !ok || n.role != RolePrimary {
			if _, isFence := m.(*wire.Fence); !isFence {
				n.send(&wire.Fence{RefusedEpoch: h.Epoch})
			}
			return fmt.Errorf("%w: %s of epoch %d, node is at %d", ErrStaleEpoch, m.Type(), h.Epoch, n.epoch)
		}
	}
	if n.role == RolePrimary {
		return n.stepPrimary(m)
	}
	return n.stepSecondary(m)
}

// ArbiterResult delivers the answer to a CmdAcquire.
func (n *Node) ArbiterResult(epoch uint64, granted bool, fence uint64, err error) {
	if n.role == RoleHalted || epoch != n.acquireEpoch {
		return
	}
	if err != nil {
		// Retried after acquireRetryTicks; the agent decides whether the
		// error can pass at all (it knows what the error means).
		n.acquireErr = true
		n.acquireFailures++
		n.acquireLastErr = err.Error()
		n.ticksAcquire = 0
		return
	}
	n.acquireEpoch = 0
	n.acquireFailures, n.acquireLastErr = 0, ""
	if !granted && !n.cfg.Bugs.SkipFenceCheck {
		n.halt(fmt.Sprintf("arbiter refused epoch %d: another host is primary", epoch))
		return
	}
	if n.role == RolePrimary {
		n.epoch, n.fence = epoch, fence
		n.goAlone()
		return
	}
	if n.role == RoleCandidate {
		n.grantEpoch, n.grantFence = epoch, fence
		n.maybeGoLive()
	}
}

func digest(b []byte) [wire.DigestBytes]byte { return sha256.Sum256(b) }

func clone(b []byte) []byte { return bytes.Clone(b) }
