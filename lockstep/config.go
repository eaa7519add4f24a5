package lockstep

import (
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/lockstep/internal/bugs"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// Mode says when a primary may release a held output.
type Mode uint8

const (
	// AckOnReceipt releases an output once every log item before it has
	// reached the secondary. Lowest latency; assumes replay is deterministic.
	AckOnReceipt Mode = 1 + iota
	// AckOnCompare releases an output once the secondary has reproduced it
	// with the same digest: divergence is caught before anything leaves.
	AckOnCompare
)

func (m Mode) String() string {
	switch m {
	case AckOnReceipt:
		return "ack-on-receipt"
	case AckOnCompare:
		return "ack-on-compare"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Defaults for Config fields left zero. Times are in Ticks: the agent decides
// how long a tick is (the simulator uses a few steps of its clock).
const (
	DefaultLogWindowEntries      = 256
	DefaultHeartbeatTicks        = 2
	DefaultRetransmitTicks       = 3
	DefaultPeerTimeoutTicks      = 12
	DefaultRetransmitBurstItems  = 64
	DefaultCheckpointChunkBytes  = 64 << 10
	DefaultMaxCheckpointBytes    = 256 << 20
	DefaultMaxPendingOutputs     = 64
	DefaultPrecopyDoneBytes      = 256 << 10
	DefaultCheckpointWindowBytes = 4 << 20
	DefaultCheckpointReadyBytes  = 256 << 10
	DefaultArbiterRetryMaxTicks  = 100
)

// Config configures a Node. Zero fields take the defaults above.
type Config struct {
	// VMID names the protected VM; a Hello for another VM is refused.
	VMID string
	// Role the node starts in: wire.RolePrimary runs the VM and first asks
	// the arbiter for FirstEpoch; wire.RoleSecondary joins a primary.
	Role wire.Role
	Mode Mode
	// LogWindowEntries bounds the log items a primary keeps for a secondary
	// that has not acknowledged them (and the items a secondary keeps
	// unreplayed). At the bound the primary stalls its vCPU.
	LogWindowEntries int
	// HeartbeatTicks is how often each side shows it is alive.
	HeartbeatTicks int
	// RetransmitTicks is how long without progress before resending.
	RetransmitTicks int
	// PeerTimeoutTicks without hearing the peer declares it dead.
	PeerTimeoutTicks int
	// SyncTimeoutTicks replaces PeerTimeoutTicks on a primary while it
	// brings a secondary up (pre-copy, checkpoint under way): a secondary
	// restoring a checkpoint is silent for as long as the restore takes,
	// which grows with the VM and its disk. A secondary that dies then is
	// still found at once through PeerLost. Zero: 10 x PeerTimeoutTicks.
	SyncTimeoutTicks int
	// ArbiterRetryMaxTicks bounds the wait before asking an arbiter that
	// failed (could not be asked) again: the wait starts at
	// RetransmitTicks and doubles with each failure in a row up to this.
	ArbiterRetryMaxTicks int
	// RetransmitBurstItems bounds how many log items one retransmission sends.
	RetransmitBurstItems int
	// CheckpointChunkBytes is the payload size of one checkpoint chunk.
	CheckpointChunkBytes int
	// MaxCheckpointBytes bounds a checkpoint a secondary will assemble
	// (with the parts of its chain kept so far) and one a primary will
	// ship. Size it from the VM: its memory, its disk when snapshots carry
	// it, and some headroom for device state.
	MaxCheckpointBytes int
	// CheckpointWindowBytes bounds the checkpoint bytes a primary has sent
	// and the secondary not yet acknowledged (wire.CheckpointAck).
	CheckpointWindowBytes int
	// CheckpointReadyBytes bounds the checkpoint chunk bytes one Ready
	// carries (at least one chunk): the agent encodes a Ready's messages
	// under the lock its vCPU's exits take, so a window's worth at once
	// would stall the guest for as long. Advance queues the next ones, so
	// the window still fills over consecutive Readies.
	CheckpointReadyBytes int
	// MaxPendingOutputs bounds the outputs a secondary's VM may produce
	// before the primary's record of them arrives.
	MaxPendingOutputs int
	// SendOutputData ships output bytes, not only their digest, in records.
	SendOutputData bool
	// PrecopyRounds is how many times a primary copies its VM while it runs
	// (CmdTakeCheckpoint with Live) before the one paused copy that brings a
	// new secondary up: a live full copy, then live increments of what
	// changed meanwhile, then (once the secondary holds every live copy)
	// a short pause for the rest. Zero: a joiner
	// gets one full checkpoint taken with the VM paused. Pre-copy is used
	// only by a primary that is alone (it releases outputs meanwhile, as
	// it did before the secondary came).
	PrecopyRounds int
	// PrecopyDoneBytes ends the live rounds early: once a live increment
	// is smaller than this, the paused copy follows.
	PrecopyDoneBytes int
	// Persistent says which outputs change state the secondary keeps a
	// copy of on its own host (a disk, in separate-storage mode). A
	// secondary hands such an output to CmdPersist, rather than
	// dropping it, once it has reproduced it and the primary has reported
	// it released: its copy of that state then follows the primary's. Nil:
	// no output is persistent.
	Persistent func(device uint16) bool
	// ConfirmDurable says a released output is not done when Ready hands
	// it out but when the caller reports it durable where it went
	// (Node.Durable): a block write queued behind an fdatasync, say. The
	// primary then tells the secondary it released an output
	// (Heartbeat.ReleasedThrough, a checkpoint's released-through) only
	// once it is durable, so that the secondary keeps its copy, and
	// releases it if it goes live, until the world really has it. Without
	// it an output counts as done once handed out.
	ConfirmDurable bool

	// ResyncBase, on a secondary, describes the state its VM holds for
	// an incremental resync: the checkpoint it last restored and what it
	// changed since (the VMM's encoding; opaque here). The node calls it
	// whenever it sends a wire.ResyncRequest and carries the result as the
	// request's Base, which the primary hands to its VMM with the
	// checkpoint it asks for (Checkpoint.Base). Nil, or a nil or empty
	// result, or one over wire.MaxResyncBaseBytes: no base, and the
	// checkpoint stands alone. After a restore failed
	// (Node.CheckpointRestoreFailed) it is not called until a full
	// checkpoint was restored.
	ResyncBase func() []byte

	// FirstEpoch is the epoch a primary asks for first: one past the
	// newest the arbiter granted, when the host may take it (it stopped
	// cleanly, or its disk is the current one). Zero: 1.
	FirstEpoch uint64

	// Bugs plants known bugs; nil in production. Only tests under lockstep/
	// can set it.
	Bugs *bugs.Set
}

func (c *Config) fill() error {
	if c.VMID == "" || len(c.VMID) > wire.MaxVMIDBytes {
		return fmt.Errorf("lockstep: VMID %q must be 1..%d bytes", c.VMID, wire.MaxVMIDBytes)
	}
	if c.Role != wire.RolePrimary && c.Role != wire.RoleSecondary {
		return errors.New("lockstep: Role must be wire.RolePrimary or wire.RoleSecondary")
	}
	if c.Mode != AckOnReceipt && c.Mode != AckOnCompare {
		return errors.New("lockstep: Mode must be AckOnReceipt or AckOnCompare")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.LogWindowEntries, DefaultLogWindowEntries)
	def(&c.HeartbeatTicks, DefaultHeartbeatTicks)
	def(&c.RetransmitTicks, DefaultRetransmitTicks)
	def(&c.PeerTimeoutTicks, DefaultPeerTimeoutTicks)
	def(&c.SyncTimeoutTicks, 10*c.PeerTimeoutTicks)
	def(&c.RetransmitBurstItems, DefaultRetransmitBurstItems)
	def(&c.ArbiterRetryMaxTicks, DefaultArbiterRetryMaxTicks)
	def(&c.CheckpointChunkBytes, DefaultCheckpointChunkBytes)
	def(&c.MaxCheckpointBytes, DefaultMaxCheckpointBytes)
	def(&c.MaxPendingOutputs, DefaultMaxPendingOutputs)
	def(&c.CheckpointWindowBytes, max(DefaultCheckpointWindowBytes, c.CheckpointChunkBytes))
	def(&c.PrecopyDoneBytes, DefaultPrecopyDoneBytes)
	def(&c.CheckpointReadyBytes, DefaultCheckpointReadyBytes)
	if c.PrecopyRounds < 0 {
		return fmt.Errorf("lockstep: PrecopyRounds %d is negative", c.PrecopyRounds)
	}
	if c.CheckpointChunkBytes > wire.MaxChunkDataBytes {
		return fmt.Errorf("lockstep: CheckpointChunkBytes %d exceeds wire.MaxChunkDataBytes %d", c.CheckpointChunkBytes, wire.MaxChunkDataBytes)
	}
	if c.MaxCheckpointBytes > wire.MaxCheckpointBytes {
		return fmt.Errorf("lockstep: MaxCheckpointBytes %d exceeds wire.MaxCheckpointBytes %d", c.MaxCheckpointBytes, wire.MaxCheckpointBytes)
	}
	if c.CheckpointWindowBytes < c.CheckpointChunkBytes {
		return fmt.Errorf("lockstep: CheckpointWindowBytes %d is smaller than one chunk (CheckpointChunkBytes %d)", c.CheckpointWindowBytes, c.CheckpointChunkBytes)
	}
	if c.PeerTimeoutTicks <= 2*c.HeartbeatTicks {
		return fmt.Errorf("lockstep: PeerTimeoutTicks %d must exceed twice HeartbeatTicks %d, or one lost heartbeat looks like a death", c.PeerTimeoutTicks, c.HeartbeatTicks)
	}
	for _, v := range []int{c.LogWindowEntries, c.HeartbeatTicks, c.RetransmitTicks, c.RetransmitBurstItems, c.ArbiterRetryMaxTicks, c.CheckpointChunkBytes, c.MaxCheckpointBytes, c.MaxPendingOutputs, c.CheckpointReadyBytes} {
		if v < 0 {
			return errors.New("lockstep: Config bounds must not be negative")
		}
	}
	if c.Bugs == nil {
		c.Bugs = &bugs.Set{}
	}
	return nil
}
