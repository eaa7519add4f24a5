package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// Transport moves the protocol's frames to the peer. tcpfallback.Transport
// satisfies it; received frames come back through Agent.HandleFrame, which
// the transport's OnFrame calls.
type Transport interface {
	Send(typ transport.Type, payload []byte) error
}

// TrySender is a Transport that can refuse a send that would wait
// (transport.ErrWouldBlock) instead of waiting (tcpfallback.Transport
// does). The transport's readers send with it: a reader that waits for
// room in its socket reads nothing meanwhile, and the peer's reader may be
// waiting for it the same way. A Transport without it is sent to with Send.
type TrySender interface {
	TrySend(typ transport.Type, payload []byte) error
}

// BatchSender is a Transport that can send several frames of one lane
// together (tcpfallback.Transport, rdma.Transport: over TCP in one write
// where Send makes one a frame). The agent sends what one Ready sends
// with it, so that a Ready costs one system call and one wake-up of the
// peer's reader however many messages it has; it never waits for more.
// Both methods return how many frames went, in order; TrySendBatch stops
// with transport.ErrWouldBlock where TrySend would refuse.
type BatchSender interface {
	SendBatch(frames []transport.OutFrame) (int, error)
	TrySendBatch(frames []transport.OutFrame) (int, error)
}

// Poller is a Transport that can deliver what arrived for this host
// inline, on the caller's thread, without blocking or a system call
// (rdma.Transport.Poll: frames the peer wrote into this host's ring). On a
// host that serves the VM live the hook calls it on the vCPU thread at
// every exit, holding no lock, so that an acknowledgement is read, and the
// outputs it releases performed, with no thread hand-off. The transport
// delivers through HandleFrame, as its own poller would.
type Poller interface {
	Poll() int
}

// Fencer is a Transport that can take the peer's right to write into
// this host's memory and drop the connection (rdma.Transport.Fence: the
// ring the peer writes into). A host that halts (another host holds a
// newer epoch: this one was deposed, or refused) fences before Run
// returns, so that nothing a peer still writes lands where this host
// reads; a host that goes live fences its old primary the same way
// (the daemon's OnGoLive).
type Fencer interface {
	Fence() error
}

// Arbiter grants epochs (lockstep/arbiter.File, .Memory).
type Arbiter interface {
	Acquire(ctx context.Context, vmID string, epoch uint64) (granted bool, fence uint64, err error)
}

// DiskFence is the fence record of a disk both hosts share
// (vmm.DiskFence): every block write this host makes presents the fence
// token its release carries, and a token lower than the record's is
// refused with vmm.ErrFenced, so that a stale primary cannot write after
// a new one went live.
type DiskFence interface {
	// Raise makes fence the lowest token the disk takes writes under.
	Raise(fence uint64) error
	// Write performs write under fence, or refuses it.
	Write(fence uint64, write func() error) error
}

var _ DiskFence = (*vmm.DiskFence)(nil)

// VM is what the agent drives of a vmm.Machine.
type VM interface {
	Resume(pauseAfterExits uint64) error
	Pause() error
	Snapshot(kind vmm.SnapshotKind) (*vmm.Snapshot, error)
	// SnapshotLive copies the VM while it runs, for pre-copy: a torn copy
	// that the snapshots after it repair.
	SnapshotLive(kind vmm.SnapshotKind) (*vmm.Snapshot, error)
	Restore(s *vmm.Snapshot) error
	Status() vmm.Status
	// Deliver performs an output no exit of this VM holds: one a
	// checkpoint carried, released or persisted by this host later.
	Deliver(d vmm.Device, op uint32, arg uint64, data []byte) error
	Close() error
}

var _ VM = (*vmm.Machine)(nil)

// Defaults for Config fields left zero.
const (
	DefaultTickInterval = 10 * time.Millisecond
	arbiterTimeout      = 5 * time.Second
	// secondaryDiskFailingPeerTimeouts is SecondaryDiskFailingMax in peer
	// timeouts: the primary gives up a silent secondary after one, and
	// one that cannot write stalls it as surely; a few more let a
	// passing error (space freed at once) heal without a re-protection.
	secondaryDiskFailingPeerTimeouts = 3
)

