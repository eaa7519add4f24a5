package lockstep

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// Role is where a node stands in the protocol: wire.Role, so that a
// node's Config.Role, its Status and the Hello it sends speak one type.
// The wire owns it because the wire encodes it (a Hello's role) and wire
// cannot import lockstep; the alias and constants below let callers of
// lockstep name roles without importing wire.
type Role = wire.Role

// Roles (see wire.Role).
const (
	RolePrimary   = wire.RolePrimary
	RoleSecondary = wire.RoleSecondary
	// RoleCandidate is a secondary that declared its primary dead and is
	// consuming the rest of the log while it asks the arbiter to go live.
	RoleCandidate = wire.RoleCandidate
	// RoleHalted never acts again.
	RoleHalted = wire.RoleHalted
)

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

// Node is one side of a protected VM. It is not safe for concurrent use: the
// agent calls it from one goroutine (or under one lock).
//
// Node keeps what both roles share; each role and activity keeps its state
// in a part of its own, in its own file: a primary's phase (primary.go), its
// log and held outputs (primarylog.go) and the checkpoints it ships
// (ckptsend.go); a secondary's replay and compare (replay.go) and the
// checkpoints it assembles (ckptrecv.go); the arbiter request (epoch.go).
// A part not of the node's role stays idle (a secondary that goes live
// takes on the primary's parts where they stand).
type Node struct {
	cfg         Config // as given to NewNode, filled in
	role        Role   // where the node stands; RoleHalted is for good
	epoch       uint64 // the epoch the node acts in
	fence       uint64 // the arbiter's fence token for epoch
	rd          Ready  // effects queued for Ready, cleared by Advance
	nextID      uint64 // last ID given to an output (a primary's held one, a secondary's copy)
	divergences uint64 // resyncs this node asked for (secondary)

	ticks    ticks               // logical time since events both roles wait on
	claim    epochClaim          // the arbiter request in flight, and a candidate's grant
	primary  primaryState        // primary: phase, stall and pause, joins
	log      primaryLog          // primary: the log kept for the secondary and the held outputs
	shipping checkpointShipping  // primary: the checkpoint asked for and the ones being shipped
	replay   replayState         // secondary: phase, received log, outputs compared and kept
	incoming incomingCheckpoints // secondary: checkpoints being assembled, pre-copy parts kept
}

// ticks counts Ticks since events both roles wait on.
type ticks struct {
	sincePeer      int // since the peer was last heard
	sinceSend      int // since our last message (a secondary's ack is its heartbeat)
	sinceProgress  int // since progress on what we retransmit (log items, checkpoints, hellos, resync requests)
	sinceHeartbeat int // since the primary's last heartbeat
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
		n.role = cfg.Role
		n.acquire(max(1, cfg.FirstEpoch))
	case wire.RoleSecondary:
		n.role = cfg.Role
		n.replay.phase = sJoining
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
	// RestoreFailures counts the incremental checkpoints this node, as a
	// secondary, could not restore (CheckpointRestoreFailed): each cost a
	// full one.
	RestoreFailures uint64
}

// Status reports the node's state.
func (n *Node) Status() Status {
	s := Status{Role: n.role, Epoch: n.epoch, Fence: n.fence, Stalled: n.primary.stalled, Paused: n.primary.paused, Held: len(n.log.held), Divergences: n.divergences,
		ArbiterFailures: n.claim.failures, ArbiterErr: n.claim.lastErr}
	switch n.role {
	case RolePrimary:
		s.Protected = n.primary.phase == pProtected
		s.Syncing = n.primary.phase == pSyncing || n.primary.phase == pPrecopy
		s.LastSeq, s.Acked, s.LogItems, s.Released = n.log.lastSeq, n.log.acked, len(n.log.unacked), n.log.released
		s.CheckpointBytes = n.shipping.bytes()
	case RoleSecondary, RoleCandidate:
		s.Synced = n.replay.phase == sReplaying || n.replay.phase == sDiverged
		s.LastSeq, s.LogItems, s.Released = n.replay.received, len(n.replay.log), n.replay.primaryReleased
		s.Diverged = n.replay.phase == sDiverged
		s.CheckpointBytes = n.incoming.bytes()
		s.RestoreFailures = n.incoming.restoreFailures
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
	// The chunks the window allows beyond what one Ready carries go in
	// the next (pumpCheckpoint).
	n.shipping.readyBytes = 0
	if n.role == RolePrimary && len(n.shipping.checkpoints) > 0 {
		n.pumpCheckpoint()
	}
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
	n.ticks.sinceSend = 0
}

func (n *Node) command(c Command) { n.rd.Commands = append(n.rd.Commands, c) }

func (n *Node) hello() *wire.Hello {
	r := wire.RolePrimary
	if n.role != RolePrimary {
		r = wire.RoleSecondary
	}
	return &wire.Hello{ProtocolVersion: wire.ProtocolVersion, VMID: n.cfg.VMID, Role: r}
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
	for _, h := range n.log.held {
		n.rd.Drop = append(n.rd.Drop, h.id)
	}
	for _, h := range n.replay.copies {
		n.rd.Drop = append(n.rd.Drop, h.id)
	}
	n.log.held, n.replay.copies, n.replay.pending, n.log.unacked, n.replay.log, n.shipping.checkpoints = nil, nil, nil, nil, nil, nil
	n.command(Command{Kind: CmdHalt, Reason: reason})
}

// Tick advances logical time by one tick.
func (n *Node) Tick() {
	if n.role == RoleHalted {
		return
	}
	n.ticks.sincePeer++
	n.ticks.sinceSend++
	n.ticks.sinceProgress++
	n.primary.sinceRestore++
	n.ticks.sinceHeartbeat++
	n.claim.sinceAsk++
	if n.primary.joinBackoffTicks > 0 {
		n.primary.joinBackoffTicks--
	}
	if n.claim.epoch != 0 && n.claim.failed && n.claim.sinceAsk >= n.acquireRetryTicks() {
		n.acquire(n.claim.epoch)
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
	n.ticks.sincePeer = max(n.ticks.sincePeer, n.cfg.PeerTimeoutTicks, n.cfg.SyncTimeoutTicks)
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

func digest(b []byte) [wire.DigestBytes]byte { return sha256.Sum256(b) }

func clone(b []byte) []byte { return bytes.Clone(b) }

func (n *Node) roleErr(call string) error {
	if n.role == RoleHalted {
		return ErrHalted
	}
	return fmt.Errorf("%w: %s on a %s", ErrWrongRole, call, n.role)
}
