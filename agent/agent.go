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
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
	"golang.org/x/sys/unix"
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

// maxDeferredMessages bounds the messages readers leave to the loop
// because the socket was full; beyond it a reader sends with Send, whose
// wait the transport bounds (tcpfallback.Config.SendTimeout).
const maxDeferredMessages = 4096

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
	// OnEpoch, if set, runs on the loop when the arbiter granted this
	// host, as primary, an epoch (its first, and each after it lost its
	// secondary), before any output of that epoch is released: record
	// that this host's disk follows the epoch. An error stops the agent.
	OnEpoch func(epoch, fence uint64) error
	// Logger receives the agent's events (role changes, checkpoints,
	// restores, halts). Nil: slog.Default().
	Logger *slog.Logger
}

// Stats counts what went wrong without stopping the agent.
type Stats struct {
	SendErrors  uint64 // frames the transport could not send (the protocol resends)
	FrameErrors uint64 // received frames that did not parse
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
}

// heldOutput is an output the VMM keeps out of the world: *vmm.Output.
type heldOutput interface {
	Release() error
	Drop()
}

// Agent runs one protected VM on this host.
type Agent struct {
	cfg Config

	// mu guards the node, handles and the flags below it; cond wakes a
	// vCPU thread waiting at an exit the log does not reach yet.
	mu      sync.Mutex
	cond    *sync.Cond
	node    *lockstep.Node
	handles map[uint64]heldEntry // output ID → held output
	abort   bool                 // make a waiting hook give up (VM replaced or stopping)
	pausing bool                 // the loop wants the VM paused: a stalled hook must return
	// liveGate keeps a secondary's hook from serving exits live until the
	// loop has performed the Ready that took it live (OnGoLive, and the
	// outputs the old primary may have released): the node says Live as
	// soon as it switches, which is before the loop gets to that Ready.
	liveGate bool
	clock    guestClock // the guest's clock across hosts (clock.go)

	// Owned by the loop goroutine.
	tr      Transport
	vm      VM
	booted  bool // the VM holds a guest (loaded or restored)
	running bool // the loop asked the VM to run
	stalled bool
	paused  bool
	// diskPaused: the disk writer has a write failing (diskWriter.failing
	// as the loop last saw it), so the VM is paused.
	diskPaused bool
	halted     bool
	haltWhy    string
	guarded    bool // a secondary was in step at least once
	granted    bool // this host was primary in some epoch: its VM may run
	enc        []byte

	// arbFailures counts the arbiter's errors in a row, arbPermanent those
	// of them that cannot pass by themselves (see permanentArbiterError).
	arbFailures, arbPermanent int

	wake    chan struct{}
	arbRes  chan arbiterAnswer
	liveRes chan liveCheckpoint // a live (pre-copy) checkpoint taken
	stop    chan struct{}
	once    sync.Once

	// bugReleaseOnHold plants a bug for the tests that prove the checks
	// work: a primary's output leaves when the guest makes it.
	bugReleaseOnHold bool

	stats struct {
		send, frame, step, diverge, released, restores, ckpts, stalls, persisted, tooLarge, guestErrors atomic.Uint64
	}
	holdLatency latencyRecorder
	log         *slog.Logger
	stepLog     stepErrLog
	// perf makes one goroutine at a time take a Ready from the node and
	// perform it, so that outputs leave and messages go in the node's
	// order: the loop (Lock), or the hook on the vCPU thread (TryLock
	// only, see flushInline). Lock order: perf, then mu.
	perf sync.Mutex
	// deferred are messages a transport reader could not send without
	// waiting; whoever sends next with perf held sends them first, and
	// the loop sends them when poked. perf must be held.
	deferred []encoded
	// started: Run has set tr, so HandleFrame may send.
	started atomic.Bool
	sync    syncProgress
	disk    *diskWriter // used by the loop; Run stops it
}

// heldEntry is an output the VMM holds, and when it was held (for the
// hold latency a primary reports).
type heldEntry struct {
	h  heldOutput
	at time.Time
}