// Config configures an Agent.
type Config struct {
	// Node configures the protocol; Node.Role says whether this host starts
	// as primary or secondary.
	Node lockstep.Config
	// NewVM creates an empty, paused VM whose exits go to hook. The
	// primary calls it once and then Boot; the secondary calls it for
	// every checkpoint it restores (a fresh VM is the simplest clean
	// state to restore into, whatever the old one was doing).
	NewVM func(hook vmm.ExitHook) (VM, error)
	// Boot loads the guest into the primary's new VM.
	Boot func(VM) error
	// Arbiter decides which host is primary.
	Arbiter Arbiter
	// TickInterval is the length of one protocol tick.
	TickInterval time.Duration
	// WaitForSecondary keeps the primary's VM paused until a secondary is
	// in step, so that no output leaves unprotected.
	WaitForSecondary bool
	// OnRelease, if set, sees every output as it is handed to its backend
	// (on the loop goroutine, before the backend).
	OnRelease func(o lockstep.Output)
	// OnReplayed, if set, sees every output a replaying VM produced once
	// the node has accepted it for comparison, before any acknowledgement
	// of it can leave. It runs on the vCPU thread with the agent's lock
	// held: it must not call the Agent.
	OnReplayed func(exitIndex uint64, device vmm.Device, data []byte)
	// SeparateStorage says each host has its own copy of the guest's disk
	// (vmm snapshots carry the disk's contents to a joining secondary).
	// A secondary then applies each block write its VM reproduced to its
	// own disk once the primary reports it released (CmdPersist), so its
	// copy follows the primary's and is current when it goes live.
	// Without it the hosts share one disk and a secondary writes nothing.
	SeparateStorage bool
	// DiskFence, if set, fences the disk both hosts share (shared
	// storage): every block write presents its release's fence token, and
	// going live raises the record to this host's token first. A write
	// refused there (a newer primary raised it) stops the agent with
	// ErrHalted, dropping every output queued behind the write.
	DiskFence DiskFence
	// SecondaryDiskFailingMax is how long a block write may fail on a
	// secondary (a full disk) before the secondary leaves the pair: its
	// VM is paused meanwhile, and the primary stalls once the secondary
	// lags a log window, so a secondary that cannot write would take the
	// primary's service down. Run then returns ErrSecondaryDiskFailing;
	// the caller closes the transport, so that the primary finds its peer
	// lost and goes on unprotected. Zero: secondaryDiskFailingPeerTimeouts
	// peer timeouts (Node.PeerTimeoutTicks × TickInterval).
	SecondaryDiskFailingMax time.Duration
	// OnGoLive, if set, runs on the loop when this host becomes primary
	// after a failover, before any output is released and before the VM's
	// exits are served live: plug the live NIC in, announce the VM's MAC.
	// An error stops the agent (the VM cannot serve as it should).
	OnGoLive func(epoch, fence uint64) error
	// Lease, if set, is the lease the arbiter's grants hold under
	// (lockstep/arbiter/etcd). Every output is performed only while its
	// Check returns nil, checked by the disk writer at the moment it
	// performs the output; once Lost is closed Run returns ErrHalted, and
	// every output not yet performed is dropped.
	Lease Lease
	// OnEpoch, if set, runs on the loop when the arbiter granted this
	// host, as primary, an epoch (its first, and each after it lost its
	// secondary), before any output of that epoch is released: record
	// that this host's disk follows the epoch. An error stops the agent.
	OnEpoch func(epoch, fence uint64) error
	// Logger receives the agent's events (role changes, checkpoints,
	// restores, halts). Nil: slog.Default().
	Logger *slog.Logger

	// checkpointState, in tests, sees the paused VM at every checkpoint
	// this host takes for its secondary (after the snapshot) or restores
	// (before it runs on), with the checkpoint's id and whether it was
	// an increment: the proof that both sides hold one state there.
	checkpointState func(id uint64, increment bool, vm VM)
	// failIncrement, in tests, fails the restore of the resyncs'
	// increments it returns an error for, as the VMM's would, once the
	// successor VM is made.
	failIncrement func(id uint64) error
}

