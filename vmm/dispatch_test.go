package vmm

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestDispatchConsoleClockEntropyHalt(t *testing.T) {
	b := newExitBench(t, benchOpts{})
	b.mem.Write(0x2000, []byte("hi there"))
	if st, _ := b.mustCall(PortConsole, OpConsoleWrite, 0x2000, 8, 0); st != StatusOK {
		t.Fatalf("console status %d", st)
	}
	if b.con.String() != "hi there" {
		t.Fatalf("console got %q", b.con.String())
	}
	_, t1 := b.mustCall(PortClock, OpClockNow, 0, 0, 0)
	_, t2 := b.mustCall(PortClock, OpClockNow, 0, 0, 0)
	if t2 < t1 {
		t.Fatalf("clock went backwards: %d then %d", t1, t2)
	}
	b.mustCall(PortEntropy, OpEntropyRead, 0x3000, 16, 0)
	got, _ := b.mem.Slice(0x3000, 17)
	if !bytes.Equal(got[:16], bytes.Repeat([]byte{0xab}, 16)) || got[16] != 0 {
		t.Fatalf("entropy wrote %x; want 16 bytes of the source and nothing more", got)
	}
	b.mustCall(PortHalt, OpHaltExit, 0, 0, 42)
	if !b.disp.halted || b.disp.exitCode != 42 || b.disp.next != 5 {
		t.Fatalf("halted=%v code=%d next=%d; want halted, 42, 5 exits", b.disp.halted, b.disp.exitCode, b.disp.next)
	}
}

