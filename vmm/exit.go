package vmm

import (
	"errors"
	"fmt"
	"math"
	"sync"
)

// ExitHook sees every device exit. It is called on the vCPU thread, in exit
// order, once per exit, and returns what the guest is given. It is the one
// place where record/replay (or lockstep) meets the VMM:
//
//   - For an input (Exit.Dir == DirInput), a live hook calls e.Live to perform
//     the request on the device and records the result; a replaying hook
//     returns a recorded Result and never touches the device.
//   - For an output, the hook decides when the world sees it: e.Deliver
//     performs it now, e.Hold returns a handle to Release (or Drop) later,
//     and doing neither drops it. The Result's Status is what the guest
//     sees, so a replaying hook must return the status the primary saw.
//
// An error stops the VM; the error Machine.Wait returns wraps it together
// with the exit index and the registers. A request the VMM refuses
// (GuestError) never gets here.
type ExitHook interface {
	OnExit(e *Exit) (Result, error)
}

// GuestErrorObserver is implemented by an ExitHook that wants to see the
// requests the VMM refused as guest bugs (GuestError): they never reach
// OnExit and take no exit index. OnGuestError is called on the vCPU
// thread after the guest was answered; it must not block.
type GuestErrorObserver interface {
	OnGuestError(ge *GuestError)
}

// Result is what the guest sees when an exit completes: the status and
// result fields of its ftvm_req and, for an input, the bytes written at
// req.addr (at most req.len; 6 for the NIC MAC).
type Result struct {
	Status int32
	Value  uint64
	Data   []byte
}

// Exit is one device request as the hook sees it. The fields are the
// decoded ftvm_req; an Exit is valid only during the OnExit call.
type Exit struct {
	Index  uint64    // the exit index: the n-th device exit of this VM, from 0
	Device Device    // which device the guest addressed
	Op     uint32    // the request's op
	Dir    Direction // DirInput or DirOutput
	Addr   uint64    // req.addr
	Len    uint32    // req.len
	Arg    uint64    // req.arg
	// Data holds an output's bytes (console text, a frame, a block). It
	// aliases guest memory and is valid only during OnExit; Hold copies it.
	// Nil for inputs.
	Data []byte

	d   *dispatcher
	dev device
}

func (e *Exit) String() string {
	return fmt.Sprintf("exit %d %s %s %s", e.Index, e.Device, OpName(e.Device, e.Op), e.Dir)
}

// Live performs an input request on the real device and returns its result.
// For the NIC WAIT it blocks until a frame arrives, the timeout passes or the
// VM is asked to pause or stop (then it answers 0, like a timeout).
func (e *Exit) Live() (Result, error) {
	if e.Dir != DirInput {
		return Result{}, fmt.Errorf("%v: Live is for inputs; deliver or hold an output", e)
	}
	return e.dev.input(e)
}

// Deliver performs an output now, on the vCPU thread, and returns the
// result to give the guest: StatusOK, or the status for the backend's error.
func (e *Exit) Deliver() Result {
	if e.Dir != DirOutput {
		return Result{Status: StatusIO}
	}
	if st := e.dev.check(e); st != StatusOK {
		return Result{Status: st}
	}
	if err := e.dev.deliver(e.Op, e.Arg, e.Data); err != nil {
		return Result{Status: statusFor(err)}
	}
	return Result{Status: StatusOK}
}

// Hold takes an output out of the guest's hands without performing it: the
// returned handle owns a copy of the data and performs it on Release. A
// device that can refuse an output up front (a block write past the end)
// makes Hold fail with an error that wraps ErrRefused; give the guest
// StatusOf(err). Held block writes stay visible to later block reads, but
// a snapshot does not hold them (it saves the disk file): the caller
// carries them with it.
func (e *Exit) Hold() (*Output, error) {
	if e.Dir != DirOutput {
		return nil, fmt.Errorf("%v: only outputs can be held", e)
	}
	if st := e.dev.check(e); st != StatusOK {
		return nil, &refusedError{status: st, what: e.String()}
	}
	o := &Output{
		Index: e.Index, Device: e.Device, Op: e.Op, Arg: e.Arg,
		Data: append([]byte(nil), e.Data...),
		dev:  e.dev,
	}
	if h, ok := e.dev.(holder); ok {
		h.hold(o)
	}
	return o, nil
}

// ErrRefused is wrapped by the error of Hold when the device refuses the
// output before it is held.
var ErrRefused = errors.New("output refused by the device")

type refusedError struct {
	status int32
	what   string
}

func (r *refusedError) Error() string {
	return fmt.Sprintf("%s: %v (status %d)", r.what, ErrRefused, r.status)
}
func (r *refusedError) Unwrap() error { return ErrRefused }