// Stats counts what went wrong without stopping the agent.
type Stats struct {
	SendErrors  uint64 // frames the transport could not send (the protocol resends)
	FrameErrors uint64 // received frames that did not parse (each dropped its connection)
	StepErrors  uint64 // frames the node refused (stale epoch, wrong VM)
	Divergences uint64 // times the replica left the primary's path (secondary)
	Released    uint64 // outputs handed to their backends
	Restores    uint64 // checkpoints restored (secondary)
	Checkpoints uint64 // checkpoints taken (primary)
	Stalls      uint64 // times the vCPU was stalled for a lagging secondary
	// DiskWriteErrors counts block write attempts that failed (a full
	// disk); each is retried until it succeeds, with the VM paused.
	DiskWriteErrors uint64
	// DiskFailing: a block write is failing now, so the VM is paused and
	// no output after that write leaves (DiskError says why).
	DiskFailing bool
	// GuestErrors counts the guest's requests that the VMM refused as
	// guest bugs (vmm.GuestError: an unknown op, a buffer outside its
	// memory, ...): the guest got an error status and went on. Every
	// replica refuses the same ones, so they are not logged.
	GuestErrors uint64
	// Pauses counts the times the node paused the VM for a checkpoint (a
	// resync, or a join's last increment: primary), and PausedFor is how
	// long those pauses lasted in all, the one under way excluded.
	Pauses    uint64
	PausedFor time.Duration
	// IncrementalRestores counts the restores (of Restores) that applied
	// a resync's increment onto this host's VM rather than a full
	// checkpoint into a new one, and RestoreFailures the increments that
	// could not be applied, each followed by a full checkpoint
	// (secondary). IncrementalCheckpoints counts the checkpoints (of
	// Checkpoints) taken as such increments (primary).
	IncrementalRestores    uint64
	RestoreFailures        uint64
	IncrementalCheckpoints uint64
	// StaleCheckpointFrames counts checkpoint chunks and dones dropped
	// unsent because the node no longer ships their checkpoint (the join
	// was given up, or the checkpoint is restored).
	StaleCheckpointFrames uint64
}

