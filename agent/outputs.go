package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/vmm"
)

// heldOutput is an output the VMM keeps out of the world: *vmm.Output.
type heldOutput interface {
	Release() error
	Drop()
}

// heldEntry is an output the VMM holds, and when it was held (for the
// hold latency a primary reports).
type heldEntry struct {
	h  heldOutput
	at time.Time
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

// vmmOutput is h as the VMM holds it, or nil (a test's stand-in).
func vmmOutput(h heldOutput) *vmm.Output {
	o, _ := h.(*vmm.Output)
	return o
}

// unsyncedHeld is a held block write that can be written without
// fdatasync and marked durable after a sync of the disk: *vmm.Output.
type unsyncedHeld interface {
	WriteUnsynced() error
	SyncDisk() error
	MarkDurable()
}

// unsyncedVM is a VM that can deliver a block write without fdatasync and
// sync its disk: *vmm.Machine.
type unsyncedVM interface {
	DeliverUnsynced(d vmm.Device, op uint32, arg uint64, data []byte) error
	SyncDisk() error
}

// lazyPersist says how the disk writer may make a write this secondary
// persists durable in a batch, or nil when it must be made durable on its
// own: a disk shared with the primary (Config.DiskFence) is the
// primary's, whose writes each present their fence; a held output that
// cannot (a test's stand-in).
func (a *Agent) lazyPersist(h heldOutput) *lazyWrite {
	u, ok := h.(unsyncedHeld)
	if !ok || a.cfg.DiskFence != nil {
		return nil
	}
	return &lazyWrite{write: u.WriteUnsynced, sync: u.SyncDisk, commit: u.MarkDurable}
}

// take removes an output from the table of held outputs.
func (a *Agent) take(id uint64) (heldEntry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.handles[id]
	delete(a.handles, id)
	return e, ok
}

// errNotHeld is the error for an output the node released (or had
// persisted) that no exit of this VM holds and no checkpoint carried
// (lockstep.Output.Carried): the table of held outputs lost it, a bug
// that must not pass for a carried output's delivery.
func errNotHeld(what string, o lockstep.Output) error {
	return fmt.Errorf("%s output seq %d (ID %d, device %#x): no exit of this VM holds it and no checkpoint carried it: the agent lost its hold (a bug in ftvm; the run stops rather than send bytes it cannot vouch for)", what, o.Seq, o.ID, o.Device)
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
// through the disk writer, behind the writes queued before it (one a
// secondary persists may join a batch: persisted), anything else at once.
func (a *Agent) deliverCarried(o lockstep.Output, persisted bool) error {
	do, err := carriedOutput(a.vm, o)
	if err != nil {
		return err
	}
	if isDiskWrite(o.Device) {
		var lazy *lazyWrite
		if u, ok := a.vm.(unsyncedVM); ok && persisted && a.cfg.DiskFence == nil {
			dev, op := splitKind(o.Device)
			arg, data, _ := decodeOutput(o.Data) // decoded once already by carriedOutput
			lazy = &lazyWrite{write: func() error { return u.DeliverUnsynced(dev, op, arg, data) }, sync: u.SyncDisk}
		}
		a.disk.enqueueLazy(fmt.Sprintf("seq %d (carried by a checkpoint)", o.Seq), o.Seq, a.fenced(o, do), lazy, nil)
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
		a.disk.enqueueLazy(fmt.Sprintf("seq %d", o.Seq), o.Seq, e.h.Release, a.lazyPersist(e.h), vmmOutput(e.h))
		return nil
	}
	if !o.Carried {
		return errNotHeld("persisting", o)
	}
	if err := a.deliverCarried(o, true); err != nil {
		return fmt.Errorf("writing seq %d, which a checkpoint carried, to this host's disk: %w", o.Seq, err)
	}
	return nil
}
