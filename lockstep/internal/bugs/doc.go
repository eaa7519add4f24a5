// Package bugs holds the switches that plant known bugs in the lockstep core
// so tests can prove the simulator's checkers catch them. Every switch is off
// unless a test turns it on; only packages under lockstep/ can reach it.
package bugs

// Set names the bugs that can be planted. The zero value plants none.
type Set struct {
	// ReleaseBeforeAck: a protected primary releases each output as soon
	// as it is held, ignoring the mode's condition.
	ReleaseBeforeAck bool
	// SkipFenceCheck: a node acts on an arbiter answer without checking it
	// was granted, so a loser goes on as primary too.
	SkipFenceCheck bool
	// AckBeforeAppend: the secondary acknowledges the highest sequence it
	// has seen, even when earlier entries are missing from its log.
	AckBeforeAppend bool
	// ResyncWithoutPause: the primary takes a checkpoint while its vCPU runs.
	ResyncWithoutPause bool
	// GoLiveBeforeDrain: a granted candidate goes live without consuming
	// the rest of its log.
	GoLiveBeforeDrain bool
	// PersistUnmatched: a secondary restoring a checkpoint applies the
	// outputs its VM made but never matched to its own storage instead of
	// dropping them.
	PersistUnmatched bool
	// PrecopySkipFinal: a joining secondary restores a pre-copy part, a
	// copy of the VM taken while it ran, as if it were the paused
	// checkpoint that ends the chain.
	PrecopySkipFinal bool
	// ResendWholeCheckpoint: a primary shipping a checkpoint sends all of
	// it again on every retransmission timeout, acknowledged or not.
	ResendWholeCheckpoint bool
	// GoLiveDiverged: a secondary that diverged in ack-on-receipt mode
	// and was not resynced goes live anyway when its primary is lost.
	GoLiveDiverged bool
	// IncrementPageShort: the simulator's primary VMM leaves out of a
	// resync's increment one page that only it dirtied since the base the
	// secondary holds (the secondary cannot see that one is missing).
	IncrementPageShort bool
}
