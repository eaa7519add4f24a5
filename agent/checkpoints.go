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
	// Until joinGCTail after the pause that ends this sync (CmdResume),
	// or its failure.
	a.joinGC.hold()
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
	began := time.Now()
	var base []byte
	if !c.Full && !c.Chain {
		base = c.Base
	}
	b, err := a.pausedSnapshot(c.Chain, base)
	if err != nil {
		return a.checkpointFailed(c.ID, err)
	}
	if a.cfg.checkpointState != nil {
		a.cfg.checkpointState(c.ID, a.pause.increment, a.vm)
	}
	sum := lockstep.DataDigest(b)
	a.pause.snapshot = time.Since(began)
	return a.checkpointTaken(c.ID, b, sum, nil)
}

// pauseTimes times a pause for a checkpoint, for the log line at its end.
type pauseTimes struct {
	began    time.Time     // CmdPause
	stop     time.Duration // from CmdPause to the vCPU stopped
	snapshot time.Duration // the paused snapshot, encoded and digested
	drain    time.Duration // within it: the disk writes queued before it
	// increment: the snapshot is a resync's increment over the
	// secondary's base, of pages memory pages and chunks disk chunks.
	increment     bool
	pages, chunks int
}

// checkpointFailed tells the node a checkpoint for the secondary could not
// be taken: it gives that join up and the VM goes on unprotected (a
// primary never stops because a secondary could not join).
func (a *Agent) checkpointFailed(id uint64, cause error) error {
	a.joinGC.release()
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
// parts just taken when it ends a chain; for a resync whose secondary
// sent its base (what its VM changed since the checkpoint it restored,
// vmm.DirtySet's encoding), an increment on that checkpoint covering what
// either side changed, when this VM stands on it too (SnapshotCovering);
// else a full snapshot (the secondary restores into a fresh VM, which has
// no other base).
func (a *Agent) pausedSnapshot(chain bool, base []byte) ([]byte, error) {
	kind := vmm.Full
	if chain {
		kind = vmm.Incremental
	}
	var other *vmm.DirtySet
	cover, canCover := a.vm.(coveringSnapshotter)
	if base != nil && canCover {
		var err error
		if other, err = vmm.UnmarshalDirtySet(base); err != nil {
			a.log.Info("the secondary's resync base is unreadable; taking a full checkpoint", "err", err)
			other = nil
		}
	}
	// The snapshot carries the disk as it is on the file: writes released
	// but still queued must be in it too. The VMM holds them still, and
	// saves them as performed when told which they are; else they must
	// be on the file first, which waits for each one's fdatasync.
	var s *vmm.Snapshot
	var err error
	writes, held := a.disk.queuedWrites()
	rel, isRel := a.vm.(releasedSnapshotter)
	if !isRel || !held {
		t0 := time.Now()
		a.disk.drain()
		a.pause.drain = time.Since(t0)
		writes = nil
	}
	a.pause.increment = false
	if other != nil {
		// A full snapshot stands on nothing: it is the answer to any
		// failure here, as to a secondary that sent no base.
		s, err = cover.SnapshotCovering(other, writes)
		switch {
		case err == nil:
			a.pause.increment = true
			a.pause.pages, a.pause.chunks = len(s.PageNumbers), len(s.DiskChunks)
		case errors.Is(err, vmm.ErrBaseMismatch):
			a.log.Info("this VM is not at the secondary's resync base; taking a full checkpoint", "err", err)
		default:
			a.log.Warn("the resync's increment failed; taking a full checkpoint", "err", err)
		}
		if err != nil {
			s, err = nil, nil
		}
	}
	switch {
	case s != nil:
	case isRel && held:
		s, err = rel.SnapshotReleased(kind, writes)
	default:
		s, err = a.vm.Snapshot(kind)
	}
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.clock.stamp(s)
	a.mu.Unlock()
	return s.MarshalBinary()
}

// releasedSnapshotter is a VM that can save the block writes its owner
// released and has not performed yet as performed (vmm.Machine).
type releasedSnapshotter interface {
	SnapshotReleased(kind vmm.SnapshotKind, released []*vmm.Output) (*vmm.Snapshot, error)
}

var _ releasedSnapshotter = (*vmm.Machine)(nil)

// coveringSnapshotter is a VM that can take a resync's increment over the
// checkpoint the secondary stands on, covering what the secondary changed
// since (vmm.Machine); one that cannot takes full ones.
type coveringSnapshotter interface {
	SnapshotCovering(other *vmm.DirtySet, released []*vmm.Output) (*vmm.Snapshot, error)
}

// incrementalVM is a VM that can say what it changed since the
// checkpoint it last took or restored (a secondary's resync base) and be
// succeeded by a fresh KVM VM over the same memory and disk, onto which a
// resync's increment is restored (vmm.Machine). A VM that cannot (a
// fake) sends no base, and gets full checkpoints.
type incrementalVM interface {
	DirtySinceBase() (*vmm.DirtySet, error)
	Successor(hook vmm.ExitHook) (*vmm.Machine, error)
}

var (
	_ coveringSnapshotter = (*vmm.Machine)(nil)
	_ incrementalVM       = (*vmm.Machine)(nil)
	// A resync base the VMM encodes always fits a resync request.
	_ = uint(wire.MaxResyncBaseBytes - vmm.MaxDirtySetBytes)
)

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
		b, err = a.pausedSnapshot(true, nil)
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
	if a.pause.increment {
		a.pause.increment = false
		a.stats.incCkpts.Add(1)
		a.log.Info("checkpoint taken for the secondary", "id", id, "kind", "increment over the secondary's base", "pages", a.pause.pages, "disk_chunks", a.pause.chunks, "bytes", len(b))
	} else {
		a.log.Info("checkpoint taken for the secondary", "id", id, "bytes", len(b))
	}
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

// joinVM is the VM a joining secondary loads pre-copy parts into as they
// come (lockstep.CmdLoadPart), ahead of the restore that ends their chain:
// checkpoints base..through are in it. It is not a.vm: nothing runs it
// until that restore adopts it.
type joinVM struct {
	vm            VM
	base, through uint64
	// clocks are the guest clocks the parts loaded carry, for the
	// restore to take up as it does those of the parts it loads.
	clocks []uint64
}

// loadPart loads a pre-copy part into the joining VM, so that the restore
// ending the chain, which the primary waits for paused, has only the
// paused increment left. A full part begins a new VM; the VM this host
// had is of no use while it joins, and goes (its queued persists land
// first: the part rewrites the disk). Whatever fails here only leaves
// the restore to load the whole chain itself, as it would without this.
func (a *Agent) loadPart(c lockstep.Checkpoint) error {
	began := time.Now()
	s, err := vmm.UnmarshalSnapshot(c.Data)
	if err != nil {
		a.log.Warn("pre-copy part from the primary unreadable; the chain's restore will load it", "id", c.ID, "err", err)
		a.dropJoinVM()
		return nil
	}
	j := a.joinVM
	switch {
	case c.Full && s.Kind == vmm.Full:
		// Until joinGCTail after the restore that ends the chain.
		a.joinGC.hold()
		a.dropJoinVM()
		a.retireVM()
		vm, err := a.cfg.NewVM(a)
		if err != nil {
			a.log.Warn("cannot create a VM to load pre-copy parts into; the chain's restore will", "id", c.ID, "err", err)
			return nil
		}
		j = &joinVM{vm: vm, base: c.ID, through: c.ID - 1}
		a.joinVM = j
	case j == nil || c.ID != j.through+1:
		// Not the next of the chain loaded: the restore loads it all.
		a.dropJoinVM()
		return nil
	}
	// Beside the primary's guest, which waits for nothing of it: where
	// both hosts share CPUs (two daemons on one machine, as bench/e2e
	// runs them), a load at the loop's priority took the primary's vCPU
	// thread's CPU, and the client went silent for as long as the load.
	// The loop sends the part's acknowledgement only after this, so the
	// primary does not pause for the chain's end before it is done.
	var rerr error
	vmm.AtLowPriority(func() { rerr = j.vm.Restore(s) })
	if err := rerr; err != nil {
		a.log.Warn("loading a pre-copy part failed; the chain's restore will load the chain", "id", c.ID, "err", err)
		a.dropJoinVM()
		return nil
	}
	j.through = c.ID
	if ns, ok := s.ClockNs(); ok {
		j.clocks = append(j.clocks, ns)
	}
	a.log.Info("pre-copy part loaded", "id", c.ID, "bytes", len(c.Data), "took", time.Since(began).Round(10*time.Microsecond))
	return nil
}

// dropJoinVM closes the VM pre-copy parts were loaded into, if any.
func (a *Agent) dropJoinVM() {
	if a.joinVM != nil {
		a.joinVM.vm.Close()
		a.joinVM = nil
	}
}

// retireVM closes the VM the loop drives, for one that replaces it.
func (a *Agent) retireVM() {
	if a.vm == nil {
		return
	}
	a.abandonExits(true)
	// Persists queued for the old VM must land before a restore rewrites
	// the disk, not after.
	a.disk.drain()
	a.vm.Close()
	a.dropVM()
	a.abandonExits(false)
}

// dropVM forgets the VM the loop drove, closed or about to be.
func (a *Agent) dropVM() {
	a.vm, a.booted, a.running = nil, false, false
	a.mu.Lock()
	a.baseVM = nil
	a.mu.Unlock()
}

// resyncBase is the node's Config.ResyncBase: what this host's VM
// changed since the checkpoint it last restored, encoded, for the
// primary to cover with an increment; nil when it cannot say (a fake VM,
// no checkpoint restored since its last failure, a set too large to
// encode), and the resync is then a full one. The node calls it with mu
// held.
func (a *Agent) resyncBase() []byte {
	vm := a.baseVM
	if vm == nil {
		return nil
	}
	var b []byte
	d, err := vm.DirtySinceBase()
	if err == nil {
		b, err = d.MarshalBinary()
	}
	if err != nil {
		// Retransmitted requests ask again: say it once.
		if why := err.Error(); why != a.baseErr {
			a.baseErr = why
			a.log.Info("no resync base for the primary; the resync will be a full checkpoint", "err", err)
		}
		return nil
	}
	a.baseErr = ""
	return b
}

func (a *Agent) restore(c lockstep.Checkpoint) error {
	began := time.Now()
	// A pre-copy chain's parts, then the checkpoint that ends it: those
	// loaded ahead (loadPart) are in the joining VM already.
	base := c.ID - uint64(len(c.Parts))
	j := a.joinVM
	a.joinVM = nil
	ahead := 0
	if j != nil && len(c.Parts) > 0 && j.base == base && j.through < c.ID {
		ahead = int(j.through - base + 1)
	} else if j != nil {
		j.vm.Close()
		j = nil
	}
	chain, err := decodeChain(c, ahead)
	if err != nil {
		if j != nil {
			j.vm.Close()
		}
		return err
	}
	if len(c.Parts) == 0 && chain[0].Kind == vmm.Incremental {
		// A resync's increment over the checkpoint this VM restored.
		return a.restoreIncrement(c, chain[0], began)
	}
	a.retireVM()
	decoded := time.Now()
	created := decoded // no new VM when the parts are loaded already
	var vm VM
	var partTimes []time.Duration
	if j != nil {
		vm = j.vm
		if partTimes, err = restoreChain(vm, c, chain, ahead); err != nil {
			// The VM is undefined now: the whole chain into a new one.
			a.log.Warn("restoring onto the pre-copy parts loaded failed; restoring the whole chain", "id", c.ID, "err", err)
			vm.Close()
			vm, ahead = nil, 0
			if chain, err = decodeChain(c, 0); err != nil {
				return err
			}
		}
	}
	if vm == nil {
		if vm, err = a.cfg.NewVM(a); err != nil {
			return fmt.Errorf("creating a VM to restore into: %w", err)
		}
		created = time.Now()
	}
	if j == nil || ahead == 0 {
		if partTimes, err = restoreChain(vm, c, chain, 0); err != nil {
			vm.Close()
			return err
		}
	}
	a.vm, a.booted = vm, true
	a.stats.restores.Add(1)
	a.log.Info("checkpoint restored", "id", c.ID, "seq", c.Seq, "kind", "full", "pre-copy parts", len(c.Parts), "loaded ahead", ahead, "bytes", len(c.Data),
		"took", time.Since(began).Round(10*time.Microsecond), "decode_and_close", decoded.Sub(began).Round(10*time.Microsecond),
		"new_vm", created.Sub(decoded).Round(10*time.Microsecond), "parts", fmt.Sprint(partTimes))
	if a.cfg.checkpointState != nil {
		a.cfg.checkpointState(c.ID, false, vm)
	}
	a.mu.Lock()
	a.baseVM, _ = vm.(incrementalVM)
	if ahead > 0 {
		for _, ns := range j.clocks {
			a.clock.restoredNs(ns)
		}
	}
	for _, s := range chain {
		a.clock.restored(s)
	}
	err = a.node.CheckpointRestored(c.ID)
	a.mu.Unlock()
	a.joinGC.releaseAfter(joinGCTail)
	if err != nil {
		return err
	}
	return a.applyRun()
}

// restoreIncrement applies a resync's increment s onto this host's VM,
// which stands on the checkpoint the increment was taken over: on a
// Successor of it (a fresh KVM VM and vCPU over the same memory and
// disk), since the old vCPU is stuck in the exit that diverged and KVM
// might complete that access on its next run. The VMM refuses an
// increment that lacks a page or chunk this VM changed since
// (vmm.ErrNotCovered). Whatever fails leaves no VM fit to run: it is
// closed, and the node asks the primary for a full checkpoint
// (Node.CheckpointRestoreFailed), which goes into a new VM as a join's
// does.
func (a *Agent) restoreIncrement(c lockstep.Checkpoint, s *vmm.Snapshot, began time.Time) error {
	inc, ok := a.vm.(incrementalVM)
	if a.vm == nil || !ok {
		a.retireVM()
		return a.restoreFailed(c, errors.New("this host has no VM that takes an increment"))
	}
	old := a.vm
	// The vCPU waits at the exit that diverged, or runs towards the
	// next: it gives that exit up (the VM fails with errAborted) or stops
	// at a clean point. Persists queued for it land before the increment
	// rewrites the disk.
	a.abandonExits(true)
	_ = old.Pause()
	a.disk.drain()
	next, err := inc.Successor(a)
	a.abandonExits(false)
	if err != nil {
		old.Close()
		a.dropVM()
		return a.restoreFailed(c, fmt.Errorf("making the successor VM: %w", err))
	}
	created := time.Now()
	if a.cfg.failIncrement != nil {
		err = a.cfg.failIncrement(c.ID)
	}
	if err == nil {
		err = next.Restore(s)
	}
	if err != nil {
		next.Close()
		a.dropVM()
		return a.restoreFailed(c, err)
	}
	a.vm, a.booted, a.running = next, true, false
	a.stats.restores.Add(1)
	a.stats.incRestores.Add(1)
	a.log.Info("checkpoint restored", "id", c.ID, "seq", c.Seq, "kind", "increment", "pages", len(s.PageNumbers), "disk_chunks", len(s.DiskChunks),
		"bytes", len(c.Data), "took", time.Since(began).Round(10*time.Microsecond),
		"successor_vm", created.Sub(began).Round(10*time.Microsecond), "apply", time.Since(created).Round(10*time.Microsecond))
	if a.cfg.checkpointState != nil {
		a.cfg.checkpointState(c.ID, true, next)
	}
	a.mu.Lock()
	a.baseVM = next
	a.clock.restored(s)
	err = a.node.CheckpointRestored(c.ID)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	return a.applyRun()
}

// restoreFailed tells the node a resync's increment could not be
// restored: it asks the primary for a full checkpoint.
func (a *Agent) restoreFailed(c lockstep.Checkpoint, cause error) error {
	a.stats.restoreFailures.Add(1)
	a.log.Warn("restoring the resync's increment failed; asking the primary for a full checkpoint", "id", c.ID, "seq", c.Seq, "err", cause)
	a.mu.Lock()
	err := a.node.CheckpointRestoreFailed(c.ID, cause)
	a.mu.Unlock()
	return err
}

// decodeChain decodes the parts of c's chain from the skip-th, then c's
// own data.
func decodeChain(c lockstep.Checkpoint, skip int) ([]*vmm.Snapshot, error) {
	var chain []*vmm.Snapshot
	for i, b := range append(append([][]byte(nil), c.Parts[skip:]...), c.Data) {
		s, err := vmm.UnmarshalSnapshot(b)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %d from the primary, part %d of %d: %w", c.ID, skip+i+1, len(c.Parts)+1, err)
		}
		chain = append(chain, s)
	}
	return chain, nil
}

// restoreChain restores chain (c's parts from the skip-th, then c) into vm
// and returns how long each took.
func restoreChain(vm VM, c lockstep.Checkpoint, chain []*vmm.Snapshot, skip int) ([]time.Duration, error) {
	var times []time.Duration
	for i, s := range chain {
		t0 := time.Now()
		if err := vm.Restore(s); err != nil {
			return times, fmt.Errorf("restoring checkpoint %d, part %d of %d: %w", c.ID, skip+i+1, len(c.Parts)+1, err)
		}
		times = append(times, time.Since(t0).Round(10*time.Microsecond))
	}
	return times, nil
}
