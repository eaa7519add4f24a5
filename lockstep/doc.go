// Package lockstep is the quasi-lockstep protocol between a primary and a
// secondary host of one VM, as a pure state machine in the style of
// etcd-io/raft: it does no I/O, starts no goroutines and never reads the
// clock. The agent feeds it messages (Step), logical time (Tick) and the
// VM's exits (RecordInput/HoldOutput on the primary, NextInput/ReplayOutput
// on the secondary), and performs what Ready asks, in the order documented
// on Ready's fields (commands, then releases, then drops, then messages),
// before calling Advance:
//
//	for {
//		select {
//		case <-ticker.C:
//			n.Tick()
//		case m := <-recv:
//			n.Step(m)
//		}
//		for n.HasReady() {
//			rd := n.Ready()
//			run(rd.Commands); release(rd.Release); discard(rd.Drop); send(rd.Messages)
//			n.Advance(rd)
//		}
//	}
//
// # Files
//
// A Node holds what both roles share (role, epoch and fence, the Ready
// being built) and one part for each role and activity, each a type in
// its own file, as raft keeps its progress tracker and log apart from
// raft.go:
//
//	node.go         Node, NewNode, Status, Ready/Advance, Tick, PeerLost, Step (dispatch
//	                by role), halt; ticks, the counters both roles time out on
//	ready.go        Ready, Command, Output, Checkpoint: what the agent performs, in order
//	config.go       Config, Mode and their defaults and bounds
//	epoch.go        epochClaim: the arbiter request in flight, its retries, a candidate's
//	                grant; ArbiterResult
//	primary.go      primaryState: a primary's phase (acquiring, alone, pre-copy, syncing,
//	                protected), stall, pause and joins; RecordInput, HoldOutput,
//	                tickPrimary, stepPrimary; starting syncs and pre-copy, CheckpointTaken
//	primarylog.go   primaryLog: the log kept for the secondary, its acks, the held outputs
//	                and the rule that releases them (mayRelease), Durable
//	ckptsend.go     checkpointShipping: the checkpoint asked of the VMM and the ones being
//	                shipped, chunked (the VMM's data as lent, never copied; at most
//	                CheckpointReadyBytes a Ready), windowed on the secondary's CheckpointAck
//	                and resent where it shows a loss; the node's section of a checkpoint
//	                (the held outputs) and the checkpoint's digest
//	secondary.go    a secondary's and candidate's role: NextInput, ReplayOutput,
//	                tickSecondary, stepSecondary, rejoin, diverge, going live
//	replay.go       replayState: the received log in order (outOfOrder ahead of a gap),
//	                the cursor, outputs pending their record and the copies kept until the
//	                primary reports them released; the cumulative Ack
//	ckptrecv.go     incomingCheckpoints: checkpoints assembled from chunks, the pre-copy
//	                parts of a chain kept until its end comes, the restore and its
//	                CheckpointAck; CheckpointRestored, CheckpointRestoreFailed
//
// The wire format is lockstep/wire (which also owns Role, since a Hello
// carries it); lockstep/arbiter holds the arbiters, lockstep/sim the seeded
// simulator. interaction_test.go runs the scenarios of testdata/*.txt on the
// simulator (scripted failures on seeded scheduling), and
// interaction_explicit_test.go those of testdata/explicit/*.txt on two nodes
// driven one message, tick and exit at a time, with nothing random.
//
// # Protocol
//
// The primary logs every nondeterministic input as a wire.Entry and every
// output as a wire.Output record (digest, not data) in one sequence, ships
// them, and holds the output's bytes. It releases a held output
// (Ready.Release) when the Mode allows: AckOnReceipt once the secondary has
// acknowledged every log item before it, AckOnCompare once the secondary has
// reproduced the output with the same digest. When the secondary lags
// LogWindowEntries behind, Ready stalls the vCPU (CmdStall).
//
// The secondary appends items only in order, acknowledges cumulatively,
// feeds inputs to its VM and compares each output with the record. One
// Ack (received, compared, replayed) answers all that a Ready saw: with
// AckOnCompare a compare is acknowledged at once, since the primary
// releases on it; with AckOnReceipt the compared position waits for the
// next ack, since the primary released on receipt. An input
// asked for at the wrong exit or of the wrong kind, or an output that does
// not match, is a divergence: it sends a wire.ResyncRequest and stops. The
// primary pauses, takes a checkpoint (CmdPause, CmdTakeCheckpoint), ships it
// in chunks, at most CheckpointWindowBytes ahead of the secondary's
// cumulative wire.CheckpointAck, resending only what an ack or a timeout
// shows lost; the secondary restores it (CmdRestoreCheckpoint) and confirms;
// only then does the primary release what it held and resume.
//
// A resync is incremental where the VMMs can make it so: the secondary's
// request carries a base (Config.ResyncBase: the checkpoint its VM last
// restored and what it changed since, opaque to the node), which the
// primary hands its VMM with the checkpoint it asks for (Checkpoint.Base).
// A VMM whose VM stands on the same checkpoint answers with an increment
// over it holding what either side changed; any other a full one. A
// secondary that cannot restore the increment (Node.CheckpointRestoreFailed)
// joins again with a Hello and no base, so the primary, still paused,
// sends a full checkpoint; if that fails too, the secondary halts rather
// than ask for ever (testdata/explicit/incremental_resync.txt). A new
// secondary joins by pre-copy (Config.PrecopyRounds): live checkpoints of
// the running VM (CmdTakeCheckpoint with Live), each shipped the same way,
// then a short pause for a paused increment that ends the chain. The
// joiner hands each part to its VMM as soon as it holds it whole
// (CmdLoadPart, in the chain's order), so that the restore of the chain
// (CmdRestoreCheckpoint, which still carries every part), during which
// the primary stays paused, has only the paused increment left to load.
// With PrecopyRounds 0 it joins from one full checkpoint taken paused.
//
// Each side counts ticks since it last heard the other; PeerLost, which
// the agent calls when the transport sees the connection reset or closed
// (the peer's process died), acts on the timeout at once. A secondary that
// times out becomes a candidate: it stops acknowledging, consumes the rest
// of its log and asks the arbiter for the next epoch (CmdAcquire); it goes
// live (CmdGoLive) only if granted, and then releases the outputs the old
// primary may have released and it reproduced (a repeat is possible, a loss
// is not). In AckOnReceipt mode a secondary that diverged and has no
// checkpoint repairing it yet halts instead (CmdHalt, with the reason):
// the primary released outputs it did not reproduce, and its execution
// would contradict them; the mode assumes replay is deterministic, and
// Status.Diverged shows the time it is not protected. A primary that times out asks the arbiter for the next epoch to go
// on unprotected; if refused, or if it meets a newer epoch, it halts
// (CmdHalt) and releases nothing more. Every message carries the sender's
// epoch and fence token; a message from an older epoch is refused with a
// wire.Fence.
//
// # Released means durable
//
// With Config.ConfirmDurable (the agent sets it) an output handed out in
// Ready.Release counts as released towards the secondary (Heartbeat's
// ReleasedThrough, a checkpoint's released-through) only once the caller
// reports it durable where it went (Node.Durable): a block write the
// host still has queued is not out, so the secondary keeps its copy, and
// releases it if it must go live, until it is.
//
// # Separate storage
//
// Where each host keeps its own copy of state that outputs change (a disk),
// Config.Persistent names those outputs. A secondary keeps its reproduced
// copy of one until the primary reports it released (Heartbeat's
// ReleasedThrough) and then applies it to its own copy (CmdPersist) instead
// of dropping it; held outputs a checkpoint carried are persisted the same
// way. So a secondary's disk follows the primary's in the primary's order,
// and the VMM's checkpoints need carry only what was durable on the
// primary's disk when they were taken.
//
// The simulator in lockstep/sim drives two nodes through a seeded network,
// arbiter and guest and checks the protocol's promises from outside.
package lockstep
