package vmm

import (
	"fmt"
	"sync/atomic"
)

// device is one guest device: the live side of its inputs, the effect of
// its outputs, and its own save/restore state.
type device interface {
	// input performs an input request live.
	input(e *Exit) (Result, error)
	// check says whether an output can be performed at all (StatusOK), or
	// the status to give the guest instead.
	check(e *Exit) int32
	// deliver performs an output. It may run on any goroutine, later than
	// the exit (a held output), so it touches only the backend.
	deliver(op uint32, arg uint64, data []byte) error
	// saveState and restoreState carry the device's state in snapshots.
	saveState() ([]byte, error)
	restoreState(b []byte) error
}

// holder is a device whose held outputs stay visible to the guest (the
// block device: a read after a held write must see the write).
type holder interface {
	hold(o *Output)
	unhold(o *Output)
}

// Limits of guest-supplied lengths beyond those of ftvm.h.
const (
	// nicRXBufferMaxBytes bounds the buffer a guest may offer for RX; a
	// frame is never longer than NICFrameMaxBytes, so more is a guest bug.
	nicRXBufferMaxBytes = 65536
	// nicWaitMaxNs caps one WAIT; the guest sees a timeout and waits again.
	nicWaitMaxNs = 10_000_000_000
)

// GuestError is a request the guest got wrong (an unknown op, a buffer
// outside memory, a length over a limit, a store to a doorbell offset with
// no device). It does not stop the VM: the exit completes without reaching
// the device or the hook, the guest finds Status in its request (or, when
// the request struct itself cannot be reached, nothing: Skipped) and goes
// on, and the VMM counts it (Status.GuestErrors) and logs it, rate-limited.
// A refused request takes no exit index, and what the guest sees depends
// only on its own memory and registers, so every replica refuses it the
// same way and the log carries nothing for it.
type GuestError struct {
	Exit   uint64 // the index the next device exit gets (a refused request takes none)
	Port   uint16
	Device Device
	Op     uint32
	// Status is what was written to the request's status field
	// (StatusInval, StatusFault, StatusNoDev); 0 when Skipped.
	Status int32
	// Skipped: the request struct could not be reached (not a 32-bit
	// store, misaligned, outside guest memory), so nothing was written.
	Skipped bool
	Reason  string
}

func (g *GuestError) Error() string {
	where := fmt.Sprintf("port %#x", g.Port)
	if g.Device != 0 {
		where = fmt.Sprintf("%s (port %#x)", g.Device, g.Port)
	}
	if g.Skipped {
		return fmt.Sprintf("guest access to the doorbell of %s: %s; no request to answer, skipped", where, g.Reason)
	}
	if g.Device != 0 {
		where += " op " + OpName(g.Device, g.Op)
	}
	return fmt.Sprintf("guest request to %s: %s; refused with status %d", where, g.Reason, g.Status)
}

// dispatcher decodes one doorbell exit into a request, checks it, hands it to
// the hook and writes the result back. It does no KVM calls, so tests drive
// it with plain memory.
type dispatcher struct {
	mem  *Memory
	devs [DeviceHalt + 1]device
	hook ExitHook
	// next is the index the next device exit gets; it is part of the
	// snapshot so that indices continue across a restore.
	next uint64

	halted   bool
	exitCode uint64

	// guestErrors counts the requests refused as guest bugs; accessed
	// atomically (Machine.Status reads it from any goroutine). It is a
	// statistic, not VM state: snapshots do not carry it.
	guestErrors atomic.Uint64
	// onGuestError, if set, sees every refused request after it was
	// answered (the Machine logs it); on the vCPU thread.
	onGuestError func(*GuestError)
}

// handleOut handles a guest store of size bytes of value to the doorbell of
// port. A request the guest got wrong is refused (refuse) and the guest
// resumes; the exit index advances only for a request that reached the
// hook. An error is a failure of the VMM or of the hook, which stops the VM.
func (d *dispatcher) handleOut(port uint16, size uint8, value uint32) error {
	e, reqAddr, ge := d.decode(port, size, value)
	if ge != nil {
		d.refuse(ge, reqAddr)
		return nil
	}
	res, err := d.hook.OnExit(e)
	if err != nil {
		return fmt.Errorf("%v: %w", e, err)
	}
	// The request was checked against guest memory before the hook, so
	// the writes below cannot fail but on a VMM bug or a corrupt log.
	if e.Dir == DirInput && len(res.Data) > 0 {
		if max := d.inputDataMax(e); uint64(len(res.Data)) > max {
			return fmt.Errorf("%v: the hook returned %d bytes of data for a %d-byte buffer (corrupt log?)", e, len(res.Data), max)
		}
		if err := d.mem.Write(e.Addr, res.Data); err != nil {
			return fmt.Errorf("%v: writing the input: %w", e, err)
		}
	}
	if err := d.answer(reqAddr, res.Status, res.Value); err != nil {
		return fmt.Errorf("%v: %w", e, err)
	}
	d.next++
	if e.Device == DeviceHalt {
		d.halted = true
		d.exitCode = e.Arg
	}
	return nil
}

