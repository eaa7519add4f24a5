package lockstep

import "fmt"

// epochClaim is a node's request to the arbiter (CmdAcquire) and its
// answer: a primary's epoch to go on in, or a candidate's to go live in.
type epochClaim struct {
	epoch  uint64 // epoch asked for, answer not yet in (0: none)
	failed bool   // the arbiter failed to answer it: ask again after acquireRetryTicks
	// failures counts the arbiter's errors in a row (no answer at all,
	// not a refusal); the next ask waits acquireRetryTicks() after the
	// last, counted in sinceAsk. lastErr is the last one, for Status.
	failures     int
	lastErr      string
	sinceAsk     int    // ticks since the last ask or failure
	grantedEpoch uint64 // candidate: the epoch granted, to go live in once drained
	grantedFence uint64 // its fence token
}

func (n *Node) acquire(epoch uint64) {
	if epoch != n.claim.epoch {
		n.claim.failures, n.claim.lastErr = 0, ""
	}
	n.claim.epoch = epoch
	n.claim.failed = false
	n.ticks.sinceProgress = 0
	n.claim.sinceAsk = 0
	n.command(Command{Kind: CmdAcquire, Epoch: epoch})
}

// acquireRetryTicks is how long to wait after the arbiter failed
// claim.failures times in a row before asking again: RetransmitTicks,
// doubled with each failure, at most ArbiterRetryMaxTicks. An arbiter
// that cannot be reached is asked a few times a second at first (a
// transient fault costs little) and then about once per
// ArbiterRetryMaxTicks, not every RetransmitTicks forever.
func (n *Node) acquireRetryTicks() int {
	d := n.cfg.RetransmitTicks
	for i := 1; i < n.claim.failures && d < n.cfg.ArbiterRetryMaxTicks; i++ {
		d *= 2
	}
	return min(d, n.cfg.ArbiterRetryMaxTicks)
}

// ArbiterResult delivers the answer to a CmdAcquire.
func (n *Node) ArbiterResult(epoch uint64, granted bool, fence uint64, err error) {
	if n.role == RoleHalted || epoch != n.claim.epoch {
		return
	}
	if err != nil {
		// Retried after acquireRetryTicks; the agent decides whether the
		// error can pass at all (it knows what the error means).
		n.claim.failed = true
		n.claim.failures++
		n.claim.lastErr = err.Error()
		n.claim.sinceAsk = 0
		return
	}
	n.claim.epoch = 0
	n.claim.failures, n.claim.lastErr = 0, ""
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
		n.claim.grantedEpoch, n.claim.grantedFence = epoch, fence
		n.maybeGoLive()
	}
}