// Agent runs one protected VM on this host.
type Agent struct {
	// Guards, as written after each field:
	//   set before Run: written by New (or a test) and only read after.
	//   mu held:        read and written with mu held, on any goroutine.
	//   readyMu held:   read and written with readyMu held (whoever
	//                   performs a Ready: the loop or an inline flush).
	//   loop only:      read and written by the loop goroutine (Run, and
	//                   the commands it alone performs).
	//   atomic:         a sync/atomic value, or a type that locks itself.
	// Lock order (doc.go): readyMu, then mu; mu is never held while
	// waiting for readyMu (the hook and HandleFrame only TryLock it).

	cfg Config // set before Run

	// mu guards the node, the table of held outputs and the flags below
	// it; cond (on mu) wakes a vCPU thread waiting at an exit the log
	// does not reach yet.
	mu      rankedMutex
	cond    *sync.Cond           // set before Run
	node    *lockstep.Node       // mu held
	handles map[uint64]heldEntry // mu held: output ID → held output
	abort   bool                 // mu held: make a waiting hook give up (VM replaced or stopping)
	pausing bool                 // mu held: the loop wants the VM paused: a stalled hook must return
	// liveGate keeps a secondary's hook from serving exits live until the
	// loop has performed the Ready that took it live (OnGoLive, and the
	// outputs the old primary may have released): the node says Live as
	// soon as it switches, which is before the loop gets to that Ready.
	liveGate bool       // mu held
	clock    guestClock // mu held: the guest's clock across hosts (clock.go)

	// readyMu makes one goroutine at a time take a Ready from the node and
	// perform it, so that outputs leave and messages go in the node's
	// order: the loop (Lock), or the hook on the vCPU thread and
	// HandleFrame on a transport reader (TryLock only, see flushInline).
	// Lock order: readyMu, then mu.
	readyMu rankedMutex
	// tr is set by Run before started; it is used with readyMu held.
	tr Transport
	// deferred are messages a transport reader could not send without
	// waiting; whoever sends next with readyMu held sends them first, and
	// the loop sends them when poked.
	deferred []encoded // readyMu held
	// batch is sendAll's frames for a BatchSender, reused.
	batch []transport.OutFrame // readyMu held
	enc   []byte               // readyMu and mu held (takeReady's encoding buffer)
	// bulk sends what perform queues of checkpoints (bulksend.go), on
	// its own goroutine that Run starts and waits for.
	bulk *bulkSender // set before Run; locks itself
	// inlineErr is the first error an inline perform (flushInline) met:
	// the loop returns it, and no goroutine performs inline after it.
	inlineErr error // readyMu held
	// started: Run has set tr, so HandleFrame and the hook may perform.
	started atomic.Bool // atomic
	// pollAtExits: this host serves the VM live (a primary, or a
	// secondary once it went live), so the hook polls a Poller transport
	// at every exit for the acknowledgements. A replaying secondary does
	// not: its vCPU thread waits for the log at its exits, and its
	// transport's poller must deliver the log (and send the acks) then.
	pollAtExits atomic.Bool // atomic

	// vm is the VM the loop drives. Run sets a primary's before its first
	// Ready; after that only restore replaces it, inside a command, so
	// with readyMu held: an inline perform (which may deliver an output a
	// checkpoint carried through it) reads it with readyMu held.
	vm VM // loop only to write; readyMu held or loop to read
	// joinVM holds the pre-copy parts a joining secondary loaded ahead
	// of their chain's restore (nil: none); nothing runs it.
	joinVM *joinVM // loop only (commands)
	// baseVM is vm when it can say what it changed since the checkpoint
	// it restored (resyncBase, which the node calls); nil otherwise.
	baseVM  incrementalVM // mu held
	baseErr string        // mu held: why resyncBase last gave none ("": it gave one)
	booted  bool          // loop only: the VM holds a guest (loaded or restored)
	running bool          // loop only: the loop asked the VM to run
	stalled bool          // loop only
	paused  bool          // loop only
	// pausedAt is when the node last paused the VM (for Stats.PausedFor).
	pausedAt time.Time // loop only
	// diskPaused: the disk writer has a write failing (diskWriter.failing
	// as the loop last saw it), so the VM is paused.
	diskPaused bool       // loop only
	halted     bool       // loop only
	pause      pauseTimes // loop only: the pause under way for a checkpoint
	tail       pauseTail  // what follows the last such pause, up to the first frame out
	joinGC     joinGC     // the collector kept off across a join's pause (joingc.go)
	haltWhy    string     // loop only
	guarded    bool       // loop only: a secondary was in step at least once
	granted    bool       // loop only: this host was primary in some epoch: its VM may run

	// arbFailures counts the arbiter's errors in a row, arbPermanent those
	// of them that cannot pass by themselves (see permanentArbiterError).
	arbFailures, arbPermanent int // loop only

	wake    chan struct{}       // set before Run
	arbRes  chan arbiterAnswer  // set before Run
	liveRes chan liveCheckpoint // set before Run: a live (pre-copy) checkpoint taken
	stop    chan struct{}       // set before Run; closed by Stop
	once    sync.Once           // Stop's

	// bugReleaseOnHold plants a bug for the tests that prove the checks
	// work: a primary's output leaves when the guest makes it.
	bugReleaseOnHold bool // set before Run
	// bugWaitForReadyMu plants the lock-order inversion the lock-order
	// test must catch: an inline flush waits for readyMu holding mu.
	bugWaitForReadyMu bool // set before Run

	stats struct {
		send, frame, step, diverge, released, restores, ckpts, stalls, persisted, tooLarge, guestErrors atomic.Uint64
		pauses, pausedNs, staleBulk                                                                     atomic.Uint64
		incRestores, restoreFailures, incCkpts                                                          atomic.Uint64
	} // atomic
	holdLatency latencyRecorder // atomic (its own lock)
	log         *slog.Logger    // set before Run
	stepLog     stepErrLog      // atomic (its own lock)
	frameLog    stepErrLog      // atomic (its own lock): frames that do not parse
	sync        syncProgress    // atomic
	disk        *diskWriter     // set before Run; safe for concurrent use, Run stops it
}