// liveCheckpoint is a pre-copy part taken on a goroutine of its own.
type liveCheckpoint struct {
	id     uint64
	data   []byte
	digest [wire.DigestBytes]byte // lockstep.DataDigest(data), made beside it
	err    error
}

type arbiterAnswer struct {
	epoch, fence uint64
	granted      bool
	err          error
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
	n, err := lockstep.NewNode(cfg.Node)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, node: n, handles: map[uint64]heldEntry{},
		wake:     make(chan struct{}, 1),
		arbRes:   make(chan arbiterAnswer, 1),
		liveRes:  make(chan liveCheckpoint, 1),
		stop:     make(chan struct{}),
		liveGate: cfg.Node.Role != wire.RolePrimary,
		log:      cfg.Logger,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.holdLatency.init()
	a.disk = newDiskWriter(a.log, a.poke, a.durable)
	a.disk.leaveAfter = cfg.SecondaryDiskFailingMax
	if a.disk.leaveAfter == 0 {
		ticks := cmp.Or(cfg.Node.PeerTimeoutTicks, lockstep.DefaultPeerTimeoutTicks)
		a.disk.leaveAfter = secondaryDiskFailingPeerTimeouts * time.Duration(ticks) * cfg.TickInterval
	}
	a.disk.mayLeave = func() bool { return a.Status().Role == lockstep.RoleSecondary }
	a.cond = sync.NewCond(&a.mu)
	return a, nil
}