// TestDispatchRefusesGuestBugs makes every kind of request the VMM
// refuses: each is answered with its status (or, when the request struct
// cannot be reached, skipped), counted and reported, reaches neither the
// hook nor a device, takes no exit index, and the next request is served.
func TestDispatchRefusesGuestBugs(t *testing.T) {
	h := &holdHook{}
	b := newExitBench(t, benchOpts{hook: h, sectors: 8})
	var seen []*GuestError
	b.disp.onGuestError = func(ge *GuestError) { seen = append(seen, ge) }
	const untouched = 0x7777 // the status the guest left: a skipped request keeps it
	cases := []struct {
		name    string
		port    uint16
		op      uint32
		addr    uint64
		n       uint32
		reqAddr uint32
		size    uint8
		flags   uint32
		status  int32 // untouched: skipped
		want    string
	}{
		{name: "unknown port", port: 0x4ff, op: 1, status: StatusNoDev, want: "no device"},
		{name: "offset past the ports", port: 0xffff, op: 1, status: StatusNoDev, want: "no device"},
		{name: "byte-wide store", port: PortConsole, op: 1, size: 1, status: untouched, want: "one 32-bit store"},
		{name: "misaligned request", port: PortClock, op: 1, reqAddr: benchReqAddr + 4, status: untouched, want: "not 8-byte aligned"},
		{name: "request past memory", port: PortClock, op: 1, reqAddr: benchMemBytes - 8, status: untouched, want: "outside guest memory"},
		{name: "unknown op", port: PortClock, op: 2, status: StatusInval, want: "unknown op 2"},
		{name: "flags set", port: PortClock, op: 1, flags: 1, status: StatusInval, want: "flags"},
		{name: "console too long", port: PortConsole, op: 1, addr: 0x2000, n: ConsoleMaxBytes + 1, status: StatusInval, want: "exceeds"},
		{name: "console buffer wraps", port: PortConsole, op: 1, addr: math.MaxUint64 - 2, n: 8, status: StatusFault, want: "outside guest memory"},
		{name: "console buffer past end", port: PortConsole, op: 1, addr: benchMemBytes - 4, n: 8, status: StatusFault, want: "outside guest memory"},
		{name: "entropy too long", port: PortEntropy, op: 1, addr: 0x2000, n: EntropyMaxBytes + 1, status: StatusInval, want: "exceeds"},
		{name: "entropy past end", port: PortEntropy, op: 1, addr: benchMemBytes - 8, n: 16, status: StatusFault, want: "outside guest memory"},
		{name: "tx runt", port: PortNIC, op: OpNICTX, addr: 0x2000, n: 10, status: StatusInval, want: "shorter than an Ethernet header"},
		{name: "tx jumbo", port: PortNIC, op: OpNICTX, addr: 0x2000, n: NICFrameMaxBytes + 1, status: StatusInval, want: "exceeds"},
		{name: "mac past end", port: PortNIC, op: OpNICMAC, addr: benchMemBytes - 3, status: StatusFault, want: "outside guest memory"},
		{name: "block unaligned", port: PortBlock, op: OpBlockRead, addr: 0x2000, n: 100, status: StatusInval, want: "multiple of the 512-byte sector"},
		{name: "block zero", port: PortBlock, op: OpBlockWrite, addr: 0x2000, n: 0, status: StatusInval, want: "multiple"},
		{name: "block too long", port: PortBlock, op: OpBlockRead, addr: 0x2000, n: BlockMaxBytes + 512, status: StatusInval, want: "exceeds"},
		{name: "block write past memory", port: PortBlock, op: OpBlockWrite, addr: benchMemBytes - 512, n: 1024, status: StatusFault, want: "outside guest memory"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := make([]byte, requestStructBytes)
			le.PutUint32(r[reqOpOff:], c.op)
			le.PutUint32(r[reqStatusOff:], untouched)
			le.PutUint64(r[reqAddrOff:], c.addr)
			le.PutUint32(r[reqLenOff:], c.n)
			le.PutUint32(r[reqFlagsOff:], c.flags)
			le.PutUint64(r[reqResultOff:], 0x5555)
			b.mem.Write(benchReqAddr, r)
			reqAddr, size := c.reqAddr, c.size
			if reqAddr == 0 {
				reqAddr = benchReqAddr
			}
			if size == 0 {
				size = 4
			}
			before := b.disp.next
			if err := b.disp.handleOut(c.port, size, reqAddr); err != nil {
				t.Fatalf("a guest bug failed the exit: %v; want it refused and the guest resumed", err)
			}
			if b.disp.next != before {
				t.Fatalf("a refused request advanced the exit index")
			}
			if got := b.disp.guestErrors.Load(); got != uint64(i+1) {
				t.Fatalf("%d guest errors counted, want %d", got, i+1)
			}
			if len(seen) != i+1 {
				t.Fatalf("%d guest errors reported, want %d", len(seen), i+1)
			}
			ge := seen[i]
			if !strings.Contains(ge.Error(), c.want) {
				t.Fatalf("report %q lacks %q", ge, c.want)
			}
			if ge.Exit != before || ge.Port != c.port {
				t.Fatalf("report names exit %d port %#x, want %d %#x", ge.Exit, ge.Port, before, c.port)
			}
			out, _ := b.mem.Slice(benchReqAddr, requestStructBytes)
			st, res := int32(le.Uint32(out[reqStatusOff:])), le.Uint64(out[reqResultOff:])
			if st != c.status {
				t.Fatalf("the guest reads status %d, want %d", st, c.status)
			}
			if skipped := c.status == untouched; ge.Skipped != skipped || (!skipped && (ge.Status != c.status || res != 0)) || (skipped && res != 0x5555) {
				t.Fatalf("report %+v, result %#x; want skipped=%v status %d and result 0 when answered, untouched when skipped", ge, res, skipped, c.status)
			}
		})
	}
	// Nothing reached a device or the hook, and the guest goes on.
	if b.con.String() != "" || len(h.held) != 0 {
		t.Fatalf("refused requests reached the console (%q) or the hook (%d held)", b.con.String(), len(h.held))
	}
	b.mem.Write(0x2000, []byte("after"))
	if st, _ := b.mustCall(PortClock, OpClockNow, 0, 0, 0); st != StatusOK {
		t.Fatalf("a request after the refused ones: status %d", st)
	}
	if b.disp.next != 1 {
		t.Fatalf("exit index %d after one served request, want 1", b.disp.next)
	}
}

// badHook returns more data than the request's buffer holds, as a corrupt
// log might.
type badHook struct{}

func (badHook) OnExit(e *Exit) (Result, error) {
	return Result{Data: make([]byte, int(e.Len)+1)}, nil
}

func TestDispatchRefusesOversizedHookData(t *testing.T) {
	b := newExitBench(t, benchOpts{hook: badHook{}})
	_, _, err := b.call(PortEntropy, OpEntropyRead, 0x2000, 16, 0)
	if err == nil || !strings.Contains(err.Error(), "17 bytes of data for a 16-byte buffer") {
		t.Fatalf("err %v; want the oversized data refused", err)
	}
}

