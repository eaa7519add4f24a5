// Package agent runs one protected VM on one host: it owns the VM, drives a
// lockstep.Node and is the only place where the concrete parts meet (the
// VMM, a transport, an arbiter). It declares what it uses of them as
// interfaces: VM (a *vmm.Machine), Transport (the daemon passes its
// peerLink, which sends through whichever *tcpfallback.Transport is
// connected now) and Arbiter (lockstep/arbiter's File or Memory, wrapped by
// the daemon's reachability check under --reach-check).
//
// # Files
//
//   - agent.go: the interfaces the agent uses (Transport, VM, Arbiter,
//     DiskFence), Config, Stats, the Agent and each field's guard, New,
//     the entry points (HandleFrame, PeerLost, Stop, Stats, Status) and
//     Run's loop (followDisk, finished, poke).
//   - hook.go: OnExit on the vCPU thread: record (primary) or replay
//     (secondary) each device exit through the node.
//   - ready.go: taking a Ready out of the node (takeReady) and performing
//     it (perform), by the loop (process) or inline (flushInline), and
//     sending its messages (send, deferred).
//   - commands.go: the commands the loop alone performs (command):
//     stall, pause and resume (applyRun), go-live, halt, persist.
//   - checkpoints.go: taking a checkpoint (paused or live) and restoring
//     one into a fresh VM.
//   - outputs.go: the table of held outputs (handles, take), outputs a
//     checkpoint carried (deliverCarried), persisting a block write, the
//     disk writer's report of what is durable.
//   - arbiter.go: asking the arbiter (acquire) and acting on its answer.
//   - lease.go: Config.Lease, the lease an arbiter's grants hold under
//     (lockstep/arbiter/etcd): the disk writer performs an output only
//     while it lives, and Run halts when it is lost.
//   - diskwriter.go: block writes made durable off the releasing thread.
//   - codec.go: what the log carries for the VMM; clock.go: the guest's
//     clock across hosts; steplog.go, metrics.go: logging and figures;
//     lockorder.go: the ranked locks (below).
//
// # Threads
//
// These goroutines touch an Agent:
//
//   - The vCPU thread (vmm's) calls OnExit, the vmm.ExitHook, at every
//     device exit. On a primary it is the recorder: an input is produced
//     live by the device and logged with Node.RecordInput before the guest
//     sees it; an output is held in the VMM (Exit.Hold) and logged with
//     Node.HoldOutput, and the guest goes on at once. On a secondary it is
//     the replayer: an input comes from Node.NextInput, an output is held
//     and handed to Node.ReplayOutput for comparison. When the log does not
//     reach the exit yet (NotYet) the vCPU thread waits on a condition
//     variable (cond, on mu) that the loop signals after every round. When
//     the node answers Live (a primary, or a secondary that won the
//     arbiter), the exit is served as a primary's: a secondary goes live
//     without any switch in the VMM.
//   - The loop (Run) calls Tick, CheckpointTaken, CheckpointRestored and
//     ArbiterResult, and is the only goroutine that performs commands: it
//     alone drives the VM (pause, resume, snapshot, restore) and the
//     arbiter. It wakes on a tick timer, on a poke, on the arbiter's
//     answer and on a live checkpoint taken.
//   - The transport's lane readers call HandleFrame, which steps the node
//     on the spot; the transport's owner calls PeerLost. A transport that
//     is a Poller (rdma.Transport over a ring) is also polled by a
//     primary's vCPU thread (pollAtExits) at the start of every exit,
//     with no lock held, so that the secondary's acknowledgements in this
//     host's ring are handed to HandleFrame right there: no thread
//     hand-off and no system call between the ack's arrival and the
//     release. A replaying secondary's vCPU thread does not poll: it waits
//     for the log at its exits, and the transport's poller delivers it.
//   - Helpers: an arbiter request runs on a goroutine of its own
//     (acquire), since a lock on shared storage can take long; a live
//     (pre-copy) snapshot too (takeCheckpoint); block writes go to the
//     disk writer's goroutine (diskwriter.go) so that no fdatasync holds
//     up the protocol, and it reports what is durable (Node.Durable).
//
// # Who performs a Ready
//
// Three kinds of goroutine may take a Ready out of the node and perform it,
// one at a time (readyMu):
//
//   - the loop (process), after anything it did and whenever poked: any
//     Ready, commands included; it waits for readyMu (Lock);
//   - the vCPU thread (flushInlineVCPU), after an exit gave the node
//     something to send: only a Ready without commands, and only if
//     readyMu is free (TryLock);
//   - a transport reader (flushInline from HandleFrame), after a Step:
//     the same, and it sends with TrySend (TrySender), leaving what does
//     not fit, and every message after it, to the loop (deferred), which
//     sends them first with a Send whose wait the transport bounds: a
//     reader waiting for room in its socket reads nothing, and the
//     peer's reader may be waiting on it the same way.
//
// A Ready's messages leave together, in one write, when the transport is
// a BatchSender (one system call and one wake-up of the peer for the
// lot). Frames a transport reader delivers Batched (tcpfallback's
// OnBatchEnd, which the daemon sets) are stepped one by one and performed
// once the reader has delivered all it could read without waiting
// (EndBatch): a secondary acknowledges the batch with one cumulative ack,
// a primary releases what the batch's acks allow at once. The ack is the
// node's account of what it holds, so it never covers what has not
// arrived, and the batch ends as soon as nothing more can be read, so no
// frame waits for another.
//
// So the log entry, the acknowledgement or the release leaves from the
// thread that caused it, with no hand-off to the loop in the round trip an
// output waits for (on the vCPU thread a hand-off costs 60 to 100 µs here,
// as the loop cannot run on that thread's processor until KVM_RUN gives it
// up). A Ready with commands, or one that finds readyMu taken, is left to
// the loop, poked. An error an inline perform meets (an output it cannot
// perform) is kept (inlineErr): the loop returns it, as it returns its own,
// and no one performs inline after it.
//
// # Locks and their order
//
// mu guards the node, the table of held outputs and the hook's flags;
// readyMu lets one goroutine at a time take a Ready and perform it, so
// that outputs leave and messages go in the node's order. Each field of
// Agent says which of them (or which goroutine) guards it. A Ready is
// copied out under both and performed holding readyMu but not mu, so that
// a vCPU thread in the middle of an exit (which needs mu) can finish it
// while the loop waits for the VM to pause.
//
// The order is readyMu, then mu. A goroutine holding mu never waits for
// readyMu: the hook and HandleFrame hold mu when they flush, so they only
// TryLock it; waiting there could deadlock against the loop, which holds
// readyMu while it pauses the VM (waiting for the vCPU thread to leave its
// exit) and takes mu to perform. Whoever holds readyMu waits for the VM
// (Pause) and for the disk writer (drain) without mu, since both take mu
// to finish (a vCPU thread's exit, Node.Durable). Checkpoint chunks, and
// the CheckpointDone after a part's, are only queued under readyMu: the
// bulk sender (bulksend.go) encodes and sends them holding neither lock,
// so that a full bulk lane never holds up a release. The disk writer has no
// lock (channels and atomics); latencyRecorder's and stepErrLog's locks
// are leaves: nothing is taken while they are held. lockorder.go ranks the two locks, and
// TestLockOrderOnEveryPathThatTakesBoth checks the order on every path
// that takes both (the loop, the inline flushes, a restore, a go-live),
// with a planted inversion that it catches.
//
// # Finding a long holder
//
// With FTVM_LOCK_HOLD=DIR in a daemon's environment (LockHoldEnv), every
// Lock, TryLock and Unlock of mu and readyMu is timed by the function
// that took the lock, and DIR/lockhold-PID.txt is rewritten each second:
// per lock and site, the holds and the waits (count, p50, p90, p99, max)
// and, for waits over 50 µs, the time from the lock's last Unlock to the
// acquisition. A site with long holds is what others wait behind; a long
// wait whose hand-off is as long was not behind a holder but waiting to
// run once woken (Go's scheduler, a CPU). It costs a stack walk per Lock;
// unset, one atomic load.
//
// # Tracing an output
//
// A primary's guest writes to the console: vmm stops the vCPU at the
// exit and calls OnExit (hook.go, output): the VMM holds the bytes
// (Exit.Hold), the node logs the output (Node.HoldOutput) and the hold
// goes into handles under its ID; flushInlineVCPU sends the log record
// to the secondary and the guest goes on. On the secondary the record
// arrives through HandleFrame; its replaying vCPU makes the same output,
// Node.ReplayOutput compares it and, matched, the node acknowledges it
// (flushInline on either thread sends the ack). The primary's reader gets
// the ack (HandleFrame), the node lists the output in Ready.Release, and
// perform (ready.go), on that reader or the loop, takes its hold out of
// handles (take, outputs.go) and releases it: Release on the held
// vmm.Output, through the disk writer's queue if a block write is queued
// before it. A release with no hold is an output a checkpoint carried
// (lockstep.Output.Carried: it was held on the old primary when the
// checkpoint was taken), delivered from the node's bytes (deliverCarried);
// any other release without a hold is a bug, and perform fails with it.
//
// # Order guarantees
//
// Each Ready is performed in the order lockstep.Ready documents: commands
// first (a pause has stopped the vCPU at a clean point before a checkpoint
// is taken; a restored VM is in place before the restore is confirmed),
// then releases, then drops, then messages (so a confirmation never
// overtakes the act it reports). An output reaches its backend only when a
// Ready lists it in Release: the hook only ever holds; Release on the held
// vmm.Output is called only by whoever performs that Ready (readyMu held),
// or by the disk writer behind the block writes queued before it. A
// halted node never releases anything (lockstep moves its releases to
// Drop). Readies are performed whole and one at a time (readyMu), in the
// order the node made them, and a message a reader deferred leaves before
// any later one: the peer gets the messages in the node's order, as far
// as the transport's lanes keep it.
//
// Flow control and checkpoints stop the vCPU at a clean point between
// exits. A pause (for a checkpoint) and a stall (the secondary lags
// Node.LogWindowEntries behind) are both Machine.Pause, and the VM runs
// again only when neither holds. Because the loop acts on CmdStall only
// after the exit that caused it, and a guest can make many exits in that
// time, the hook also holds the vCPU at the end of an exit (already logged
// and held) while the node reports Stalled; it lets go as soon as the loop
// wants the VM paused, so Machine.Pause never waits on it. A secondary
// restores every checkpoint into a fresh VM from Config.NewVM; a hook still
// waiting in the old one is told to give up (that VM fails with errAborted
// and is closed).
//
// # Block writes and what follows them
//
// A block write is an output like any other (held, then released), but
// the disk writer (diskwriter.go) performs it off the releasing thread,
// with an fdatasync. Any other output released while a write is queued
// goes into the same queue behind it, so that it leaves only once every
// block write released before it is durable: a reply that acknowledges a
// write never overtakes it. With nothing queued it leaves at once. A write
// that fails is retried with backoff, never skipped; meanwhile the loop
// keeps the VM paused (followDisk), Stats.DiskFailing and DiskError say
// why, and the VM resumes when the write succeeds. Stopping gives up such
// a write and drops every output queued behind it. So does a secondary
// whose write has failed for Config.SecondaryDiskFailingMax (a few peer
// timeouts): its paused VM lags, and the primary stalls once the lag is a
// log window, so the secondary leaves the pair instead (Run returns
// ErrSecondaryDiskFailing, the caller closes the transport, and the
// primary finds its peer lost and goes on unprotected). The writer reports each
// output done, in order (Node.Durable), so that the released-through the
// primary tells the secondary never passes what is durable: a secondary
// drops its copy of a write only once the primary's disk has it. With a
// shared disk (Config.DiskFence) each write presents its release's fence
// token to the disk's fence record, which a new primary raises at
// go-live: a stale primary's queued write is refused, and it halts. vmm keeps a held block
// write whose Release failed held (and visible to the guest's reads), so
// that the retry can write it.
//
// A primary makes each write durable on its own (write, then fdatasync),
// because its outputs after a write wait for exactly that write and a
// primary that crashes must leave its disk an ordered prefix of what it
// released. A secondary's disk needs no per-write durability: a
// secondary that dies rejoins with a checkpoint, which rewrites its disk
// where it differs; its disk matters only once it takes over, and then
// it drains its queue before its disk's side file records it as the new
// primary's (diskCurrentFor) and before it serves (go-live). So the
// writes a secondary persists (persist: a.lazyPersist, deliverCarried)
// are marked lazy, and the writer takes every lazy write queued at that
// moment, writes them without fdatasync (vmm Output.WriteUnsynced,
// Machine.DeliverUnsynced: each stays held, visible to reads, until it
// is marked durable), syncs the disk once and only then reports each
// durable, in order (diskWriter.batch). Lazy or not is the job's, not the
// role's: a secondary granted an epoch is a primary already when it
// drains the writes it persisted, which are still lazy, while the first
// write it releases as primary is not and ends the batch, as any
// release or drain does; so none of a primary's own writes is ever
// synced late. A write of a batch that fails is retried as one on its
// own is, after the writes before it are synced, with everything behind
// it waiting (and leaveAfter still applies); a sync that fails makes each
// write of the batch be performed again with its own fdatasync. A disk
// shared with the primary (Config.DiskFence) is never batched.
//
// # The log's contents
//
// codec.go lays out what the lockstep log carries for the VMM: an input's
// status, value, request arg and len besides its bytes (so the replica
// gets exactly what the guest got and checks it is answering the same
// request), and an output's request arg besides its bytes (so a block
// write to another sector is a divergence). Those headers and the devices'
// limits are set in internal/limits, which derives the wire's bounds on an
// entry's and an output's data from them, so that the largest request a
// guest may make always fits the log. Should a request ever not fit
// (wire.ErrTooLarge), the guest gets an I/O error status for it and the VM
// goes on; a replica reaching that exit finds no log item and resyncs.
// A replica asking for an input with another arg or len than the logged
// request has diverged like one making another output: the hook tells the
// node (Node.InputDiverged) and waits for the resync's checkpoint, never
// failing the VM.
//
// # The guest's clock
//
// Each host's clock device reads on from the checkpoint it was restored
// from, so a secondary's runs behind the primary's by the time the
// checkpoint took. clock.go keeps the clock the guest reads monotonic
// across hosts: a live read is served as max(local + offset, last + 1),
// last being the highest value the guest was given (live or replayed) and
// offset, which only grows, kept once needed; a checkpoint carries the
// clock as the guest sees it (vmm.Snapshot.SetClockNs), and a restore
// takes it up. A logged value below one the guest saw is replayed as
// logged (it is what the world saw) and logged at WARN.
//
// # Checkpoints
//
// A resync is incremental: it costs the pages and disk chunks that may
// differ, not the VM. The secondary's resync request carries its base
// (lockstep.Config.ResyncBase, which the agent answers from
// vmm.Machine.DirtySinceBase: the checkpoint its VM last restored and the
// pages and chunks it changed since, encoded). The primary's VM, paused,
// takes an increment on that checkpoint holding its own changes and the
// secondary's (vmm.Machine.SnapshotCovering, with the released block
// writes still queued, as for any paused snapshot); if it does not stand
// on the same checkpoint (vmm.ErrBaseMismatch) or cannot read the base,
// it takes a full one, and says why at INFO. The secondary applies the
// increment onto a successor of its VM (vmm.Machine.Successor: a fresh
// KVM VM and vCPU over the same memory and disk, its exits given up and
// its queued persists on the disk first, as when a VM is replaced), so
// the restore costs the VM's creation and the differing pages. If that
// fails (the VMM refuses an increment lacking a page the secondary
// changed, vmm.ErrNotCovered, or anything else), the VM is closed, being
// of no use, and the node asks the primary, still paused, for a full
// checkpoint (lockstep.Node.CheckpointRestoreFailed), which goes into a
// fresh VM (Config.NewVM). Stats counts the increments taken and
// restored and the restores that fell back (ftvm status shows them); the
// "checkpoint restored" log line gives each one's kind, pages, bytes and
// time.
//
// Every other checkpoint a secondary restores goes into a fresh VM
// (Config.NewVM): a join's, and a full resync's. A joiner's is a
// pre-copy chain (lockstep.Config.PrecopyRounds): live snapshots of the
// running VM, taken on a goroutine of their own (the loop goes on), and a
// paused increment over them. The joiner loads each part into a VM of
// its own as it arrives (lockstep.CmdLoadPart; that VM replaces the one
// it had, of no use while it joins), so that the restore that ends the
// chain, which the primary waits for paused, creates no VM and loads only
// the paused increment. A part loads under SCHED_IDLE (vmm.AtLowPriority):
// the primary's guest runs meanwhile, and pauses for the chain's end only
// once the part's acknowledgement, sent after the load, is in; where two
// daemons share a machine's CPUs, a load at the loop's priority took the
// primary's vCPU thread's CPU. The restore loads the whole chain into a
// fresh VM instead whenever what was loaded is not that chain's start.
// The paused
// snapshot saves the block writes released and still queued for the disk
// writer as performed (vmm.Machine.SnapshotReleased) rather than wait for
// each one's fdatasync; the pause's end logs where it went.
// The owner of the transport reports a lost connection with PeerLost, so
// that a dead peer is acted on at once rather than after the protocol's
// timeout.
//
// # Rings on the data path
//
// Over TCP the log goes straight from the node to the transport: handing a
// frame from the vCPU thread to a sender goroutine through a ring would add
// the thread hand-off that flushInline exists to avoid. Over rdma (verbs
// or shm) the ring is the peer's memory itself: the vCPU thread's Send
// writes the record into the secondary's ring and posts the one-sided
// write, and the acknowledgements come back into this host's ring, read
// at the next exit (Poller).
package agent
