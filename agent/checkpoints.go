package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// liveCheckpoint is a pre-copy part taken on a goroutine of its own.
type liveCheckpoint struct {
	id     uint64
	data   []byte
	digest [wire.DigestBytes]byte // lockstep.DataDigest(data), made beside it
	err    error
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
				// So does its digest, which the node must not make
				// under the lock every exit takes.
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
// chain), so that re-protection goes on. sum is lockstep.DataDigest(b);
// the node keeps b as lent, so nothing may write it after the call.
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