// decode reads and checks the request a doorbell store addresses. A
// request the guest got wrong comes back as a GuestError, with the status
// to answer it with (none when the struct cannot be reached).
func (d *dispatcher) decode(port uint16, size uint8, value uint32) (*Exit, uint64, *GuestError) {
	reqAddr := uint64(value)
	dev, ok := deviceForPort(port)
	// The request struct first: without it the guest can be told nothing.
	skip := func(format string, args ...any) (*Exit, uint64, *GuestError) {
		return nil, 0, &GuestError{Exit: d.next, Port: port, Device: dev, Skipped: true, Reason: fmt.Sprintf(format, args...)}
	}
	if size != 4 {
		return skip("store of %d bytes to the doorbell; a request is addressed by one 32-bit store", size)
	}
	if reqAddr%requestAlignBytes != 0 {
		return skip("request at %#x is not 8-byte aligned", reqAddr)
	}
	raw, err := d.mem.Slice(reqAddr, requestStructBytes)
	if err != nil {
		return skip("request struct: %v", err)
	}
	bad := func(op uint32, status int32, format string, args ...any) (*Exit, uint64, *GuestError) {
		return nil, reqAddr, &GuestError{Exit: d.next, Port: port, Device: dev, Op: op, Status: status, Reason: fmt.Sprintf(format, args...)}
	}
	if !ok {
		return bad(0, StatusNoDev, "no device at this port (devices are at %#x-%#x)", PortConsole, PortHalt)
	}
	e := &Exit{
		Index:  d.next,
		Device: dev,
		Op:     le.Uint32(raw[reqOpOff:]),
		Addr:   le.Uint64(raw[reqAddrOff:]),
		Len:    le.Uint32(raw[reqLenOff:]),
		Arg:    le.Uint64(raw[reqArgOff:]),
		d:      d,
		dev:    d.devs[dev],
	}
	spec, ok := lookupOp(dev, e.Op)
	if !ok {
		return bad(e.Op, StatusInval, "unknown op %d", e.Op)
	}
	e.Dir = spec.dir
	if flags := le.Uint32(raw[reqFlagsOff:]); flags != 0 {
		return bad(e.Op, StatusInval, "flags is %#x; it must be 0", flags)
	}
	if err := checkLen(e.Device, e.Op, e.Len); err != nil {
		return bad(e.Op, StatusInval, "%v", err)
	}
	if n, ok := bufferBytes(e.Device, e.Op, e.Len); ok {
		buf, err := d.mem.Slice(e.Addr, n)
		if err != nil {
			return bad(e.Op, StatusFault, "buffer: %v", err)
		}
		if e.Dir == DirOutput {
			e.Data = buf
		}
	}
	return e, reqAddr, nil
}

// refuse answers a request the guest got wrong without the device or the
// hook, counts it and reports it. The answer is a VMM write to guest
// memory, so it is in the dirty log like any other.
func (d *dispatcher) refuse(ge *GuestError, reqAddr uint64) {
	if !ge.Skipped {
		if err := d.answer(reqAddr, ge.Status, 0); err != nil {
			// Cannot happen: decode found the struct in memory.
			ge.Skipped, ge.Reason = true, ge.Reason+"; answering it: "+err.Error()
		}
	}
	d.guestErrors.Add(1)
	if d.onGuestError != nil {
		d.onGuestError(ge)
	}
}

// answer writes a request's status and result fields.
func (d *dispatcher) answer(reqAddr uint64, status int32, value uint64) error {
	var st [4]byte
	le.PutUint32(st[:], uint32(status))
	if err := d.mem.Write(reqAddr+reqStatusOff, st[:]); err != nil {
		return err
	}
	return d.mem.putUint64(reqAddr+reqResultOff, value)
}

// checkLen checks a request's length against the device's limits. It is
// the whole of the check for an output that no exit carries
// (Machine.Deliver), so it must not depend on guest memory.
func checkLen(dev Device, op uint32, n uint32) error {
	atMost := func(limit uint64) error {
		if uint64(n) > limit {
			return fmt.Errorf("len %d exceeds the limit of %d bytes", n, limit)
		}
		return nil
	}
	switch dev {
	case DeviceConsole:
		return atMost(ConsoleMaxBytes)
	case DeviceEntropy:
		return atMost(EntropyMaxBytes)
	case DeviceNIC:
		switch op {
		case OpNICTX:
			if n < nicFrameMinBytes {
				return fmt.Errorf("frame of %d bytes is shorter than an Ethernet header (%d)", n, nicFrameMinBytes)
			}
			return atMost(NICFrameMaxBytes)
		case OpNICRX:
			return atMost(nicRXBufferMaxBytes)
		}
	case DeviceBlock:
		if op == OpBlockSize {
			return nil
		}
		if n == 0 || n%BlockSectorBytes != 0 {
			return fmt.Errorf("len %d is not a positive multiple of the %d-byte sector", n, BlockSectorBytes)
		}
		return atMost(BlockMaxBytes)
	}
	return nil
}

// bufferBytes is how much guest memory at req.addr a request uses; ok is
// false for the requests that use none (their addr is not looked at).
func bufferBytes(dev Device, op uint32, n uint32) (bytes uint64, ok bool) {
	switch {
	case dev == DeviceNIC && op == OpNICMAC:
		return nicMACBytes, true
	case dev == DeviceNIC && op == OpNICWait, dev == DeviceBlock && op == OpBlockSize, dev == DeviceClock, dev == DeviceHalt:
		return 0, false
	}
	return uint64(n), true
}

// inputDataMax is the most data an input may write at req.addr.
func (d *dispatcher) inputDataMax(e *Exit) uint64 {
	if e.Device == DeviceNIC && e.Op == OpNICMAC {
		return nicMACBytes
	}
	return uint64(e.Len)
}
