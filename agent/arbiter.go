package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"golang.org/x/sys/unix"
)

type arbiterAnswer struct {
	epoch, fence uint64
	granted      bool
	err          error
	// took is how long the arbiter took to answer, answered when it did:
	// a take-over's cost, logged with the time the loop took to see it.
	took     time.Duration
	answered time.Time
}

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
	// readyMu keeps a transport reader from releasing what the grant allows
	// (flushInline) before OnEpoch has run.
	a.readyMu.Lock()
	a.mu.Lock()
	was := a.node.Status()
	a.node.ArbiterResult(r.epoch, r.granted, r.fence, r.err)
	ns := a.node.Status()
	a.mu.Unlock()
	var hookErr error
	var onEpoch time.Duration
	if a.cfg.OnEpoch != nil && ns.Role == lockstep.RolePrimary && ns.Epoch != was.Epoch {
		t0 := time.Now()
		a.diskCurrentFor(was.Role)
		hookErr = a.cfg.OnEpoch(ns.Epoch, ns.Fence)
		onEpoch = time.Since(t0)
	}
	a.readyMu.Unlock()
	if r.err == nil && !r.answered.IsZero() {
		r10 := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
		a.log.Info("the arbiter answered", "epoch", r.epoch, "granted", r.granted, "took", r10(r.took),
			"seen_after", r10(time.Since(r.answered)-onEpoch), "on_epoch", r10(onEpoch))
	}
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
	if errors.Is(r.err, arbiter.ErrHeldElsewhere) {
		// Expected after a peer's death: its lease has not run out yet.
		a.log.Info("the arbiter waits for the other host's lease to run out; asking again", "epoch", r.epoch, "err", r.err)
		return nil
	}
	a.log.Error("the arbiter could not be asked for an epoch; this host neither serves nor takes over until it answers; asking again",
		"epoch", r.epoch, "failures", a.arbFailures, "err", r.err,
		"what_to_do", "make the arbiter reachable from this host: its directory (--arbiter-dir) writable, or a quorum of etcd (--etcd-endpoints)")
	return nil
}

func (a *Agent) acquire(ctx context.Context, epoch uint64) {
	actx, cancel := context.WithTimeout(ctx, arbiterTimeout)
	defer cancel()
	began := time.Now()
	granted, fence, err := a.cfg.Arbiter.Acquire(actx, a.cfg.Node.VMID, epoch)
	select {
	case a.arbRes <- arbiterAnswer{epoch: epoch, fence: fence, granted: granted, err: err, took: time.Since(began), answered: time.Now()}:
	case <-a.stop:
	}
}

// diskCurrentFor makes this host's disk current before OnEpoch records it
// as the new epoch primary's; was is the node's role before the grant. A
// secondary taking over still has writes queued (persists it acknowledged
// on receipt, which the old primary may have acknowledged to clients),
// and the record says the disk holds every write released before the
// epoch: they go to the disk first. A host that dies during the drain
// leaves its disk marked a secondary's, so a cold restart never takes it
// for the newest. A primary's own queued writes were released in its
// epoch, which its disk already follows: it does not wait for them.
func (a *Agent) diskCurrentFor(was lockstep.Role) {
	if was != lockstep.RolePrimary && a.disk != nil {
		began, jobs, batched := time.Now(), a.disk.queued.Load(), a.disk.batched.Load()
		a.disk.drain()
		if jobs > 0 {
			a.disk.log.Info("the writes this host persisted as a secondary are on disk before the epoch is recorded", "jobs_drained", jobs,
				"took", time.Since(began).Round(10*time.Microsecond), "batched", a.disk.batched.Load()-batched)
		}
	}
}