// New returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.NewVM == nil {
		return nil, errors.New("agent: Config.NewVM is nil: give a function that creates the VM")
	}
	if cfg.Arbiter == nil {
		return nil, errors.New("agent: Config.Arbiter is nil: give an arbiter (lockstep/arbiter)")
	}
	if cfg.Node.Role == wire.RolePrimary && cfg.Boot == nil {
		return nil, errors.New("agent: a primary needs Config.Boot to load its guest")
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = DefaultTickInterval
	}
	if cfg.TickInterval < 0 {
		return nil, fmt.Errorf("agent: TickInterval %v is negative", cfg.TickInterval)
	}
	if cfg.SecondaryDiskFailingMax < 0 {
		return nil, fmt.Errorf("agent: SecondaryDiskFailingMax %v is negative", cfg.SecondaryDiskFailingMax)
	}
	if cfg.SeparateStorage {
		if cfg.Node.Persistent != nil {
			return nil, errors.New("agent: SeparateStorage sets Node.Persistent itself: leave it nil")
		}
		cfg.Node.Persistent = isDiskWrite
	}
	// Outputs are done when the disk writer says so (Agent.durable).
	cfg.Node.ConfirmDurable = true
	var a *Agent
	if cfg.Node.ResyncBase == nil {
		cfg.Node.ResyncBase = func() []byte { return a.resyncBase() }
	}
	n, err := lockstep.NewNode(cfg.Node)
	if err != nil {
		return nil, err
	}
	a = &Agent{
		cfg: cfg, node: n, handles: map[uint64]heldEntry{},
		wake:     make(chan struct{}, 1),
		arbRes:   make(chan arbiterAnswer, 1),
		liveRes:  make(chan liveCheckpoint, 1),
		stop:     make(chan struct{}),
		liveGate: cfg.Node.Role != wire.RolePrimary,
		log:      cfg.Logger,
		bulk:     newBulkSender(),
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.holdLatency.init()
	startLockHoldProfile()
	a.disk = newDiskWriter(a.log, a.poke, a.durable)
	if cfg.Lease != nil {
		a.disk.gate = cfg.Lease.Check
	}
	a.disk.leaveAfter = cfg.SecondaryDiskFailingMax
	if a.disk.leaveAfter == 0 {
		ticks := cmp.Or(cfg.Node.PeerTimeoutTicks, lockstep.DefaultPeerTimeoutTicks)
		a.disk.leaveAfter = secondaryDiskFailingPeerTimeouts * time.Duration(ticks) * cfg.TickInterval
	}
	a.disk.mayLeave = func() bool { return a.Status().Role == lockstep.RoleSecondary }
	a.mu.rank, a.readyMu.rank = rankMu, rankReadyMu
	a.pollAtExits.Store(cfg.Node.Role == wire.RolePrimary)
	a.cond = sync.NewCond(&a.mu)
	return a, nil
}

// LaneDropper is a transport that can close one lane's connection as if
// it had failed (tcpfallback.Transport.DropLane, rdma.Transport.DropLane):
// the lane is reported down, nothing more is delivered from that
// connection, and a dialer makes it again. It returns the peer's address,
// or "" when the lane had no connection.
type LaneDropper interface {
	DropLane(l transport.Lane, err error) (peer string)
}

// ErrBadFrame is what a connection is dropped with when the peer sent a
// frame that passed the transport's checks but is not a protocol message
// (package wire cannot parse it).
var ErrBadFrame = errors.New("agent: the peer sent a frame that is not a protocol message")

