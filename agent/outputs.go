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
// through the disk writer, behind the writes queued before it, anything
// else at once.
func (a *Agent) deliverCarried(o lockstep.Output) error {
	do, err := carriedOutput(a.vm, o)
	if err != nil {
		return err
	}
	if isDiskWrite(o.Device) {
		a.disk.enqueue(fmt.Sprintf("seq %d (carried by a checkpoint)", o.Seq), o.Seq, a.fenced(o, do), nil)
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
		a.disk.enqueue(fmt.Sprintf("seq %d", o.Seq), o.Seq, e.h.Release, vmmOutput(e.h))
		return nil
	}
	if !o.Carried {
		return errNotHeld("persisting", o)
	}
	if err := a.deliverCarried(o); err != nil {
		return fmt.Errorf("writing seq %d, which a checkpoint carried, to this host's disk: %w", o.Seq, err)
	}
	return nil
}