// StatusOf is the guest status for an error from Hold or Release.
func StatusOf(err error) int32 { return statusFor(err) }

func statusFor(err error) int32 {
	var r *refusedError
	switch {
	case err == nil:
		return StatusOK
	case errors.As(err, &r):
		return r.status
	case errors.Is(err, errBlockRange):
		return StatusRange
	}
	return StatusIO
}

// Output is a held output: console text, a frame, a block write, kept out
// of the world until its owner releases it. Release and Drop may be called
// from any goroutine; once one has been done, later calls do nothing.
type Output struct {
	Index  uint64
	Device Device
	Op     uint32
	Arg    uint64
	Data   []byte // owned by the Output

	mu   sync.Mutex
	done bool
	dev  device
}

// Release performs the output on its backend. A held block write whose
// write or fdatasync fails stays held (still visible to the guest's
// reads) and may be released again, so that its owner can retry it until
// the disk takes it (a full filesystem that gets space back); any other
// output is done after one Release, whatever its backend said.
func (o *Output) Release() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return nil
	}
	err := o.dev.deliver(o.Op, o.Arg, o.Data)
	h, holds := o.dev.(holder)
	if err != nil && holds && !errors.Is(err, errBlockRange) {
		return err
	}
	o.done = true
	if holds {
		h.unhold(o)
	}
	return err
}

// Drop discards the output: the world never sees it.
func (o *Output) Drop() { o.end() }

// end marks the output done and no longer held, performing nothing.
func (o *Output) end() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return
	}
	o.done = true
	if h, ok := o.dev.(holder); ok {
		h.unhold(o)
	}
}

// Deliver performs an output that no pending exit stands for: a held
// output whose data a checkpoint carried (a snapshot holds the disk as it
// is on the backend, never the held writes), released by the host that
// goes on after a failover, which has no Output handle for it. d, op, arg
// and data are the exit's (Output's) fields.
//
// The request is checked as the guest's would be: op must be an output
// of d, data must fit the device's limits (a console write at most
// ConsoleMaxBytes, a frame 14 to NICFrameMaxBytes bytes, a block write a
// positive multiple of BlockSectorBytes up to BlockMaxBytes) and a block
// write must lie on the disk; anything else is refused with an error that
// says what was wrong, and nothing is performed. Delivering the halt
// device's EXIT does nothing, as its release would.
//
// Like Output.Release it may be called from any goroutine, while the VM
// runs or is paused, and performs the output on the backend at once (a
// block write is durable when it returns, and is in the next snapshot).
func (m *Machine) Deliver(d Device, op uint32, arg uint64, data []byte) error {
	if d < DeviceConsole || d > DeviceHalt {
		return fmt.Errorf("deliver: unknown device %d (devices are %d to %d)", uint8(d), DeviceConsole, DeviceHalt)
	}
	spec, ok := lookupOp(d, op)
	if !ok {
		return fmt.Errorf("deliver: the %s device has no op %d", d, op)
	}
	what := fmt.Sprintf("deliver %s %s", d, spec.name)
	if spec.dir != DirOutput {
		return fmt.Errorf("%s: it is an input, not an output; only outputs can be delivered", what)
	}
	if uint64(len(data)) > math.MaxUint32 {
		// Checked before the length is narrowed to the 32 bits of a
		// request, where it could pass for a small one.
		return fmt.Errorf("%s: %d bytes do not fit a request's 32-bit length", what, len(data))
	}
	if err := checkLen(d, op, uint32(len(data))); err != nil {
		return fmt.Errorf("%s: %v", what, err)
	}
	dev := m.disp.devs[d]
	e := &Exit{Device: d, Op: op, Dir: DirOutput, Len: uint32(len(data)), Arg: arg, Data: data, dev: dev}
	if st := dev.check(e); st != StatusOK {
		if d == DeviceBlock {
			return fmt.Errorf("%s of %d bytes at sector %d runs past the end of the %d-sector disk (was the checkpoint taken with a disk of another size?): %w", what, len(data), arg, m.block.sectors, ErrRefused)
		}
		return &refusedError{status: st, what: what}
	}
	if err := dev.deliver(op, arg, data); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// LiveHook runs the VM without record or replay: inputs come from the
// devices and outputs are delivered at once.
type LiveHook struct{}

// OnExit implements ExitHook.
func (LiveHook) OnExit(e *Exit) (Result, error) {
	if e.Dir == DirInput {
		return e.Live()
	}
	return e.Deliver(), nil
}

var _ ExitHook = LiveHook{}
