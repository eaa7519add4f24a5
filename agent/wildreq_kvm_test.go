package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// A guest in machine code (layout as maxioImage's) that makes every kind
// of request the VMM refuses, each followed by a clock read (an input the
// secondary replays at its exit index), then a block write and read, and
// writes its request structs to the console, so that the statuses it got
// are compared between the replicas and checked by the test.
const (
	wildReqOff    = 0x1000
	wildBufOff    = 0x2000
	wildSize      = 0x3000
	wildDiskBytes = 1 << 20
	wildOutside   = 0x7ff00000 // far above the test VM's memory
)

type wildReq struct {
	port   uint16
	op     uint32
	addr   uint64 // absolute, or an offset from wildBufOff when below wildSize
	n      uint32
	status int32  // what the guest must read back; 0: skipped, not answered
	skip   uint32 // added to the request's address in the store (misaligned)
	at     uint32 // the store's address instead of the request's (unreachable)
}

var wildReqs = []wildReq{
	{port: 0x600, op: 1, status: vmm.StatusNoDev},
	{port: vmm.PortConsole, op: vmm.OpConsoleWrite, addr: 1 << 40, n: 16, status: vmm.StatusFault},
	{port: vmm.PortConsole, op: vmm.OpConsoleWrite, n: vmm.ConsoleMaxBytes + 1, status: vmm.StatusInval},
	{port: vmm.PortClock, op: 9, status: vmm.StatusInval},
	{port: vmm.PortBlock, op: vmm.OpBlockWrite, n: 100, status: vmm.StatusInval},
	{port: vmm.PortBlock, op: vmm.OpBlockRead, addr: wildOutside, n: 512, status: vmm.StatusFault},
	{port: vmm.PortNIC, op: vmm.OpNICTX, n: 10, status: vmm.StatusInval},
	{port: vmm.PortEntropy, op: vmm.OpEntropyRead, n: vmm.EntropyMaxBytes + 1, status: vmm.StatusInval},
	{port: vmm.PortClock, op: vmm.OpClockNow, skip: 4},
	{port: vmm.PortClock, op: vmm.OpClockNow, at: wildOutside},
}

// wildSentinel is the status the guest leaves in each request before the
// call: a skipped request keeps it.
const wildSentinel = 1

func wildImage() (image []byte, slots int) {
	img := make([]byte, wildSize)
	copy(img[wildBufOff:], bytes.Repeat([]byte("wild"), 256))
	var code []byte
	slot := 0
	le := binary.LittleEndian
	req := func(port uint16, op uint32, addr uint64, n uint32, arg uint64, store uint32) {
		at := wildReqOff + slot*64
		slot++
		r := img[at : at+40]
		le.PutUint32(r[0:], op)
		le.PutUint32(r[4:], wildSentinel)
		if addr < wildSize {
			addr += vmm.LoadBase + wildBufOff
		}
		le.PutUint64(r[8:], addr)
		le.PutUint32(r[16:], n)
		le.PutUint64(r[24:], arg)
		if store == 0 {
			store = uint32(vmm.LoadBase) + uint32(at)
		}
		// movl $req,%eax; movl $doorbell,%edx; movl %eax,(%rdx)
		code = append(code, 0xb8)
		code = le.AppendUint32(code, store)
		code = append(code, 0xba)
		code = le.AppendUint32(code, uint32(vmm.DoorbellBase)+uint32(port))
		code = append(code, 0x89, 0x02)
	}
	for _, w := range wildReqs {
		store := w.at
		if w.skip != 0 {
			store = uint32(vmm.LoadBase) + uint32(wildReqOff+slot*64) + w.skip
		}
		req(w.port, w.op, w.addr, w.n, 0, store)
		req(vmm.PortClock, vmm.OpClockNow, 0, 0, 0, 0)
	}
	req(vmm.PortBlock, vmm.OpBlockWrite, 0, 1024, 2, 0)
	req(vmm.PortBlock, vmm.OpBlockRead, 1024, 1024, 2, 0)
	slots = slot + 2
	// Every request struct so far, and this one, to the console.
	req(vmm.PortConsole, vmm.OpConsoleWrite, vmm.LoadBase+wildReqOff, uint32(slots*64), 0, 0)
	req(vmm.PortHalt, vmm.OpHaltExit, 0, 0, 0, 0)
	copy(img, code)
	return elfOf(img), slots
}

// TestKVMPairWildRequests runs a guest that makes every kind of request
// the VMM refuses through a primary and a secondary: neither VM stops, the
// guest reads the same error status in each on both (its requests go to
// the console, which the secondary reproduces and the test compares), the
// stores that cannot be answered are skipped, every normal request after
// them (clock reads, a block write and read) replays at the same exit
// index without a divergence, and both count the refused requests.
func TestKVMPairWildRequests(t *testing.T) {
	testutil.Require(t, testutil.KVM)
	image, slots := wildImage()
	for _, mode := range []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
			defer cancel()
			disks := pairDisks(t, wildDiskBytes, nil)
			p := startPairWith(t, ctx, mode, 0, image, "", func(r wire.Role, c *vmm.Config) { c.Disk = disks[r] })
			if err := waitErr(t, "primary", p.priErr); err != nil {
				t.Fatalf("primary: %v; want the VM to go on past the guest's wild requests", err)
			}
			out := []byte(p.priOut.String())
			if len(out) != slots*64 {
				t.Fatalf("primary released %d console bytes, want the %d of the guest's requests", len(out), slots*64)
			}
			le := binary.LittleEndian
			status := func(slot int) int32 { return int32(le.Uint32(out[slot*64+4:])) }
			for i, w := range wildReqs {
				want := w.status
				if want == 0 {
					want = wildSentinel
				}
				if got := status(2 * i); got != want {
					t.Errorf("wild request %d (port %#x op %d len %d): status %d, want %d", i, w.port, w.op, w.n, got, want)
				}
				if got := status(2*i + 1); got != vmm.StatusOK {
					t.Errorf("the clock read after wild request %d: status %d, want OK", i, got)
				}
			}
			if st := status(2 * len(wildReqs)); st != vmm.StatusOK {
				t.Fatalf("block write after the wild requests: status %d", st)
			}
			waitFor(t, func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return len(p.replayed) >= 1
			})
			// The secondary's VM refused the same requests: its count
			// reaches the primary's once it replayed the console write.
			waitFor(t, func() bool { return p.sec.Stats().GuestErrors >= p.pri.Stats().GuestErrors })
			replayed, released := p.stopSecondary(t)
			if !bytes.Equal(replayed, released) || !bytes.Equal(released, out) {
				t.Fatalf("secondary reproduced %d console bytes, primary released %d (console %d); they differ", len(replayed), len(released), len(out))
			}
			if v := p.violations(); len(v) > 0 {
				t.Fatalf("%d releases broke %s, first: %s", len(v), mode, v[0])
			}
			ps, ss := p.pri.Stats(), p.sec.Stats()
			if ps.GuestErrors != uint64(len(wildReqs)) || ss.GuestErrors != ps.GuestErrors {
				t.Fatalf("guest errors: primary %d, secondary %d; want %d on both", ps.GuestErrors, ss.GuestErrors, len(wildReqs))
			}
			if ss.Divergences != 0 || ss.Restores != 1 {
				t.Fatalf("secondary: %d divergences, %d restores; want none past the joining checkpoint", ss.Divergences, ss.Restores)
			}
		})
	}
}
