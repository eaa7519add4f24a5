package agent

import (
	"errors"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// exitReq is one device exit as the hook logic needs it: *vmm.Exit through
// vmmExit, or a scripted exit in unit tests of the logic.
type exitReq interface {
	info() exitInfo
	live() (vmm.Result, error)
	hold() (heldOutput, error)
}

type exitInfo struct {
	Index  uint64
	Device vmm.Device
	Op     uint32
	Dir    vmm.Direction
	Arg    uint64
	Len    uint32
	Data   []byte // an output's bytes, valid during the exit
}

type vmmExit struct{ e *vmm.Exit }

func (x vmmExit) info() exitInfo {
	e := x.e
	return exitInfo{Index: e.Index, Device: e.Device, Op: e.Op, Dir: e.Dir, Arg: e.Arg, Len: e.Len, Data: e.Data}
}
func (x vmmExit) live() (vmm.Result, error) { return x.e.Live() }
func (x vmmExit) hold() (heldOutput, error) {
	o, err := x.e.Hold()
	if err != nil {
		return nil, err
	}
	return o, nil
}

var (
	_ vmm.ExitHook           = (*Agent)(nil)
	_ vmm.GuestErrorObserver = (*Agent)(nil)
)

// OnGuestError implements vmm.GuestErrorObserver: it counts a request the
// VMM refused (the VMM logs it). Nothing is logged to the peer: the
// replica's VMM refuses the same request at the same point.
func (a *Agent) OnGuestError(*vmm.GuestError) { a.stats.guestErrors.Add(1) }

// OnExit implements vmm.ExitHook; it runs on the vCPU thread. It is the
// recorder on a primary and the replayer on a secondary; which one is the
// node's answer (Live) at each exit, so a secondary that goes live needs
// no switch in the VMM.
func (a *Agent) OnExit(e *vmm.Exit) (vmm.Result, error) { return a.onExit(vmmExit{e}) }

func (a *Agent) onExit(x exitReq) (vmm.Result, error) {
	a.pollTransport()
	in := x.info()
	kind, err := exitKind(in.Device, in.Op)
	if err != nil {
		return vmm.Result{}, err
	}
	if in.Dir == vmm.DirInput {
		return a.input(x, in, kind)
	}
	return a.output(x, in, kind)
}

// pollTransport lets a Poller transport deliver what arrived, here on the
// vCPU thread with no lock held (HandleFrame takes what it needs), on a
// host that serves the VM live. tr is written once, by Run, before
// started is set, and never again.
func (a *Agent) pollTransport() {
	if !a.started.Load() || !a.pollAtExits.Load() {
		return
	}
	if p, ok := a.tr.(Poller); ok {
		p.Poll()
	}
}

func (a *Agent) input(x exitReq, in exitInfo, kind uint16) (vmm.Result, error) {
	a.mu.Lock()
	for {
		if a.abort {
			a.mu.Unlock()
			return vmm.Result{}, errAborted
		}
		data, r := a.node.NextInput(in.Index, kind)
		switch r {
		case lockstep.OK:
			res, err := decodeInput(data, in.Arg, in.Len)
			if err != nil {
				// The record is for another request (or not one at
				// all): a divergence like any other, which a resync
				// repairs; the node counts it.
				if a.node.InputDiverged(in.Index) == lockstep.Diverged {
					a.log.Info("replica diverged on an input; asking for a resync", "exit", in.Index, "err", err)
				}
				a.poke()
				break
			}
			if isClockRead(kind) && !a.clock.replayed(res.Value) && a.clock.backwards&(a.clock.backwards-1) == 0 {
				a.log.Warn("the primary's log has the guest's clock going back; replaying it as logged", "exit", in.Index, "value", res.Value, "last", a.clock.last, "times", a.clock.backwards)
			}
			a.flushInlineVCPU() // the node may owe an acknowledgement
			a.mu.Unlock()
			return res, nil
		case lockstep.Live:
			if a.liveGate {
				break // the loop has not finished taking this host live
			}
			a.mu.Unlock()
			return a.recordInput(x, in, kind)
		case lockstep.Diverged:
			// The node asked for a resync (and counted it); its
			// checkpoint replaces this VM and aborts the wait.
			a.poke()
		}
		// Not poked for NotYet: nothing changed that the loop must act
		// on, and it broadcasts after every round anyway.
		a.cond.Wait()
	}
}

// recordInput serves an input live and logs it; the guest gets it at once
// (only outputs wait for the secondary).
func (a *Agent) recordInput(x exitReq, in exitInfo, kind uint16) (vmm.Result, error) {
	res, err := x.live()
	if err != nil {
		return vmm.Result{}, err
	}
	a.mu.Lock()
	if isClockRead(kind) {
		res.Value = a.clock.serve(res.Value)
	}
	_, err = a.node.RecordInput(in.Index, kind, encodeInput(in.Arg, in.Len, res))
	if err == nil {
		a.waitUnstalled()
	}
	a.mu.Unlock()
	if errors.Is(err, wire.ErrTooLarge) {
		return a.tooLarge(in, err), nil
	}
	if err != nil {
		return vmm.Result{}, err
	}
	return res, nil
}

// tooLarge answers an exit the log cannot carry with an I/O error, so
// that a request the wire refuses fails in the guest rather than taking
// the VM and the daemon down. The wire's bounds are derived from the
// devices' limits (internal/limits), so no request the VMM accepts gets
// here: it is the last line of defence should the two ever disagree. A
// replica that reaches the same exit finds no log item for it, which is
// a divergence, and a resync follows.
func (a *Agent) tooLarge(in exitInfo, err error) vmm.Result {
	if a.stats.tooLarge.Add(1) == 1 {
		a.log.Error("a guest request does not fit the log: the guest gets an I/O error (a bug in ftvm: internal/limits must cover every device's largest request)",
			"device", in.Device, "op", in.Op, "len", in.Len, "err", err)
	}
	return vmm.Result{Status: vmm.StatusIO}
}

// waitUnstalled holds the vCPU at the end of an exit while the node says
// the secondary lags a full window. CmdStall pauses the VM too, but only
// once the loop gets to it, and a guest can make many exits meanwhile:
// this is what bounds the log. The exit is complete (logged, held), so
// giving up the wait when the loop pauses the VM loses nothing. a.mu held.
func (a *Agent) waitUnstalled() {
	a.flushInlineVCPU()
	for a.node.Status().Stalled && !a.pausing && !a.abort {
		a.cond.Wait()
	}
}

func (a *Agent) output(x exitReq, in exitInfo, kind uint16) (vmm.Result, error) {
	h, err := x.hold()
	if errors.Is(err, vmm.ErrRefused) {
		// Refused before it was held (a block write past the end): the
		// replica's device refuses it the same way, so neither logs it.
		return vmm.Result{Status: vmm.StatusOf(err)}, nil
	}
	if err != nil {
		return vmm.Result{}, err
	}
	payload := encodeOutput(in.Arg, in.Data)
	if plantedHoldDelay > 0 {
		time.Sleep(plantedHoldDelay)
	}
	a.mu.Lock()
	for {
		if a.abort {
			a.mu.Unlock()
			h.Drop()
			return vmm.Result{}, errAborted
		}
		id, r := a.node.ReplayOutput(in.Index, kind, payload)
		switch r {
		case lockstep.OK:
			a.handles[id] = heldEntry{h: h, at: time.Now()}
			if a.cfg.OnReplayed != nil {
				// Under the lock: the loop cannot acknowledge the
				// comparison before an observer has seen the output.
				a.cfg.OnReplayed(in.Index, in.Device, in.Data)
			}
			a.flushInlineVCPU() // a compare acknowledgement, perhaps
			a.mu.Unlock()
			return vmm.Result{Status: vmm.StatusOK}, nil
		case lockstep.Live:
			if a.liveGate {
				break // the loop has not finished taking this host live
			}
			id, err := a.node.HoldOutput(in.Index, kind, payload)
			if err != nil {
				a.mu.Unlock()
				h.Drop()
				if errors.Is(err, wire.ErrTooLarge) {
					return a.tooLarge(in, err), nil
				}
				return vmm.Result{}, err
			}
			a.handles[id] = heldEntry{h: h, at: time.Now()}
			probeOutputHeld(id)
			a.tail.markHeld()
			if a.bugReleaseOnHold {
				h.Release()
			}
			a.waitUnstalled()
			a.mu.Unlock()
			return vmm.Result{Status: vmm.StatusOK}, nil
		case lockstep.Diverged:
			// The node keeps this output as pending; a resync replaces the
			// VM. Unless the primary dies first: then this host goes live
			// from here, the node releases the pending output at go-live,
			// and this execution is the one the world sees from now on.
			a.handles[id] = heldEntry{h: h, at: time.Now()}
			a.poke()
			for !a.abort {
				a.cond.Wait()
				if !a.liveGate && a.node.Status().Role == lockstep.RolePrimary {
					a.mu.Unlock()
					return vmm.Result{Status: vmm.StatusOK}, nil
				}
			}
			a.mu.Unlock()
			return vmm.Result{}, errAborted
		}
		a.cond.Wait()
	}
}
