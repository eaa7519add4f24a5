package vmm

import (
	"fmt"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// The guest-physical memory map (drawn in doc.go). The first 2 MiB hold the
// structures the CPU needs for 64-bit mode and are mapped supervisor-only,
// so a CPL3 guest can neither corrupt them nor dereference a null pointer.
const (
	gdtAddr  = 0x1000
	tssAddr  = 0x2000
	pml4Addr = 0x3000
	pdptAddr = 0x4000
	pdAddr   = 0x5000 // one page directory per GiB, up to memSizeMaxBytes
	// doorbellPDAddr is the page directory of the GiB that holds the
	// doorbell page (after the two of guest memory).
	doorbellPDAddr = 0x7000
	// DoorbellBase is FTVM_DOORBELL_BASE: the guest-physical (and
	// virtual) address of the doorbell page. A device's doorbell is
	// DoorbellBase + its port. No memory slot covers the page, so every
	// access to it is an MMIO exit.
	DoorbellBase = 0xc0000000
	bootInfoAddr = 0x200000
	// stackReserveBytes is the top of memory kept for the guest's stack;
	// heap_end in the boot info stops below it.
	stackReserveBytes = 1 << 20
	// memSizeMinBytes leaves room for the system area, the boot page, an
	// image at LoadBase and the stack.
	memSizeMinBytes = 8 << 20
	// memSizeMaxBytes keeps every guest address below 4 GiB (a request is
	// addressed by one 32-bit store), below the doorbell page and clear of
	// the real-mode TSS KVM is given at kvmTSSAddr.
	memSizeMaxBytes = 2 << 30
	// kvmTSSAddr is the 3-page area Intel KVM needs for its real-mode
	// emulation, placed above guest memory like QEMU does.
	kvmTSSAddr = 0xfffbd000
)

// Segment selectors in the GDT built by setupSystemArea.
const (
	selKernelCode = 0x08
	selKernelData = 0x10
	selUserData   = 0x18 | 3
	selUserCode   = 0x20 | 3
	selTSS        = 0x28
	gdtEntries    = 7 // null, kcode, kdata, udata, ucode, TSS (two slots)
)

func checkMemSize(size uint64) error {
	if size < memSizeMinBytes || size > memSizeMaxBytes || size%kvm.HugePageBytes != 0 {
		return fmt.Errorf("guest memory size %d bytes is invalid: use a multiple of 2 MiB between %d MiB and %d MiB", size, memSizeMinBytes>>20, memSizeMaxBytes>>20)
	}
	return nil
}

// setupSystemArea writes the GDT, the 64-bit TSS and identity-mapping page
// tables (2 MiB pages, the first supervisor-only, the rest user-accessible)
// covering all of guest memory and the doorbell page.
func setupSystemArea(mem *Memory) error {
	size := mem.Size()
	if err := checkMemSize(size); err != nil {
		return err
	}
	// Descriptors carry the accessed bit, as the hidden parts in
	// initialSregs do, so that a selector reload changes nothing.
	gdt := make([]byte, gdtEntries*8)
	const a = kvm.AccessAccessed
	le.PutUint64(gdt[1*8:], kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessKernelCode|a, kvm.FlagsCode64)) // 0x00af9b000000ffff: 64-bit, DPL0
	le.PutUint64(gdt[2*8:], kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessKernelData|a, kvm.FlagsData))   // 0x00cf93000000ffff: DPL0
	le.PutUint64(gdt[3*8:], kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessUserData|a, kvm.FlagsData))     // 0x00cff3000000ffff: DPL3
	le.PutUint64(gdt[4*8:], kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessUserCode|a, kvm.FlagsCode64))   // 0x00affb000000ffff: 64-bit, DPL3
	// 64-bit TSS descriptor (busy, present) over two slots.
	tss := uint64(tssAddr)
	le.PutUint64(gdt[5*8:], kvm.SegmentDescriptor(uint32(tss), kvm.TSSLimit, kvm.AccessTSSBusy, 0))
	le.PutUint64(gdt[6*8:], tss>>32)
	if err := mem.Write(gdtAddr, gdt); err != nil {
		return err
	}
	// TSS: RSP0 points at the top of the system area (never used: the IDT
	// is empty, so any exception shuts the VM down); the I/O map base lies
	// past the limit, so with IOPL=0 every port access from CPL3 faults.
	t := make([]byte, kvm.TSSLimit+1)
	le.PutUint64(t[4:], bootInfoAddr)
	le.PutUint16(t[kvm.TSSIOMapBaseOff:], kvm.TSSLimit+1)
	if err := mem.Write(tssAddr, t); err != nil {
		return err
	}

	gibs := (size + (1 << 30) - 1) >> 30
	pml4 := make([]byte, PageBytes)
	le.PutUint64(pml4, pdptAddr|kvm.PTEPresent|kvm.PTEWrite|kvm.PTEUser)
	if err := mem.Write(pml4Addr, pml4); err != nil {
		return err
	}
	pdpt := make([]byte, PageBytes)
	for i := uint64(0); i < gibs; i++ {
		le.PutUint64(pdpt[i*8:], (pdAddr+i*PageBytes)|kvm.PTEPresent|kvm.PTEWrite|kvm.PTEUser)
	}
	le.PutUint64(pdpt[(DoorbellBase>>30)*8:], doorbellPDAddr|kvm.PTEPresent|kvm.PTEWrite|kvm.PTEUser)
	if err := mem.Write(pdptAddr, pdpt); err != nil {
		return err
	}
	doorbellPD := make([]byte, PageBytes)
	le.PutUint64(doorbellPD[((DoorbellBase>>21)&511)*8:], DoorbellBase|kvm.PTEPresent|kvm.PTEWrite|kvm.PTEUser|kvm.PTEPageSize)
	if err := mem.Write(doorbellPDAddr, doorbellPD); err != nil {
		return err
	}
	pd := make([]byte, gibs*PageBytes)
	for addr := uint64(0); addr < size; addr += kvm.HugePageBytes {
		e := addr | kvm.PTEPresent | kvm.PTEWrite | kvm.PTEPageSize
		if addr != 0 {
			e |= kvm.PTEUser
		}
		le.PutUint64(pd[addr/kvm.HugePageBytes*8:], e)
	}
	return mem.Write(pdAddr, pd)
}