func TestBlockDevice(t *testing.T) {
	b := newExitBench(t, benchOpts{sectors: 16})
	if _, n := b.mustCall(PortBlock, OpBlockSize, 0, 0, 0); n != 16 {
		t.Fatalf("SIZE = %d, want 16", n)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1024 bytes
	b.mem.Write(0x4000, data)
	if st, _ := b.mustCall(PortBlock, OpBlockWrite, 0x4000, 1024, 3); st != StatusOK {
		t.Fatalf("write status %d", st)
	}
	onDisk := make([]byte, 1024)
	b.disk.ReadAt(onDisk, 3*512)
	if !bytes.Equal(onDisk, data) {
		t.Fatal("write did not reach the file")
	}
	if st, _ := b.mustCall(PortBlock, OpBlockRead, 0x8000, 1024, 3); st != StatusOK {
		t.Fatalf("read status %d", st)
	}
	if got, _ := b.mem.Slice(0x8000, 1024); !bytes.Equal(got, data) {
		t.Fatal("read returned other bytes than written")
	}
	for _, c := range []struct {
		op     uint32
		sector uint64
		n      uint32
	}{{OpBlockRead, 15, 1024}, {OpBlockWrite, 16, 512}, {OpBlockRead, math.MaxUint64, 512}} {
		if st, _ := b.mustCall(PortBlock, c.op, 0x4000, c.n, c.sector); st != StatusRange {
			t.Errorf("op %d at sector %d len %d: status %d, want E_RANGE", c.op, c.sector, c.n, st)
		}
	}
}

// holdHook holds every output; the test releases or drops them.
type holdHook struct{ held []*Output }

func (h *holdHook) OnExit(e *Exit) (Result, error) {
	if e.Dir == DirInput {
		return e.Live()
	}
	o, err := e.Hold()
	if err != nil {
		return Result{Status: StatusOf(err)}, nil
	}
	h.held = append(h.held, o)
	return Result{}, nil
}

func TestHeldOutputs(t *testing.T) {
	h := &holdHook{}
	b := newExitBench(t, benchOpts{hook: h, sectors: 8})
	b.mem.Write(0x2000, []byte("held"))
	b.mustCall(PortConsole, OpConsoleWrite, 0x2000, 4, 0)
	b.mem.Write(0x2000, []byte("XXXX")) // the guest reuses its buffer
	if b.con.String() != "" {
		t.Fatal("a held output reached the console")
	}
	// A held block write is visible to reads but not on disk.
	sector := bytes.Repeat([]byte{0x5a}, 512)
	b.mem.Write(0x4000, sector)
	b.mustCall(PortBlock, OpBlockWrite, 0x4000, 512, 2)
	b.mustCall(PortBlock, OpBlockRead, 0x6000, 1024, 1)
	got, _ := b.mem.Slice(0x6000, 1024)
	if !bytes.Equal(got[512:], sector) || !bytes.Equal(got[:512], make([]byte, 512)) {
		t.Fatal("a read after a held write does not see it")
	}
	onDisk := make([]byte, 512)
	b.disk.ReadAt(onDisk, 2*512)
	if bytes.Equal(onDisk, sector) {
		t.Fatal("a held block write reached the disk")
	}
	// A snapshot may be taken with writes held: it saves the file, which
	// does not have them.
	blk := b.disp.devs[DeviceBlock].(*blockDevice)
	if _, err := blk.saveState(); err != nil {
		t.Fatalf("device state with held writes: %v", err)
	}
	var snap Snapshot
	if err := blk.saveDisk(Full, &snap, nil); err != nil || snap.Chunks() != 0 {
		t.Fatalf("disk of a snapshot with only a held write: %d chunks, %v; want 0 chunks", snap.Chunks(), err)
	}
	// A write past the end is refused when held.
	if st, _ := b.mustCall(PortBlock, OpBlockWrite, 0x4000, 512, 8); st != StatusRange {
		t.Fatalf("held write past the end: status %d, want E_RANGE", st)
	}
	if len(h.held) != 2 {
		t.Fatalf("%d held outputs, want 2", len(h.held))
	}
	for _, o := range h.held {
		if err := o.Release(); err != nil {
			t.Fatal(err)
		}
		o.Release() // a second release does nothing
	}
	if b.con.String() != "held" {
		t.Fatalf("console after release %q, want the bytes at the exit, %q", b.con.String(), "held")
	}
	b.disk.ReadAt(onDisk, 2*512)
	if !bytes.Equal(onDisk, sector) {
		t.Fatal("released block write is not on disk")
	}
	// Dropped outputs never appear and leave no overlay behind.
	b.mem.Write(0x4000, bytes.Repeat([]byte{0x11}, 512))
	b.mustCall(PortBlock, OpBlockWrite, 0x4000, 512, 5)
	h.held[len(h.held)-1].Drop()
	b.mustCall(PortBlock, OpBlockRead, 0x6000, 512, 5)
	if got, _ := b.mem.Slice(0x6000, 512); !bytes.Equal(got, make([]byte, 512)) {
		t.Fatal("a dropped write is still visible")
	}
	if _, err := b.disp.devs[DeviceBlock].saveState(); err != nil {
		t.Fatalf("snapshot after release/drop: %v", err)
	}
}