// HandleFrame takes a frame from the transport (its OnFrame): it steps the
// node right there, on the transport's reading goroutine, and sends what
// that asks for (a secondary's acknowledgement of the log entry in the
// frame, a primary's releases on an acknowledgement) before returning, so
// that no hand-off to the loop sits in the round trip an output waits for.
// What needs the loop (commands, a new peer) is left to it. The payload is
// lent only for the call; the node copies what it keeps.
//
// A frame that does not parse is a protocol error, handled as the
// transport handles a frame that fails its own checks: it is counted
// (Stats.FrameErrors), logged with the peer and the reason (at most a
// line a second), and the connection it came on is dropped (when Run's
// transport is a LaneDropper), so that nothing more is read from a
// stream that is out of step and the peer connects again. The VM goes
// on: a lost connection costs a re-protection or a failover, decided by
// the arbiter, never the VM.
func (a *Agent) HandleFrame(f transport.Frame) { a.HandleFrameFrom(nil, f) }

// HandleFrameFrom is HandleFrame for a host with more than one transport:
// src is the one that delivered f, whose connection a frame that does
// not parse drops. Nil: Run's transport, if it is a LaneDropper.
func (a *Agent) HandleFrameFrom(src LaneDropper, f transport.Frame) {
	m, _, err := wire.Parse(f.Payload)
	if err != nil {
		a.badFrame(src, f, err)
		return
	}
	if _, ok := m.(*wire.Ack); ok {
		a.tail.markAck()
	}
	a.mu.Lock()
	if ack, ok := m.(*wire.Ack); ok && len(a.handles) > 0 {
		// Only while an output waits for one: each call is a trap
		// while a probe is attached.
		probeAckReceived(ack.Received)
	}
	stepErr := a.node.Step(m)
	if stepErr != nil {
		a.stats.step.Add(1)
	}
	if !f.Batched {
		a.flushInline()
		// New log items for a replaying hook to look at.
		a.cond.Broadcast()
	}
	a.mu.Unlock()
	if stepErr != nil {
		a.stepLog.log(a.log, m.Type(), stepErr)
	}
	switch m.Type() {
	case wire.TypeEntry, wire.TypeOutput, wire.TypeAck, wire.TypeHeartbeat:
	default:
		a.poke() // a change of phase the loop acts on (protected, restore, ...)
	}
}

// EndBatch is the transport's batch-end hook (tcpfallback.Config.
// OnBatchEnd): the frames delivered Batched since the last call have been
// stepped, and what they ask for is performed now, as HandleFrame
// performs it for a frame alone: a secondary sends one cumulative
// acknowledgement for the batch instead of one a frame, a primary
// releases what the batch's acknowledgements allow at once, and a
// replaying hook is woken once. The node's acknowledgement is of what it
// holds (Ack.Received counts only the log in order), so answering later
// never acknowledges more than arrived; and the transport ends a batch as
// soon as nothing more can be read without waiting, so nothing waits for
// frames yet to come.
func (a *Agent) EndBatch() {
	a.mu.Lock()
	a.flushInline()
	a.cond.Broadcast()
	a.mu.Unlock()
}

// badFrame counts, logs and drops the connection of a frame that did not
// parse (HandleFrame).
func (a *Agent) badFrame(src LaneDropper, f transport.Frame, perr error) {
	a.stats.frame.Add(1)
	if src == nil && a.started.Load() {
		// Run's transport never changes once started is set.
		src, _ = a.tr.(LaneDropper)
	}
	err := fmt.Errorf("%w (%s frame %d on the %s lane, %d bytes): %w", ErrBadFrame, f.Type, f.Seq, f.Lane, len(f.Payload), perr)
	peer := ""
	if src != nil {
		peer = src.DropLane(f.Lane, err)
	}
	ok, suppressed := a.frameLog.allow()
	if !ok {
		return
	}
	what := "dropped the connection; the peer connects again"
	if peer == "" {
		what = "no connection to drop (already closed, or the transport cannot drop one)"
		peer = "unknown"
	}
	a.log.Warn("frame from the peer does not parse: "+what+"; if this repeats, check that both hosts run the same ftvm version",
		"peer", peer, "lane", f.Lane.String(), "type", f.Type.String(), "seq", f.Seq, "bytes", len(f.Payload), "err", perr,
		"bad frames since the last such line", suppressed)
}

