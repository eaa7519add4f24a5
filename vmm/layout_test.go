package vmm

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// walk translates a virtual address through the page tables in memory the
// way the CPU does (4-level, 2 MiB leaves), returning the physical address
// and whether CPL3 may write it.
func walk(t *testing.T, m *Memory, va uint64) (pa uint64, user bool, ok bool) {
	t.Helper()
	cr3 := initialSregs().CR3
	pml4e, _ := m.ReadUint64(cr3 + (va>>39&511)*8)
	if pml4e&kvm.PTEPresent == 0 {
		return 0, false, false
	}
	pdpte, _ := m.ReadUint64(pml4e&^0xfff + (va>>30&511)*8)
	if pdpte&kvm.PTEPresent == 0 {
		return 0, false, false
	}
	pde, _ := m.ReadUint64(pdpte&^0xfff + (va>>21&511)*8)
	if pde&kvm.PTEPresent == 0 || pde&kvm.PTEPageSize == 0 {
		return 0, false, false
	}
	user = pml4e&pdpte&pde&kvm.PTEUser != 0 && pml4e&pdpte&pde&kvm.PTEWrite != 0
	return pde&^(kvm.HugePageBytes-1) | va&(kvm.HugePageBytes-1), user, true
}

func TestIdentityMapping(t *testing.T) {
	for _, size := range []uint64{memSizeMinBytes, 1<<30 + 4<<20, memSizeMaxBytes} {
		// Reserved lazily, like guest memory: only the touched pages cost.
		buf, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(buf)
		m := newMemory(buf)
		if err := setupSystemArea(m); err != nil {
			t.Fatal(err)
		}
		for _, va := range []uint64{0, 0x1234, kvm.HugePageBytes, LoadBase + 17, size/2 + 5, size - 1} {
			pa, user, ok := walk(t, m, va)
			if !ok || pa != va {
				t.Fatalf("size %#x: %#x maps to %#x (present %v), want identity", size, va, pa, ok)
			}
			if user != (va >= kvm.HugePageBytes) {
				t.Fatalf("size %#x: %#x user-writable=%v; only the first 2 MiB is supervisor-only", size, va, user)
			}
		}
		if _, _, ok := walk(t, m, size); ok {
			t.Fatalf("size %#x: the byte after memory is mapped", size)
		}
		// The doorbell page is mapped for CPL3, identity, 2 MiB, and
		// nothing past it.
		for _, va := range []uint64{DoorbellBase, DoorbellBase + uint64(PortConsole), DoorbellBase + kvm.HugePageBytes - 1} {
			if pa, user, ok := walk(t, m, va); !ok || pa != va || !user {
				t.Fatalf("size %#x: doorbell address %#x maps to %#x (present %v, user-writable %v)", size, va, pa, ok, user)
			}
		}
		if _, _, ok := walk(t, m, DoorbellBase+kvm.HugePageBytes); ok {
			t.Fatalf("size %#x: the page after the doorbell page is mapped", size)
		}
		if _, _, ok := walk(t, m, DoorbellBase-1); ok {
			t.Fatalf("size %#x: the page before the doorbell page is mapped", size)
		}
	}
}

// TestSystemAreaBytes pins the GDT and TSS the VMM writes to the bytes it
// wrote before they were built with package kvm's encodings: a guest
// snapshot restored across versions must see the same descriptors.
func TestSystemAreaBytes(t *testing.T) {
	m := newMemory(make([]byte, memSizeMinBytes))
	if err := setupSystemArea(m); err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint64{0, 0x00af9b000000ffff, 0x00cf93000000ffff, 0x00cff3000000ffff, 0x00affb000000ffff, 0x00008b0020000067, 0} {
		if got, _ := m.ReadUint64(gdtAddr + uint64(i)*8); got != want {
			t.Errorf("GDT entry %d = %#016x, want %#016x", i, got, want)
		}
	}
	tss, _ := m.Slice(tssAddr, 0x68)
	if rsp0, iomap := le.Uint64(tss[4:]), le.Uint16(tss[102:]); rsp0 != bootInfoAddr || iomap != 0x68 {
		t.Errorf("TSS RSP0 %#x, I/O map base %#x; want %#x and 0x68 (past the limit: no I/O bitmap)", rsp0, iomap, bootInfoAddr)
	}
}

// TestGDTMatchesSregs decodes the descriptors in memory and checks them
// against the hidden segment state given to KVM_SET_SREGS: VM entry takes
// the latter, but a guest reloading a selector gets the former.
func TestGDTMatchesSregs(t *testing.T) {
	m := newMemory(make([]byte, memSizeMinBytes))
	if err := setupSystemArea(m); err != nil {
		t.Fatal(err)
	}
	s := initialSregs()
	for _, seg := range []Segment{s.CS, s.SS, s.DS, s.TR} {
		d, _ := m.ReadUint64(gdtAddr + uint64(seg.Selector&^7))
		typ, sbit, dpl, p := uint8(d>>40&15), uint8(d>>44&1), uint8(d>>45&3), uint8(d>>47&1)
		l, db := uint8(d>>53&1), uint8(d>>54&1)
		if typ != seg.Type || sbit != seg.S || dpl != seg.DPL || p != seg.Present || l != seg.L || db != seg.DB {
			t.Errorf("selector %#x: GDT says type %d s %d dpl %d p %d l %d db %d; sregs %+v", seg.Selector, typ, sbit, dpl, p, l, db, seg)
		}
		if uint8(seg.Selector&3) != seg.DPL {
			t.Errorf("selector %#x RPL differs from DPL %d", seg.Selector, seg.DPL)
		}
	}
	base := uint64(0)
	d, _ := m.ReadUint64(gdtAddr + selTSS)
	hi, _ := m.ReadUint64(gdtAddr + selTSS + 8)
	base = d>>16&0xffffff | (d>>56&0xff)<<24 | hi<<32
	if base != s.TR.Base {
		t.Errorf("TSS descriptor base %#x, sregs TR base %#x", base, s.TR.Base)
	}
	r := initialRegs(LoadBase, memSizeMinBytes)
	if r.RFLAGS&(3<<12) != 0 || r.RFLAGS&(1<<9) != 0 {
		t.Errorf("rflags %#x: want IOPL=0 (devices are reached by the doorbell only) and IF=0", r.RFLAGS)
	}
}

func TestMemSizeChecks(t *testing.T) {
	for _, bad := range []uint64{0, memSizeMinBytes - kvm.HugePageBytes, memSizeMinBytes + 4096, memSizeMaxBytes + kvm.HugePageBytes} {
		if checkMemSize(bad) == nil {
			t.Errorf("memory size %#x accepted", bad)
		}
	}
}
