package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

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
		if !a.paused {
			a.pausedAt = time.Now()
			a.stats.pauses.Add(1)
		}
		a.paused = true
		a.pause = pauseTimes{began: time.Now()}
		err := a.applyRun()
		a.pause.stop = time.Since(a.pause.began)
		return err
	case lockstep.CmdResume:
		if a.paused {
			a.stats.pausedNs.Add(uint64(time.Since(a.pausedAt)))
		}
		a.paused = false
		if p := a.pause; !p.began.IsZero() {
			// What a client waits for while a secondary joins or is
			// repaired, and where it went: stopping the vCPU, the disk
			// writes queued before the snapshot, the snapshot (encoded
			// and digested); the rest is the secondary's (transfer,
			// restore, confirmation).
			r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
			a.log.Info("resumed after the pause for a checkpoint", "paused", r(time.Since(p.began)),
				"stopping", r(p.stop), "disk_drain", r(p.drain), "snapshot", r(p.snapshot-p.drain))
			a.pause = pauseTimes{}
			a.tail.begin(time.Now())
		}
		a.joinGC.releaseAfter(joinGCTail)
		return a.applyRun()
	case lockstep.CmdTakeCheckpoint:
		return a.takeCheckpoint(c.Checkpoint)
	case lockstep.CmdRestoreCheckpoint:
		return a.restore(c.Checkpoint)
	case lockstep.CmdLoadPart:
		return a.loadPart(c.Checkpoint)
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
		a.pollAtExits.Store(true)
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