// HandleFrame takes a frame from the transport (its OnFrame): it steps the
// node right there, on the transport's reading goroutine, and sends what
// that asks for (a secondary's acknowledgement of the log entry in the
// frame, a primary's releases on an acknowledgement) before returning, so
// that no hand-off to the loop sits in the round trip an output waits for.
// What needs the loop (commands, a new peer) is left to it. The payload is
// lent only for the call; the node copies what it keeps.
func (a *Agent) HandleFrame(f transport.Frame) {
	m, _, err := wire.Parse(f.Payload)
	if err != nil {
		a.stats.frame.Add(1)
		return
	}
	a.mu.Lock()
	stepErr := a.node.Step(m)
	if stepErr != nil {
		a.stats.step.Add(1)
	}
	a.flushInline()
	// New log items for a replaying hook to look at.
	a.cond.Broadcast()
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

// ErrArbiterUnusable is returned by Run when the arbiter failed
// arbiterPermanentTries times in a row with an error that does not pass by
// itself (see permanentArbiterError): this host cannot learn whether it
// may act, and waiting would not change that.
var ErrArbiterUnusable = errors.New("agent: the arbiter cannot be used")

// arbiterPermanentTries is how many permanent errors in a row end Run.
// More than one: a remount or a fail-over of the shared storage can show
// ENOENT or EACCES for a moment. With the node's back-off (3, 6, 12, 24
// ticks) five tries take about half a second at 10 ms ticks.
const arbiterPermanentTries = 5

// permanentArbiterError reports whether an arbiter's error will not pass
// by itself: the state file or its directory is missing, read-only or
// forbidden, or the state is corrupt. Timeouts, lock contention and
// network errors are transient: the node asks again, backing off.
func permanentArbiterError(err error) bool {
	for _, e := range []error{unix.EROFS, unix.EACCES, unix.EPERM, unix.ENOENT, unix.ENOTDIR, unix.EISDIR, arbiter.ErrCorruptState} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// arbiterAnswered hands the arbiter's answer to the node. An error is
// logged at ERROR with what to do; the node asks again after a back-off
// (lockstep.Config.ArbiterRetryMaxTicks), except that an error that
// cannot pass ends Run after arbiterPermanentTries.
func (a *Agent) arbiterAnswered(r arbiterAnswer) error {
	// perf keeps a transport reader from releasing what the grant allows
	// (flushInline) before OnEpoch has run.
	a.perf.Lock()
	a.mu.Lock()
	before := a.node.Status().Epoch
	a.node.ArbiterResult(r.epoch, r.granted, r.fence, r.err)
	ns := a.node.Status()
	a.mu.Unlock()
	var hookErr error
	if a.cfg.OnEpoch != nil && ns.Role == lockstep.RolePrimary && ns.Epoch != before {
		hookErr = a.cfg.OnEpoch(ns.Epoch, ns.Fence)
	}
	a.perf.Unlock()
	if hookErr != nil {
		return fmt.Errorf("agent: recording epoch %d: %w", ns.Epoch, hookErr)
	}
	if r.err == nil {
		if a.arbFailures > 0 {
			a.log.Info("the arbiter answers again", "epoch", r.epoch, "failed_before", a.arbFailures)
		}
		a.arbFailures, a.arbPermanent = 0, 0
		return nil
	}
	a.arbFailures++
	if permanentArbiterError(r.err) {
		a.arbPermanent++
	} else {
		a.arbPermanent = 0
	}
	if a.arbPermanent >= arbiterPermanentTries {
		return fmt.Errorf("%w: asking for epoch %d failed %d times in a row: %v: the arbiter's directory must exist on storage every host of this VM shares, and this host must be able to write it (check --arbiter-dir, its mount and its permissions), then start this host again", ErrArbiterUnusable, r.epoch, a.arbPermanent, r.err)
	}
	a.log.Error("the arbiter could not be asked for an epoch; this host neither serves nor takes over until it answers; asking again",
		"epoch", r.epoch, "failures", a.arbFailures, "err", r.err,
		"what_to_do", "make the arbiter's directory (--arbiter-dir) reachable and writable from this host")
	return nil
}

// Run drives the node until the guest has finished and every output left
// (primary), Stop is called, ctx ends or the node halts. It closes the VM
// before returning.
func (a *Agent) Run(ctx context.Context, tr Transport) (err error) {
	a.tr = tr
	a.started.Store(true)
	defer func() {
		a.Stop()
		// No one performs a Ready any more: the disk writer and the VM
		// can go.
		a.perf.Lock()
		a.started.Store(false)
		a.perf.Unlock()
		a.disk.stop()
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

// followDisk pauses the VM while the disk writer has a write failing and
// lets it run again once the write succeeded (the writer pokes the loop
// at both). Outputs after the failing write wait in the writer's queue
// regardless; the pause keeps the guest from going on as if its writes
// had landed.
func (a *Agent) followDisk() error {
	if a.disk.fenced.Load() {
		return fmt.Errorf("%w: a newer primary raised the shared disk's fence: this host's queued writes were refused and nothing after them left; restart it as a secondary", ErrHalted)
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

// work is one Ready, copied out of the node so that it can be performed
// without the lock (the vCPU thread must be able to finish an exit while
// the loop waits for it to pause).
type work struct {
	cmds   []lockstep.Command
	rel    []lockstep.Output
	drop   []uint64
	msgs   []encoded
	goLive bool // cmds take this host live: open the gate after rel
	// fromReader: performed on a transport reader (HandleFrame), which
	// must not wait for room in a socket (see send).
	fromReader bool
}

type encoded struct {
	typ transport.Type
	b   []byte
}

// process performs Ready after Ready until the node has nothing to do.
func (a *Agent) process(ctx context.Context) error {
	for {
		a.perf.Lock()
		a.sendDeferred()
		a.mu.Lock()
		if !a.node.HasReady() {
			ns := a.node.Status()
			// A Step may have brought log items without any Ready: let
			// a hook waiting for them look again.
			a.cond.Broadcast()
			a.mu.Unlock()
			a.perf.Unlock()
			if ns.Protected && !a.guarded {
				a.guarded = true
				if err := a.applyRun(); err != nil {
					return err
				}
			}
			// A primary's VM starts once the arbiter granted it its epoch:
			// no command says so when no secondary is there to join (the
			// node has nothing to resume, it never paused).
			if ns.Role == lockstep.RolePrimary && ns.Epoch > 0 && !a.granted {
				a.granted = true
				if err := a.applyRun(); err != nil {
					return err
				}
			}
			return nil
		}
		w := a.takeReady()
		a.mu.Unlock()
		err := a.perform(ctx, &w)
		a.perf.Unlock()
		if err != nil {
			return err
		}
		a.mu.Lock()
		if w.goLive {
			a.liveGate = false
		}
		a.cond.Broadcast()
		a.mu.Unlock()
	}
}

// takeReady copies the node's Ready out (encoding its messages) and
// advances the node. a.mu and a.perf held.
func (a *Agent) takeReady() work {
	rd := a.node.Ready()
	w := work{
		cmds: append([]lockstep.Command(nil), rd.Commands...),
		rel:  append([]lockstep.Output(nil), rd.Release...),
		drop: append([]uint64(nil), rd.Drop...),
	}
	for _, m := range rd.Messages {
		a.enc = m.Append(a.enc[:0])
		w.msgs = append(w.msgs, encoded{typ: frameType(m), b: append([]byte(nil), a.enc...)})
	}
	for _, c := range w.cmds {
		w.goLive = w.goLive || c.Kind == lockstep.CmdGoLive
	}
	a.node.Advance(rd)
	return w
}

// flushInline is called with a.mu held by the hook (on the vCPU thread)
// after it gave the node something to send, and by HandleFrame (on a
// transport reader) after a Step: it performs the node's Ready right there
// when it asks for no command, so that a log entry, an acknowledgement or
// a release happens now. Handing it to the loop costs a thread wake-up,
// and from the vCPU thread worse: the loop's goroutine cannot run on that
// thread's processor until the vCPU's KVM_RUN gives it up (60 to 100 µs
// measured here, most of an output's hold time). Commands (pause,
// checkpoint, stall, ...) stay with the loop: a pause waits for the vCPU
// thread itself. Returns with a.mu held.
func (a *Agent) flushInline() { a.flushInlineOn(false) }

// flushInlineVCPU is flushInline for the hook, on the vCPU thread.
func (a *Agent) flushInlineVCPU() { a.flushInlineOn(true) }

func (a *Agent) flushInlineOn(onVCPU bool) {
	if !a.perf.TryLock() {
		a.poke() // the loop is performing; it looks again after
		return
	}
	if !a.started.Load() {
		a.perf.Unlock() // Run has not begun, or has ended
		return
	}
	if !a.node.HasReady() {
		a.perf.Unlock()
		return
	}
	if len(a.node.Ready().Commands) > 0 {
		a.perf.Unlock()
		a.poke()
		return
	}
	w := a.takeReady()
	w.fromReader = !onVCPU
	a.mu.Unlock()
	// Without commands perform neither fails nor needs the loop's state.
	a.perform(context.Background(), &w)
	a.perf.Unlock()
	if onVCPU && len(w.msgs) > 0 {
		yieldToSoftirq()
	}
	a.mu.Lock()
	a.cond.Broadcast()
}

// yieldToSoftirq gives this CPU up for a moment after the vCPU thread sent
// a frame. The kernel hands the frame to the peer in a softirq on this
// CPU, and where ksoftirqd has that work it runs only when this thread
// stops running: a vCPU thread goes straight back into KVM_RUN, so the
// frame waited for the guest's next blocking exit (measured here: one-way
// 40 to 570 µs on a path whose idle round trip is 20 µs, and an output's
// hold p50 of 120 to 165 µs; with the yield, 2 to 30 µs).
func yieldToSoftirq() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// perform does one Ready in the order lockstep.Ready documents: commands,
// releases, drops, messages.
func (a *Agent) perform(ctx context.Context, w *work) error {
	for _, c := range w.cmds {
		if err := a.command(ctx, c); err != nil {
			return fmt.Errorf("agent: %s: %w", c.Kind, err)
		}
	}
	protected := false
	if len(w.rel) > 0 {
		a.mu.Lock()
		protected = a.node.Status().Protected
		a.mu.Unlock()
	}
	now := time.Now()
	for _, o := range w.rel {
		e, ok := a.take(o.ID)
		if a.cfg.OnRelease != nil {
			a.cfg.OnRelease(o)
		}
		a.stats.released.Add(1)
		if !ok {
			// An output a checkpoint carried (held on the old primary
			// when it was taken): no exit of this VM holds it.
			if err := a.deliverCarried(o); err != nil {
				return fmt.Errorf("agent: releasing output seq %d that a checkpoint carried: %w", o.Seq, err)
			}
			continue
		}
		if protected {
			a.holdLatency.record(now.Sub(e.at))
		}
		// A backend error is the device's to report (the guest already
		// got its status when the output was held); the protocol's
		// promise is only that nothing leaves before Ready says so. A
		// block write is made durable by the disk writer, which retries
		// it until it is; any other output leaves only once the writes
		// released before it are durable (diskWriter.release).
		if isDiskWrite(o.Device) {
			a.disk.enqueue(fmt.Sprintf("seq %d", o.Seq), o.Seq, a.fenced(o, e.h.Release))
			continue
		}
		a.disk.release(fmt.Sprintf("seq %d", o.Seq), o.Seq, e.h.Release)
	}
	if w.goLive {
		// The new primary's guest may read the disk as soon as the gate
		// opens: every write owed to it must be there.
		a.disk.drain()
	}
	for _, id := range w.drop {
		if e, ok := a.take(id); ok {
			e.h.Drop()
		}
	}
	for _, m := range w.msgs {
		if m.typ == transport.TypeCheckpoint {
			a.sync.sent.Add(int64(len(m.b)))
		}
		a.send(m, w.fromReader)
	}
	return nil
}

// durable tells the node that the output at seq, and every one released
// before it, is done where it went (the disk writer reports in order), so
// that the released-through it reports to the secondary never passes what
// is durable (lockstep.Config.ConfirmDurable).
func (a *Agent) durable(seq uint64) {
	a.mu.Lock()
	a.node.Durable(seq)
	a.mu.Unlock()
}

// fenced makes a primary's block write present the fence token of its
// release to the shared disk's fence record, when there is one.
func (a *Agent) fenced(o lockstep.Output, write func() error) func() error {
	f := a.cfg.DiskFence
	if f == nil {
		return write
	}
	return func() error { return f.Write(o.Fence, write) }
}

// send sends one message, in order after those deferred before it. On a
// transport reader it never waits for room in the socket: what the
// transport cannot take now is deferred to the loop (poked), up to
// maxDeferredMessages. a.perf must be held.
func (a *Agent) send(m encoded, fromReader bool) {
	if ts, ok := a.tr.(TrySender); ok && fromReader && len(a.deferred) < maxDeferredMessages {
		if len(a.deferred) == 0 {
			err := ts.TrySend(m.typ, m.b)
			if !errors.Is(err, transport.ErrWouldBlock) {
				if err != nil {
					a.stats.send.Add(1) // lost frames are the protocol's to resend
				}
				return
			}
		}
		a.deferred = append(a.deferred, m)
		a.poke()
		return
	}
	a.sendDeferred()
	if err := a.tr.Send(m.typ, m.b); err != nil {
		a.stats.send.Add(1) // lost frames are the protocol's to resend
	}
}

// sendDeferred sends what readers deferred, with sends that may wait (the
// transport bounds the wait). a.perf must be held.
func (a *Agent) sendDeferred() {
	for i, m := range a.deferred {
		if err := a.tr.Send(m.typ, m.b); err != nil {
			a.stats.send.Add(1)
		}
		a.deferred[i] = encoded{}
	}
	a.deferred = a.deferred[:0]
}

// take removes an output from the table of held outputs.
func (a *Agent) take(id uint64) (heldEntry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.handles[id]
	delete(a.handles, id)
	return e, ok
}

// carriedOutput decodes an output that no exit of vm holds (one a
// checkpoint carried) into the call that performs it through vm.
func carriedOutput(vm VM, o lockstep.Output) (func() error, error) {
	if vm == nil {
		return nil, errors.New("no VM to deliver it through")
	}
	dev, op := splitKind(o.Device)
	arg, data, err := decodeOutput(o.Data)
	if err != nil {
		return nil, err
	}
	return func() error { return vm.Deliver(dev, op, arg, data) }, nil
}

// deliverCarried performs an output a checkpoint carried: a block write
// through the disk writer, behind the writes queued before it, anything
// else at once.
func (a *Agent) deliverCarried(o lockstep.Output) error {
	do, err := carriedOutput(a.vm, o)
	if err != nil {
		return err
	}
	if isDiskWrite(o.Device) {
		a.disk.enqueue(fmt.Sprintf("seq %d (carried by a checkpoint)", o.Seq), o.Seq, a.fenced(o, do))
		return nil
	}
	return a.disk.release(fmt.Sprintf("seq %d (carried by a checkpoint)", o.Seq), o.Seq, do)
}

// persist applies a block write the primary released to this host's own
// disk, through the disk writer: through the VMM's hold if this VM made it,
// else from the bytes a checkpoint carried.
func (a *Agent) persist(o lockstep.Output) error {
	a.stats.persisted.Add(1)
	if e, ok := a.take(o.ID); ok {
		a.disk.enqueue(fmt.Sprintf("seq %d", o.Seq), o.Seq, e.h.Release)
		return nil
	}
	if err := a.deliverCarried(o); err != nil {
		return fmt.Errorf("writing seq %d, which a checkpoint carried, to this host's disk: %w", o.Seq, err)
	}
	return nil
}

func (a *Agent) command(ctx context.Context, c lockstep.Command) error {
	switch c.Kind {
	case lockstep.CmdStall:
		a.stats.stalls.Add(1)
		a.stalled = true
		return a.applyRun()
	case lockstep.CmdUnstall:
		a.stalled = false
		return a.applyRun()
	case lockstep.CmdPause:
		a.paused = true
		return a.applyRun()
	case lockstep.CmdResume:
		a.paused = false
		return a.applyRun()
	case lockstep.CmdTakeCheckpoint:
		return a.takeCheckpoint(c.Checkpoint)
	case lockstep.CmdRestoreCheckpoint:
		return a.restore(c.Checkpoint)
	case lockstep.CmdAcquire:
		if a.arbFailures == 0 {
			a.log.Info("asking the arbiter for an epoch", "epoch", c.Epoch)
		} else {
			a.log.Debug("asking the arbiter for an epoch again", "epoch", c.Epoch, "failures", a.arbFailures)
		}
		go a.acquire(ctx, c.Epoch)
		return nil
	case lockstep.CmdGoLive:
		// The hook learns it from the node (Live) at the next exit, once
		// this Ready is done (liveGate); the VM keeps running.
		a.log.Info("going live: this host is primary now", "epoch", c.Epoch, "fence", c.Fence)
		if a.cfg.DiskFence != nil {
			// Before anything of this host's is written: from here on
			// the old primary's writes are refused.
			if err := a.cfg.DiskFence.Raise(c.Fence); err != nil {
				return fmt.Errorf("raising the shared disk's fence to %d: %w", c.Fence, err)
			}
		}
		if a.cfg.OnGoLive != nil {
			if err := a.cfg.OnGoLive(c.Epoch, c.Fence); err != nil {
				return fmt.Errorf("switching to live devices: %w", err)
			}
		}
		return nil
	case lockstep.CmdHalt:
		a.log.Warn("halting", "reason", c.Reason)
		a.halted, a.haltWhy = true, c.Reason
		// The VM never runs again: a hook waiting for log a halted node
		// will never give must let go, or the pause below waits for it
		// forever.
		a.abandonExits(true)
		return a.applyRun()
	case lockstep.CmdPersist:
		return a.persist(c.Output)
	}
	return fmt.Errorf("unknown command %d", c.Kind)
}

func (a *Agent) acquire(ctx context.Context, epoch uint64) {
	actx, cancel := context.WithTimeout(ctx, arbiterTimeout)
	defer cancel()
	granted, fence, err := a.cfg.Arbiter.Acquire(actx, a.cfg.Node.VMID, epoch)
	select {
	case a.arbRes <- arbiterAnswer{epoch: epoch, fence: fence, granted: granted, err: err}:
	case <-a.stop:
	}
}

// applyRun makes the VM run or pause as the flags say. The pause is
// synchronous: when it returns the vCPU is at a clean point between exits.
func (a *Agent) applyRun() error {
	if a.vm == nil {
		return nil
	}
	want := a.booted && !a.stalled && !a.paused && !a.halted && !a.diskPaused &&
		(a.guarded || !a.cfg.WaitForSecondary || a.cfg.Node.Role != wire.RolePrimary)
	if want == a.running {
		return nil
	}
	a.running = want
	a.mu.Lock()
	a.pausing = !want
	a.cond.Broadcast()
	a.mu.Unlock()
	st := a.vm.Status().State
	if want {
		if st != vmm.Paused {
			return nil // halted or failed: finished() reports it
		}
		return a.vm.Resume(0)
	}
	if st != vmm.Running {
		return nil
	}
	return a.vm.Pause()
}

func (a *Agent) takeCheckpoint(c lockstep.Checkpoint) error {
	if a.vm == nil || !a.booted {
		return errors.New("no VM to checkpoint")
	}
	if c.Live {
		// A copy of the running VM takes as long as its memory: on a
		// goroutine of its own, so that the loop goes on meanwhile.
		kind := vmm.Incremental
		if c.Full {
			kind = vmm.Full
		}
		vm := a.vm
		go func() {
			r := liveCheckpoint{id: c.ID}
			s, err := vm.SnapshotLive(kind)
			if err == nil {
				// Encoding copies it all again: beside the guest too.
				// So does hashing it, which the node would do under a.mu.
				vmm.AtLowPriority(func() {
					if r.data, err = s.MarshalBinary(); err == nil {
						r.digest = lockstep.DataDigest(r.data)
					}
				})
			}
			r.err = err
			select {
			case a.liveRes <- r:
			case <-a.stop:
			}
		}()
		return nil
	}
	if a.vm.Status().State == vmm.Running {
		return errors.New("the VM runs: the node asked for a checkpoint without a pause")
	}
	b, err := a.pausedSnapshot(c.Chain)
	if err != nil {
		return a.checkpointFailed(c.ID, err)
	}
	return a.checkpointTaken(c.ID, b, lockstep.DataDigest(b), nil)
}

// checkpointFailed tells the node a checkpoint for the secondary could not
// be taken: it gives that join up and the VM goes on unprotected (a
// primary never stops because a secondary could not join).
func (a *Agent) checkpointFailed(id uint64, cause error) error {
	a.mu.Lock()
	err := a.node.CheckpointFailed(id, cause)
	a.mu.Unlock()
	if err != nil && !errors.Is(err, lockstep.ErrSyncAbandoned) {
		return err
	}
	if err != nil {
		a.log.Warn("checkpoint for the secondary failed; the VM goes on unprotected", "id", id, "err", err)
	}
	return nil
}

// pausedSnapshot snapshots the paused VM: an increment over the pre-copy
// parts just taken when it ends a chain, else a full snapshot (the
// secondary restores into a fresh VM, which has no other base).
func (a *Agent) pausedSnapshot(chain bool) ([]byte, error) {
	// The snapshot carries the disk as it is on the file: writes released
	// but still queued must be on it first.
	a.disk.drain()
	kind := vmm.Full
	if chain {
		kind = vmm.Incremental
	}
	s, err := a.vm.Snapshot(kind)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.clock.stamp(s)
	a.mu.Unlock()
	return s.MarshalBinary()
}

// checkpointTaken hands a checkpoint to the node. A live one that failed
// is taken paused instead (a short pause, and still a valid part of the
// chain), so that re-protection goes on. sum is lockstep.DataDigest(b),
// computed off a.mu.
func (a *Agent) checkpointTaken(id uint64, b []byte, sum [wire.DigestBytes]byte, liveErr error) error {
	if liveErr != nil {
		a.log.Warn("live checkpoint failed; pausing for this part", "id", id, "err", liveErr)
		if err := a.vm.Pause(); err != nil {
			return err
		}
		var err error
		b, err = a.pausedSnapshot(true)
		if err != nil {
			// Paused behind the flags' back: let applyRun resume it.
			a.running = false
			if ferr := a.checkpointFailed(id, err); ferr != nil {
				return ferr
			}
			return a.applyRun()
		}
		a.running = false
		if err := a.applyRun(); err != nil {
			return err
		}
		sum = lockstep.DataDigest(b)
	}
	a.sync.sent.Store(0)
	a.sync.total.Store(int64(len(b)))
	a.log.Info("checkpoint taken for the secondary", "id", id, "bytes", len(b))
	a.stats.ckpts.Add(1)
	a.mu.Lock()
	err := a.node.CheckpointTaken(id, b, sum)
	a.mu.Unlock()
	if errors.Is(err, lockstep.ErrSyncAbandoned) {
		a.log.Warn("checkpoint for the secondary cannot be shipped; the VM goes on unprotected", "id", id, "err", err)
		return nil
	}
	return err
}

// errAborted is what a waiting hook returns when its VM is being replaced
// or the agent stops: it fails that VM, which nobody runs again.
var errAborted = errors.New("agent: exit abandoned: the VM is being replaced or stopped")

func (a *Agent) restore(c lockstep.Checkpoint) error {
	began := time.Now()
	// A pre-copy chain's parts, then the checkpoint that ends it.
	var chain []*vmm.Snapshot
	for i, b := range append(append([][]byte(nil), c.Parts...), c.Data) {
		s, err := vmm.UnmarshalSnapshot(b)
		if err != nil {
			return fmt.Errorf("checkpoint %d from the primary, part %d of %d: %w", c.ID, i+1, len(c.Parts)+1, err)
		}
		chain = append(chain, s)
	}
	if a.vm != nil {
		a.abandonExits(true)
		// Persists queued for the old VM must land before the restore
		// rewrites the disk, not after.
		a.disk.drain()
		a.vm.Close()
		a.vm, a.booted, a.running = nil, false, false
		a.abandonExits(false)
	}
	decoded := time.Now()
	vm, err := a.cfg.NewVM(a)
	if err != nil {
		return fmt.Errorf("creating a VM to restore into: %w", err)
	}
	created := time.Now()
	var partTimes []time.Duration
	for i, s := range chain {
		t0 := time.Now()
		if err := vm.Restore(s); err != nil {
			vm.Close()
			return fmt.Errorf("restoring checkpoint %d, part %d of %d: %w", c.ID, i+1, len(chain), err)
		}
		partTimes = append(partTimes, time.Since(t0).Round(10*time.Microsecond))
	}
	a.vm, a.booted = vm, true
	a.stats.restores.Add(1)
	a.log.Info("checkpoint restored", "id", c.ID, "seq", c.Seq, "pre-copy parts", len(c.Parts), "bytes", len(c.Data),
		"took", time.Since(began).Round(10*time.Microsecond), "decode_and_close", decoded.Sub(began).Round(10*time.Microsecond),
		"new_vm", created.Sub(decoded).Round(10*time.Microsecond), "parts", fmt.Sprint(partTimes))
	a.mu.Lock()
	for _, s := range chain {
		a.clock.restored(s)
	}
	err = a.node.CheckpointRestored(c.ID)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	return a.applyRun()
}

// abandonExits makes a hook waiting in the VM give up its exit (on) so
// that the VM can be closed, or lets the next VM's hooks wait again (off,
// unless the agent is stopping).
func (a *Agent) abandonExits(on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.stop:
		on = true
	default:
	}
	a.abort = on
	a.cond.Broadcast()
}

// frameType picks the transport frame type (and so the lane) of a message.
func frameType(m wire.Msg) transport.Type {
	switch m.Type() {
	case wire.TypeEntry:
		return transport.TypeLog
	case wire.TypeOutput:
		return transport.TypeOutput
	case wire.TypeAck:
		return transport.TypeAck
	case wire.TypeCheckpointChunk:
		return transport.TypeCheckpoint
	}
	return transport.TypeControl
}
