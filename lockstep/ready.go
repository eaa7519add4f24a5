package lockstep

import "github.com/ftvm/ftvm/lockstep/wire"

// Ready is the work a Node asks its agent to do. The agent performs it in
// the order of the fields below, then calls Advance with the same Ready.
type Ready struct {
	// Commands for the VMM and the arbiter, performed in order and before
	// anything below: Pause must have stopped the vCPU before
	// TakeCheckpoint copies its state, RestoreCheckpoint must finish before
	// Resume, and GoLive must switch the VMM from replay to live devices
	// before the outputs in Release reach them.
	Commands []Command
	// Release lists outputs to hand to their device backends, in order.
	// This is the only way an output leaves: the node has checked the
	// mode's condition. Performed after Commands; a Ready that carries
	// Halt never carries a Release.
	Release []Output
	// Drop lists output IDs whose copies the agent may discard: held
	// outputs of a node that halted, or a secondary's copies the primary
	// has released. Never to be sent anywhere.
	Drop []uint64
	// Messages to send to the peer, after Commands are done (a restore
	// confirmation or go-live notice must not overtake the act it reports).
	// Messages may be lost or reordered; the protocol retransmits.
	Messages []wire.Msg
}

// IsEmpty reports whether the Ready asks for nothing.
func (rd *Ready) IsEmpty() bool {
	return len(rd.Commands) == 0 && len(rd.Release) == 0 && len(rd.Drop) == 0 && len(rd.Messages) == 0
}

// Output is an output the agent must hand to its device backend.
type Output struct {
	ID     uint64
	Seq    uint64 // log position of the output's record
	Device uint16
	Data   []byte
	Epoch  uint64 // epoch under which it is released
	Fence  uint64 // fence token to present to a fencing backend
	// Carried: the output came to this node with a checkpoint (held on
	// the primary when it was taken), so no exit of this node's VM holds
	// it: the agent performs it from Data. Every other output is one
	// this node's VM made and the agent holds.
	Carried bool
}

// CommandKind names a command in Ready.Commands.
type CommandKind uint8

// Commands a Node can give.
const (
	// CmdStall stops the vCPU because the secondary lags a full log window
	// behind; CmdUnstall lets it run again.
	CmdStall CommandKind = 1 + iota
	CmdUnstall
	// CmdPause stops the vCPU for a checkpoint; CmdResume restarts it.
	CmdPause
	CmdResume
	// CmdTakeCheckpoint asks for a checkpoint of the paused VM
	// (Checkpoint.ID, Seq, Full); the agent answers with CheckpointTaken.
	CmdTakeCheckpoint
	// CmdRestoreCheckpoint asks the secondary's VMM to load Checkpoint.Data;
	// the agent answers with CheckpointRestored.
	CmdRestoreCheckpoint
	// CmdAcquire asks the arbiter for Epoch; the agent answers with
	// ArbiterResult.
	CmdAcquire
	// CmdGoLive switches the secondary's VMM from replay to live devices:
	// it is now primary for Epoch with Fence.
	CmdGoLive
	// CmdHalt stops the VM for good on this host: it lost the arbiter or saw
	// a newer epoch. Nothing it holds may be released.
	CmdHalt
	// CmdPersist, on a secondary, applies Output (of a Config.Persistent
	// device) to this host's own copy of that state, its disk: this node's
	// VM reproduced it, or a checkpoint carried it, and the primary
	// reported it released, so the primary applied the same bytes to its
	// copy. It never leaves the host. It is a command, not a list of its
	// own, because its place among restores and go-live matters: a
	// restore overwrites what was persisted before it, and writes persisted
	// after it must land on the restored state, in order.
	CmdPersist
	// CmdLoadPart, on a joining secondary, hands the VMM a pre-copy part
	// (Checkpoint.ID and Data; Full for the chain's first) as soon as it
	// is here whole, in the chain's order, so that the restore ending the
	// chain has only the paused increment left to load: the primary's
	// pause lasts that restore, not the whole chain's. It comes only
	// while the node is joining, when this host's VM (if it has one) is of
	// no use any more: the agent may replace it by the one it loads into
	// (a full part begins a new one; an increment applies on the part
	// before it). Loading is ahead of time only: CmdRestoreCheckpoint
	// still carries every part of its chain, and the agent loads there
	// those it did not load here (all of them into a new VM, if what it
	// loaded is not the start of that chain or a load failed). Nothing
	// answers it.
	CmdLoadPart
)

var cmdNames = [...]string{"", "stall", "unstall", "pause", "resume", "take-checkpoint", "restore-checkpoint", "acquire", "go-live", "halt", "persist", "load-part"}

func (k CommandKind) String() string {
	if int(k) < len(cmdNames) {
		return cmdNames[k]
	}
	return "cmd?"
}

// Command is one entry of Ready.Commands.
type Command struct {
	Kind       CommandKind
	Checkpoint Checkpoint // take-checkpoint, restore-checkpoint
	Epoch      uint64     // acquire, go-live
	Fence      uint64     // go-live
	Reason     string     // halt
	Output     Output     // persist
}

// Checkpoint identifies a checkpoint of the VM at log position Seq. In
// CmdTakeCheckpoint, Seq is the position when the checkpoint was asked for;
// the checkpoint's own position is the log's end when CheckpointTaken is
// called, which is why the VM must stay paused between the two.
type Checkpoint struct {
	ID   uint64
	Seq  uint64
	Full bool // full rather than incremental (dirty pages since the last)
	// Live (take-checkpoint): copy the VM while it runs, without a pause.
	// The copy may be torn; it is a pre-copy part, which a later one
	// (ultimately a paused one) repairs with everything written since it
	// began.
	Live bool
	// Chain (take-checkpoint): this checkpoint continues the pre-copy
	// parts just taken on this VM: an increment over the last of them (a
	// live one, or the paused one that ends the chain).
	Chain bool
	// Data (restore-checkpoint): the VMM's snapshot bytes, applied after
	// Parts, the pre-copy parts of the chain this checkpoint ends, in
	// order (none for a checkpoint that stands alone): they are
	// checkpoints ID-len(Parts) to ID-1, the ones CmdLoadPart may have
	// handed over already. In load-part, Data is the part's.
	Data  []byte
	Parts [][]byte
	// Base (take-checkpoint, neither Full nor Live nor Chain): the
	// secondary's account of the state its VM holds (wire.ResyncRequest's
	// Base), nil when it sent none. A VMM whose own VM stands on the same
	// checkpoint may answer with an increment over it that holds what
	// either side changed since; otherwise (or when it cannot read Base)
	// it takes a full one, as with no base. The secondary restores such
	// an increment onto its VM; if that fails it says so
	// (Node.CheckpointRestoreFailed) and gets a full checkpoint next.
	Base []byte
}