// PeerLost tells the agent that the transport lost its connection to the
// peer (a lane went down: reset, closed, or heartbeats timed out). The node
// acts on it at once instead of waiting out its own timeout
// (lockstep.Node.PeerLost); a connection that comes back costs at most a
// failover or a re-protection, never a second primary.
func (a *Agent) PeerLost() {
	a.mu.Lock()
	a.node.PeerLost()
	a.mu.Unlock()
	a.poke()
}

// Stop makes Run return and closes the VM. Held outputs are never released.
func (a *Agent) Stop() {
	a.once.Do(func() {
		close(a.stop)
		// A write failing on a full disk is given up now, unperformed,
		// with every output behind it.
		a.disk.abort()
		a.mu.Lock()
		a.abort = true
		a.cond.Broadcast()
		a.mu.Unlock()
	})
}

// Stats returns the counters.
func (a *Agent) Stats() Stats {
	// The node counts the divergences it finds (some when a record
	// arrives, with no exit waiting); the agent those its codec finds.
	a.mu.Lock()
	nodeDiv := a.node.Status().Divergences
	a.mu.Unlock()
	return Stats{
		SendErrors: a.stats.send.Load(), FrameErrors: a.stats.frame.Load(), StepErrors: a.stats.step.Load(),
		Divergences: nodeDiv + a.stats.diverge.Load(), Released: a.stats.released.Load(),
		Restores: a.stats.restores.Load(), Checkpoints: a.stats.ckpts.Load(), Stalls: a.stats.stalls.Load(),
		DiskWriteErrors: a.disk.errors.Load(), DiskFailing: a.disk.failing.Load(),
		GuestErrors: a.stats.guestErrors.Load(),
		Pauses:      a.stats.pauses.Load(), PausedFor: time.Duration(a.stats.pausedNs.Load()),
		IncrementalRestores: a.stats.incRestores.Load(), RestoreFailures: a.stats.restoreFailures.Load(),
		IncrementalCheckpoints: a.stats.incCkpts.Load(),
		StaleCheckpointFrames:  a.stats.staleBulk.Load(),
	}
}

// DiskError is the error of the block write that is failing now (the VM
// is paused until it succeeds), or "" when none is.
func (a *Agent) DiskError() string { return a.disk.err() }

// Status is the node's status.
func (a *Agent) Status() lockstep.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.node.Status()
}

// ErrHalted is returned by Run when the node halted: another host is
// primary, so this one must not act.
var ErrHalted = errors.New("agent: halted")

// ErrSecondaryDiskFailing is returned by Run on a secondary whose block
// writes failed for longer than Config.SecondaryDiskFailingMax: it left
// the pair so that the primary goes on. Free space on (or repair) the
// disk's filesystem and start the host again as a secondary.
var ErrSecondaryDiskFailing = errors.New("agent: this secondary's disk writes fail")

