package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// syncBuffer is a console writer safe for releasers on other goroutines.
type syncBuffer = testutil.Buffer

// newTestVM creates a VM (skipping where there is no KVM) and closes it
// when the test ends.
func newTestVM(t testing.TB, cfg Config) *Machine {
	t.Helper()
	testutil.Require(t, testutil.KVM)
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustLoad(t testing.TB, m *Machine, image []byte) {
	t.Helper()
	if err := m.Load(image); err != nil {
		t.Fatalf("Load: %v", err)
	}
}

// helloProgram writes "hello\n" to the console and exits with code 7.
func helloProgram() []byte {
	var p testProgram
	msg := p.buf(0, []byte("hello\n"))
	p.code.doorbell(PortConsole, p.req(0, OpConsoleWrite, msg, 6, 0))
	p.code.halt(&p, 1, 7)
	return p.elf()
}

func TestKVMHello(t *testing.T) {
	var con syncBuffer
	m := newTestVM(t, Config{Console: &con})
	mustLoad(t, m, helloProgram())
	st, err := m.Run(0)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st.State != Halted || st.ExitCode != 7 || st.Exits != 2 {
		t.Fatalf("status %+v, want halted with code 7 after 2 exits", st)
	}
	if got := con.String(); got != "hello\n" {
		t.Fatalf("console %q, want %q", got, "hello\n")
	}
	v, err := m.VCPUState()
	if err != nil {
		t.Fatal(err)
	}
	if v.Sregs.CS.DPL != 3 || v.Sregs.CS.L != 1 || v.Sregs.EFER&kvm.EFERLMA == 0 {
		t.Fatalf("guest ran with CS.DPL=%d CS.L=%d EFER=%#x; want CPL3 in 64-bit mode", v.Sregs.CS.DPL, v.Sregs.CS.L, v.Sregs.EFER)
	}
}

// counterProgram writes n console lines "tick X\n", X a byte the guest
// increments each time, then exits with code 0.
func counterProgram(n uint32) []byte {
	var p testProgram
	msg := p.buf(0, []byte("tick A\n"))
	p.code.movECX(n)
	loop := p.code.pc()
	p.code.incByte(uint32(msg) + 5)
	p.code.doorbell(PortConsole, p.req(0, OpConsoleWrite, msg, 7, 0))
	p.code.decECX().jnz(loop)
	p.code.halt(&p, 1, 0)
	return p.elf()
}

// TestKVMWildRequestsGetAStatus makes every kind of request the VMM
// refuses, on a real vCPU: the guest reads the status in each (an unknown
// port, a buffer outside memory, a length over the limit, an unknown op,
// a bad block length), a doorbell load reads all ones, the stores whose
// request cannot be reached are skipped, and the guest goes on to a normal
// request and its exit. Each is counted; the log has one line for them
// all (rate-limited). (They used to stop the VM, and the service with it.)
func TestKVMWildRequestsGetAStatus(t *testing.T) {
	var p testProgram
	const loadedAt = 0x1800 // a buffer offset: where the doorbell load's value goes
	wild := []struct {
		slot   int
		port   uint16
		op     uint32
		addr   uint64
		n      uint32
		status int32
	}{
		{0, 0x600, 1, 0, 0, StatusNoDev},
		{1, PortConsole, OpConsoleWrite, 1 << 40, 16, StatusFault},
		{2, PortConsole, OpConsoleWrite, testBufBase, ConsoleMaxBytes + 1, StatusInval},
		{3, PortClock, 9, 0, 0, StatusInval},
		{4, PortBlock, OpBlockWrite, testBufBase, 100, StatusInval},
		{5, PortEntropy, OpEntropyRead, testBufBase, EntropyMaxBytes + 1, StatusInval},
	}
	for _, w := range wild {
		p.code.doorbell(w.port, p.req(w.slot, w.op, w.addr, w.n, 0))
	}
	// mov (%rdx),%rax from the clock's doorbell, then keep what it read
	p.code.movEDX(DoorbellBase+uint32(PortClock)).emit(0x48, 0x8b, 0x02).movRAXTo(uint32(testBufBase) + loadedAt)
	// movb %al,(%rdx): a byte-wide store
	p.code.movEAX(p.req(6, OpClockNow, 0, 0, 0)).movEDX(DoorbellBase+uint32(PortClock)).emit(0x88, 0x02)
	p.code.doorbell(PortClock, p.req(7, OpClockNow, 0, 0, 0)+4) // misaligned
	p.code.doorbell(PortClock, 0x7ff00000)                      // outside memory
	const skipped = 4                                           // the load and the three stores before
	msg := p.buf(0, []byte("after\n"))
	p.code.doorbell(PortConsole, p.req(8, OpConsoleWrite, msg, 6, 0))
	p.code.halt(&p, 9, 3)

	var con syncBuffer
	var logged syncBuffer
	m := newTestVM(t, Config{Console: &con, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	mustLoad(t, m, p.elf())
	st, err := m.Run(0)
	if err != nil || st.State != Halted || st.ExitCode != 3 {
		t.Fatalf("status %+v err %v; want the guest to go on past its wild requests and exit with 3", st, err)
	}
	if con.String() != "after\n" {
		t.Fatalf("console %q; want only the normal request's %q", con.String(), "after\n")
	}
	if st.Exits != 2 || st.GuestErrors != uint64(len(wild)+skipped) {
		t.Fatalf("%d exits, %d guest errors; want 2 exits (the console write and the halt) and %d guest errors", st.Exits, st.GuestErrors, len(wild)+skipped)
	}
	for _, w := range wild {
		r, err := m.ReadMemory(testReqBase+uint64(w.slot)*64, requestStructBytes)
		if err != nil {
			t.Fatal(err)
		}
		if got := int32(le.Uint32(r[reqStatusOff:])); got != w.status {
			t.Errorf("request %d (port %#x op %d len %d): status %d, want %d", w.slot, w.port, w.op, w.n, got, w.status)
		}
	}
	if v, err := m.ReadMemory(testBufBase+loadedAt, 8); err != nil || le.Uint64(v) != math.MaxUint64 {
		t.Errorf("the doorbell load read %x (%v), want all ones", v, err)
	}
	if n := strings.Count(logged.String(), "refused a guest request"); n != 1 || !strings.Contains(logged.String(), "no device") {
		t.Errorf("log has %d lines about refused requests, want 1 (the first, the rest rate-limited):\n%s", n, logged.String())
	}
}

// TestKVMGuestFaultsStopTheVM: an exception of the guest's own has nothing
// to return to (there is no IDT), so it stops the VM with an error naming
// the exit and the registers.
func TestKVMGuestFaultsStopTheVM(t *testing.T) {
	cases := []struct {
		name string
		prog func() []byte
		want []string
	}{
		{"port I/O", func() []byte {
			var p testProgram
			// outl %eax,(%dx) to the console's number: IOPL=0 faults it
			p.code.movEAX(p.req(0, OpConsoleWrite, testBufBase, 1, 0)).movEDX(uint32(PortConsole)).emit(0xef)
			return p.elf()
		}, []string{"exit 0", "triple-faulted"}},
		{"triple fault", func() []byte {
			var p testProgram
			p.code.ud2()
			return p.elf()
		}, []string{"exit 0", "triple-faulted"}},
		{"wild pointer", func() []byte {
			var p testProgram
			p.code.movRAXFrom(0x7ff00000)
			return p.elf()
		}, []string{"triple-faulted"}},
		{"null pointer", func() []byte {
			var p testProgram
			p.code.movRAXFrom(0x10)
			return p.elf()
		}, []string{"triple-faulted"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newTestVM(t, Config{})
			mustLoad(t, m, c.prog())
			st, err := m.Run(0)
			if st.State != Failed || err == nil {
				t.Fatalf("status %+v err %v; want Failed", st, err)
			}
			var ve *VMError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T %v is not a *VMError", err, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestKVMPauseAtExitSnapshotRestore runs a guest to exit N, snapshots it,
// restores the snapshot into a second VM and runs both on: the outputs
// after the snapshot must be identical.
func TestKVMPauseAtExitSnapshotRestore(t *testing.T) {
	const total, at = 40, 17
	var con1, con2 syncBuffer
	a := newTestVM(t, Config{Console: &con1, MemSizeBytes: 16 << 20})
	mustLoad(t, a, counterProgram(total))
	st, err := a.Run(at)
	if err != nil || st.State != Paused || st.Exits != at {
		t.Fatalf("Run(%d): %+v %v; want paused after %d exits", at, st, err, at)
	}
	snap, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := snap.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	dec, err := UnmarshalSnapshot(enc)
	if err != nil {
		t.Fatal(err)
	}
	b := newTestVM(t, Config{Console: &con2, MemSizeBytes: 16 << 20})
	if err := b.Restore(dec); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if st := b.Status(); st.State != Paused || st.Exits != at {
		t.Fatalf("restored VM status %+v, want paused at %d exits", st, at)
	}
	before := con1.String()
	for _, m := range []*Machine{a, b} {
		if st, err := m.Run(0); err != nil || st.State != Halted || st.Exits != total+1 {
			t.Fatalf("run to end: %+v %v", st, err)
		}
	}
	after1 := strings.TrimPrefix(con1.String(), before)
	if after1 != con2.String() || strings.Count(after1, "\n") != total-at {
		t.Fatalf("outputs after the snapshot differ:\noriginal %q\nrestored %q", after1, con2.String())
	}
}

// TestKVMPauseInterruptsComputingGuest pauses a guest that spins without
// ever exiting: only the kick (immediate_exit + signal) can stop it.
func TestKVMPauseInterruptsComputingGuest(t *testing.T) {
	var p testProgram
	p.code.doorbell(PortClock, p.req(0, OpClockNow, 0, 0, 0))
	spin := p.code.pc()
	p.code.jmp(spin)
	m := newTestVM(t, Config{})
	mustLoad(t, m, p.elf())
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	st := m.Status()
	if st.State != Paused {
		t.Fatalf("state %v after Pause, want paused", st.State)
	}
	v, err := m.VCPUState()
	if err != nil {
		t.Fatal(err)
	}
	if v.Regs.RIP < LoadBase || v.Regs.RIP > LoadBase+uint64(spin)+5 {
		t.Fatalf("paused at rip %#x, outside the program", v.Regs.RIP)
	}
	// It resumes and pauses again.
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(); err != nil || m.Status().State != Paused {
		t.Fatalf("second pause: %v %v", err, m.Status())
	}
}

func TestKVMIncrementalChainOf100(t *testing.T) {
	// Each round writes a changing value into 3 of 64 pages (rdtsc), so
	// that every increment differs, then asks the clock (an exit).
	var p testProgram
	clockReq := p.req(0, OpClockNow, 0, 0, 0)
	const area = 0x800000
	p.code.movRBX(area)
	top := p.code.pc()
	p.code.movECX(3)
	inner := p.code.pc()
	p.code.rdtsc().storeEAXAtRBX().addRBX(4096 * 5)
	p.code.decECX().jnz(inner)
	p.code.doorbell(PortClock, clockReq)
	p.code.jmp(top)

	const mem = 32 << 20
	a := newTestVM(t, Config{MemSizeBytes: mem})
	b := newTestVM(t, Config{MemSizeBytes: mem})
	mustLoad(t, a, p.elf())
	if _, err := a.Run(1); err != nil {
		t.Fatal(err)
	}
	full, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(full); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if _, err := a.Run(a.Status().Exits + 1); err != nil {
			t.Fatal(err)
		}
		inc, err := a.Snapshot(Incremental)
		if err != nil {
			t.Fatal(err)
		}
		if inc.Pages() == 0 || inc.Pages() > 16 {
			t.Fatalf("increment %d holds %d pages; the guest dirtied 3 plus the stack and request", i, inc.Pages())
		}
		enc, _ := inc.MarshalBinary()
		dec, err := UnmarshalSnapshot(enc)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Restore(dec); err != nil {
			t.Fatalf("increment %d: %v", i, err)
		}
	}
	ma, _ := a.ReadMemory(0, mem)
	mb, _ := b.ReadMemory(0, mem)
	if !bytes.Equal(ma, mb) {
		t.Fatalf("memory differs after 100 increments (first difference at %#x)", firstDiff(ma, mb))
	}
	va, _ := a.VCPUState()
	vb, _ := b.VCPUState()
	if va.Regs != vb.Regs || va.Sregs != vb.Sregs {
		t.Fatalf("registers differ:\n%+v\n%+v", va.Regs, vb.Regs)
	}
	// Applying an increment out of order is refused.
	if _, err := a.Run(a.Status().Exits + 1); err != nil {
		t.Fatal(err)
	}
	inc1, _ := a.Snapshot(Incremental)
	if _, err := a.Run(a.Status().Exits + 1); err != nil {
		t.Fatal(err)
	}
	inc2, _ := a.Snapshot(Incremental)
	if err := b.Restore(inc2); err == nil || !strings.Contains(err.Error(), "applies on snapshot") {
		t.Fatalf("out-of-order increment: err %v, want a refusal", err)
	}
	if err := b.Restore(inc1); err != nil {
		t.Fatal(err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

var _ = fmt.Sprint

func requireKVM(t testing.TB) { t.Helper(); testutil.Require(t, testutil.KVM) }
