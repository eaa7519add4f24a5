package vmm

import (
	"fmt"
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
// outside memory, a length over a limit). It stops the VM.
type GuestError struct {
	Port   uint16
	Device Device
	Op     uint32
	Reason string
}

func (g *GuestError) Error() string {
	if g.Device == 0 {
		return fmt.Sprintf("guest wrote to port %#x: %s", g.Port, g.Reason)
	}
	return fmt.Sprintf("guest request to %s (port %#x) op %s: %s", g.Device, g.Port, OpName(g.Device, g.Op), g.Reason)
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
}

// handleOut handles a guest store of size bytes of value to the doorbell of
// port. A nil return means the guest may resume; the exit index advanced by
// one.
func (d *dispatcher) handleOut(port uint16, size uint8, value uint32) error {
	dev, ok := deviceForPort(port)
	if !ok {
		return &GuestError{Port: port, Reason: fmt.Sprintf("no device at this port (devices are at %#x-%#x)", PortConsole, PortHalt)}
	}
	bad := func(op uint32, format string, args ...any) error {
		return &GuestError{Port: port, Device: dev, Op: op, Reason: fmt.Sprintf(format, args...)}
	}
	if size != 4 {
		return bad(0, "store of %d bytes to the doorbell; a request is addressed by one 32-bit store", size)
	}
	reqAddr := uint64(value)
	if reqAddr%requestAlignBytes != 0 {
		return bad(0, "request at %#x is not 8-byte aligned", reqAddr)
	}
	raw, err := d.mem.Slice(reqAddr, requestStructBytes)
	if err != nil {
		return bad(0, "request struct: %v", err)
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
		return bad(e.Op, "unknown op %d", e.Op)
	}
	e.Dir = spec.dir
	if flags := le.Uint32(raw[reqFlagsOff:]); flags != 0 {
		return bad(e.Op, "flags is %#x; it must be 0", flags)
	}
	if err := d.validate(e); err != nil {
		return bad(e.Op, "%v", err)
	}
	if e.Dir == DirOutput {
		if e.Data, err = d.mem.Slice(e.Addr, uint64(e.Len)); err != nil {
			return bad(e.Op, "%v", err)
		}
	}

	res, err := d.hook.OnExit(e)
	if err != nil {
		return fmt.Errorf("%v: %w", e, err)
	}
	if e.Dir == DirInput && len(res.Data) > 0 {
		if max := d.inputDataMax(e); uint64(len(res.Data)) > max {
			return fmt.Errorf("%v: the hook returned %d bytes of data for a %d-byte buffer (corrupt log?)", e, len(res.Data), max)
		}
		if err := d.mem.Write(e.Addr, res.Data); err != nil {
			return bad(e.Op, "%v", err)
		}
	}
	var st [4]byte
	le.PutUint32(st[:], uint32(res.Status))
	if err := d.mem.Write(reqAddr+reqStatusOff, st[:]); err != nil {
		return bad(e.Op, "%v", err)
	}
	if err := d.mem.putUint64(reqAddr+reqResultOff, res.Value); err != nil {
		return bad(e.Op, "%v", err)
	}
	d.next++
	if dev == DeviceHalt {
		d.halted = true
		d.exitCode = e.Arg
	}
	return nil
}

// validate checks the guest-supplied lengths and buffers of a request
// against the device table of ftvm.h.
func (d *dispatcher) validate(e *Exit) error {
	if err := checkLen(e.Device, e.Op, e.Len); err != nil {
		return err
	}
	if n, ok := bufferBytes(e.Device, e.Op, e.Len); ok {
		if _, err := d.mem.Slice(e.Addr, n); err != nil {
			return fmt.Errorf("buffer: %w", err)
		}
	}
	return nil
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
