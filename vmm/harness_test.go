package vmm

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// exitBench drives the dispatcher the way the vCPU thread does, on plain
// memory: the device layer, the hook and the log are tested without KVM.
type exitBench struct {
	t    testing.TB
	mem  *Memory
	disp *dispatcher
	con  *syncBuffer
	disk *os.File
	nic  *nicDevice
}

const benchMemBytes = 1 << 20

type benchOpts struct {
	hook    ExitHook
	entropy io.Reader
	nic     NICBackend
	sectors int
}

func newExitBench(t testing.TB, o benchOpts) *exitBench {
	t.Helper()
	b := &exitBench{t: t, mem: newMemory(make([]byte, benchMemBytes)), con: &syncBuffer{}}
	if o.hook == nil {
		o.hook = LiveHook{}
	}
	if o.entropy == nil {
		o.entropy = bytes.NewReader(bytes.Repeat([]byte{0xab}, 1<<20))
	}
	if o.sectors > 0 {
		f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(int64(o.sectors) * BlockSectorBytes); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		b.disk = f
	}
	blk, err := newBlock(b.disk, false)
	if err != nil {
		t.Fatal(err)
	}
	b.nic = newNIC(o.nic, DefaultMAC, make(chan struct{}))
	t.Cleanup(func() { b.nic.close() })
	b.disp = &dispatcher{mem: b.mem, hook: o.hook}
	b.disp.devs[DeviceConsole] = newConsole(b.con)
	b.disp.devs[DeviceClock] = newClock()
	b.disp.devs[DeviceEntropy] = newEntropy(o.entropy)
	b.disp.devs[DeviceNIC] = b.nic
	b.disp.devs[DeviceBlock] = blk
	b.disp.devs[DeviceHalt] = haltDevice{}
	return b
}

// benchReqAddr is where exitBench places its request struct.
const benchReqAddr = 0x1000

// call writes a request and performs the OUT; it returns the status and
// result the guest would read back.
func (b *exitBench) call(port uint16, op uint32, addr uint64, n uint32, arg uint64) (int32, uint64, error) {
	r := make([]byte, requestStructBytes)
	le.PutUint32(r[reqOpOff:], op)
	le.PutUint64(r[reqAddrOff:], addr)
	le.PutUint32(r[reqLenOff:], n)
	le.PutUint64(r[reqArgOff:], arg)
	le.PutUint32(r[reqStatusOff:], 0x7777) // must be overwritten
	if err := b.mem.Write(benchReqAddr, r); err != nil {
		b.t.Fatal(err)
	}
	if err := b.disp.handleOut(port, 4, benchReqAddr); err != nil {
		return 0, 0, err
	}
	out, _ := b.mem.Slice(benchReqAddr, requestStructBytes)
	return int32(le.Uint32(out[reqStatusOff:])), le.Uint64(out[reqResultOff:]), nil
}

func (b *exitBench) mustCall(port uint16, op uint32, addr uint64, n uint32, arg uint64) (int32, uint64) {
	b.t.Helper()
	st, res, err := b.call(port, op, addr, n, arg)
	if err != nil {
		b.t.Fatalf("request to port %#x op %d: %v", port, op, err)
	}
	return st, res
}
