// Package agent runs one protected VM on one host: it owns the VM, drives a
// lockstep.Node and is the only place where the concrete parts meet (the
// VMM, a transport, an arbiter). It declares what it uses of them as
// interfaces: VM (a *vmm.Machine), Transport (a *tcpfallback.Transport) and
// Arbiter (lockstep/arbiter's File or Memory).
//
// # Threads
//
// Three kinds of goroutine touch an Agent:
//
//   - The vCPU thread (vmm's) calls OnExit, the vmm.ExitHook, at every
//     device exit. On a primary it is the recorder: an input is produced
//     live by the device and logged with Node.RecordInput before the guest
//     sees it; an output is held in the VMM (Exit.Hold) and logged with
//     Node.HoldOutput, and the guest goes on at once. On a secondary it is
//     the replayer: an input comes from Node.NextInput, an output is held
//     and handed to Node.ReplayOutput for comparison. When the log does not
//     reach the exit yet (NotYet) the vCPU thread waits on a condition
//     variable that the loop signals after every round. When the node
//     answers Live (a primary, or a secondary that won the arbiter), the
//     exit is served as a primary's: a secondary goes live without any
//     switch in the VMM.
//   - The loop (Run) calls Tick, CheckpointTaken, CheckpointRestored and
//     ArbiterResult, and is the only goroutine that performs commands: it
//     alone drives the VM (pause, resume, snapshot, restore) and the
//     arbiter. It wakes on a tick timer, on a poke, and on the arbiter's
//     answer.
//   - The transport's lane readers call HandleFrame, which steps the node
//     on the spot.
//   - An arbiter request runs on a goroutine of its own, since a file lock
//     or an etcd lease can take long; block writes go to a disk writer
//     goroutine (diskwriter.go) so that no fdatasync holds up the protocol.
//
// One mutex (mu) guards the node and the table of held outputs; a second
// (perf) lets one goroutine at a time take a Ready out of the node and
// perform it, so that outputs and messages keep the node's order. The
// loop takes perf to perform any Ready. The hook and HandleFrame, after
// giving the node something, take perf only if it is free and perform the
// Ready themselves when it holds no command: the log entry, the
// acknowledgement or the release leaves from the thread that caused it,
// with no hand-off to the loop in the round trip an output waits for (on
// the vCPU thread a hand-off costs 60 to 100 µs here, as the loop cannot
// run on that thread's processor until KVM_RUN gives it up). Anything else
// is left to the loop, poked. HandleFrame runs on a transport reader, which
// must never wait for room in a socket: while it waits it reads nothing,
// and the peer's reader may be waiting on it the same way. It sends with
// TrySend (TrySender) and leaves what does not fit, and everything after
// it, to the loop, which sends it first with a Send whose wait the
// transport bounds. Ready is copied out under mu and performed
// without it, so that a vCPU thread in the middle of an exit can finish it
// while the loop waits for the VM to pause.
//
// # Order guarantees
//
// Each Ready is performed in the order lockstep.Ready documents: commands
// first (a pause has stopped the vCPU at a clean point before a checkpoint
// is taken; a restored VM is in place before the restore is confirmed),
// then releases, then drops, then messages (so a confirmation never
// overtakes the act it reports). An output reaches its backend only when a
// Ready lists it in Release: the hook only ever holds; Release on the held
// vmm.Output is called by the loop and nowhere else. A halted node never
// releases anything (lockstep moves its releases to Drop).
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
// A secondary restores every checkpoint into a fresh VM (Config.NewVM).
// A resync's checkpoint is therefore a full snapshot. A joiner's is a
// pre-copy chain (lockstep.Config.PrecopyRounds): live snapshots of the
// running VM, taken on a goroutine of their own (the loop goes on), and a
// paused increment over them; the secondary restores the chain in order.
// The owner of the transport reports a lost connection with PeerLost, so
// that a dead peer is acted on at once rather than after the protocol's
// timeout.
//
// # Not yet
//
// The log goes straight from the node to the transport: the lock-free
// rings of package ring are not on this path. Handing a frame from the
// vCPU thread to a sender goroutine through a ring would add the thread
// hand-off that flushInline exists to avoid.
package agent