// initialSregs is the CPU state for entering the guest directly in 64-bit
// mode at CPL3. The hidden segment parts must match the GDT descriptors and
// pass VM-entry checks (CS.L, SS.DPL == CPL, TR busy 64-bit TSS).
func initialSregs() Sregs {
	code := kvm.FlatSegment(selUserCode, 0xb, 3, true)
	data := kvm.FlatSegment(selUserData, 0x3, 3, false)
	return Sregs{
		CS: code, DS: data, ES: data, FS: data, GS: data, SS: data,
		TR:   Segment{Base: tssAddr, Limit: kvm.TSSLimit, Selector: selTSS, Type: 0xb, Present: 1},
		LDT:  Segment{Type: 0x2, Unusable: 1},
		GDT:  DTable{Base: gdtAddr, Limit: gdtEntries*8 - 1},
		IDT:  DTable{Base: 0, Limit: 0},
		CR0:  kvm.CR0PE | kvm.CR0MP | kvm.CR0ET | kvm.CR0NE | kvm.CR0WP | kvm.CR0PG,
		CR3:  pml4Addr,
		CR4:  kvm.CR4PAE | kvm.CR4OSFXSR | kvm.CR4OSXMMEXCPT,
		EFER: kvm.EFERSCE | kvm.EFERLME | kvm.EFERLMA,
	}
}

// initialRegs enters the program at entry with RSP at the top of memory and
// RDI at the boot info. IOPL is 0: a guest reaches devices only through the
// doorbell page, on every host alike (ftvm.h says why not port I/O).
func initialRegs(entry, memSize uint64) Regs {
	return Regs{
		RIP:    entry,
		RSP:    memSize,
		RDI:    bootInfoAddr,
		RFLAGS: kvm.RFLAGSReserved,
	}
}

// writeBootInfo fills struct ftvm_boot at bootInfoAddr.
func writeBootInfo(mem *Memory, heapStart uint64, cmdline string) error {
	if len(cmdline) >= bootCmdlineBytes {
		return fmt.Errorf("command line is %d bytes; the boot info holds at most %d", len(cmdline), bootCmdlineBytes-1)
	}
	b := make([]byte, bootStructBytes)
	le.PutUint64(b[bootMagicOff:], BootMagic)
	le.PutUint64(b[bootMemSizeOff:], mem.Size())
	le.PutUint64(b[bootHeapStartOff:], heapStart)
	le.PutUint64(b[bootHeapEndOff:], mem.Size()-stackReserveBytes)
	copy(b[bootCmdlineOff:], cmdline)
	return mem.Write(bootInfoAddr, b)
}