// Run drives the node until the guest has finished and every output left
// (primary), Stop is called, ctx ends or the node halts. It closes the VM
// before returning.
func (a *Agent) Run(ctx context.Context, tr Transport) (err error) {
	a.tr = tr
	a.started.Store(true)
	bulkDone := make(chan struct{})
	go a.runBulk(tr, a.stop, bulkDone)
	defer func() {
		if errors.Is(err, ErrHalted) {
			a.fenceOnHalt(tr)
		}
		a.Stop()
		<-bulkDone // nothing is sent after Run returns
		// No one performs a Ready any more: the disk writer and the VM
		// can go.
		a.readyMu.Lock()
		a.started.Store(false)
		a.readyMu.Unlock()
		a.disk.stop()
		a.dropJoinVM()
		a.joinGC.release() // the collector is the process's, not this run's
		if a.vm != nil {
			a.abandonExits(true)
			a.vm.Close()
		}
	}()
	if a.cfg.Node.Role == wire.RolePrimary {
		if a.vm, err = a.cfg.NewVM(a); err != nil {
			return fmt.Errorf("agent: creating the VM: %w", err)
		}
		if err := a.cfg.Boot(a.vm); err != nil {
			return fmt.Errorf("agent: loading the guest: %w", err)
		}
		a.booted = true
	}
	tick := time.NewTicker(a.cfg.TickInterval)
	defer tick.Stop()
	for {
		if err := a.followDisk(); err != nil {
			return err
		}
		if err := a.process(ctx); err != nil {
			return err
		}
		if a.halted {
			return fmt.Errorf("%w: %s", ErrHalted, a.haltWhy)
		}
		if done, err := a.finished(); done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.stop:
			return nil
		case <-a.leaseLost():
			return a.leaseHalt()
		case <-tick.C:
			a.mu.Lock()
			a.node.Tick()
			a.mu.Unlock()
		case <-a.wake:
		case r := <-a.arbRes:
			if err := a.arbiterAnswered(r); err != nil {
				return err
			}
		case r := <-a.liveRes:
			if err := a.checkpointTaken(r.id, r.data, r.digest, r.err); err != nil {
				return err
			}
		}
	}
}

// fenceOnHalt revokes the peer's access to this host's memory when Run
// stops on ErrHalted, if tr can (Fencer).
func (a *Agent) fenceOnHalt(tr Transport) {
	f, ok := tr.(Fencer)
	if !ok {
		return
	}
	if err := f.Fence(); err != nil {
		a.log.Warn("halted, and fencing the peer out of this host's memory failed; closing the transport still tears its ring down", "err", err)
		return
	}
	a.log.Info("halted: the peer's access to this host's memory is revoked")
}

// followDisk pauses the VM while the disk writer has a write failing and
// lets it run again once the write succeeded (the writer pokes the loop
// at both). Outputs after the failing write wait in the writer's queue
// regardless; the pause keeps the guest from going on as if its writes
// had landed.
func (a *Agent) followDisk() error {
	if a.disk.fenced.Load() {
		return fmt.Errorf("%w: a newer primary raised the shared disk's fence: this host's queued writes were refused and nothing after them left; restart it as a secondary", ErrHalted)
	}
	if a.disk.gated.Load() {
		return a.leaseHalt()
	}
	if a.disk.left.Load() {
		return fmt.Errorf("%w: a block write failed for longer than %v (%s), so this host left the pair and the primary goes on unprotected: free space on the disk's filesystem (or repair it), then start this host again as a secondary",
			ErrSecondaryDiskFailing, a.disk.leaveAfter, a.disk.leftErr.Load())
	}
	failing := a.disk.failing.Load()
	if failing == a.diskPaused {
		return nil
	}
	a.diskPaused = failing
	return a.applyRun()
}

// finished reports whether a primary's guest is done and nothing it said
// is still held back: the run is over.
func (a *Agent) finished() (bool, error) {
	if a.vm == nil || !a.booted {
		return false, nil
	}
	st := a.vm.Status()
	if st.State != vmm.Halted && st.State != vmm.Failed {
		return false, nil
	}
	a.mu.Lock()
	ns := a.node.Status()
	a.mu.Unlock()
	if st.State == vmm.Failed && !a.abortedVM(st.Err) {
		return true, fmt.Errorf("agent: the VM failed: %w", st.Err)
	}
	return ns.Role == lockstep.RolePrimary && ns.Held == 0, nil
}

func (a *Agent) abortedVM(err error) bool { return errors.Is(err, errAborted) }

// poke wakes the loop: the hook gave the node something to act on.
func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// errAborted is what a waiting hook returns when its VM is being replaced
// or the agent stops: it fails that VM, which nobody runs again.
var errAborted = errors.New("agent: exit abandoned: the VM is being replaced or stopped")
