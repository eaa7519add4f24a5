package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"time"
)

const (
	pageBytes        = 4096
	memLogDirtyPages = 1 << 0 // KVM_MEM_LOG_DIRTY_PAGES
)

// dirtyPages turns a KVM dirty bitmap (bit i = page i of the slot, in
// little-endian 64-bit words) into the guest-physical addresses of the dirty
// pages of a slot that starts at address 0.
func dirtyPages(bitmap []uint64) []uint64 {
	var pages []uint64
	for w, word := range bitmap {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			pages = append(pages, (uint64(w)*64+uint64(b))*pageBytes)
			word &^= 1 << b
		}
	}
	return pages
}

// Guest-physical layout of the long-mode probe. Guest memory is
// identity-mapped with 2 MiB pages that have U/S set, as the VMM does, and
// so is the doorbell page at lmDoorbellBase, which no memory slot backs.
const (
	lmUserCode     = 0x1000
	lmUserLoop     = 0x1100
	lmUserCalc     = 0x1200
	lmUserOut      = 0x1300
	lmPML4         = 0x10000
	lmPDPT         = 0x11000
	lmPD           = 0x12000
	lmGDT          = 0x13000
	lmTSS          = 0x14000
	lmDoorbellPD   = 0x15000  // page directory of the GiB at lmDoorbellBase
	lmDataPage     = 0x200000 // first byte of the second 2 MiB page
	lmUntouched    = 0x300000 // a page nothing writes
	lmUserStack    = 0x3ff000
	lmDoorbellBase = 0xc0000000 // the VMM's DoorbellBase (FTVM_DOORBELL_BASE)
)

// Page-table entry bits.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteUser     = 1 << 2
	ptePageSize = 1 << 7
)

// Control-register and EFER bits.
const (
	cr0PE = 1 << 0
	cr0MP = 1 << 1
	cr0ET = 1 << 4
	cr0NE = 1 << 5
	cr0WP = 1 << 16
	cr0PG = 1 << 31

	cr4PAE        = 1 << 5
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10

	eferSCE = 1 << 0
	eferLME = 1 << 8
	eferLMA = 1 << 10
	eferNXE = 1 << 11

	rflagsFixed = 1 << 1
	rflagsIOPL  = 3 << 12 // the IOPL field
)

// GDT selectors (index<<3 | RPL).
const (
	selKernelCode = 1 << 3
	selKernelData = 2 << 3
	selUserCode   = 3<<3 | 3
	selUserData   = 4<<3 | 3
	selTSS        = 5 << 3
)

// Doorbells the long-mode guest reports on: lmDoorbellBase + "port", in the
// range of the VMM's device ports (0x500..0x505). kvmprobe is the only
// device model here, so the numbers mean only what is written below.
const (
	dbHello      = 0x500 // 'L': the guest runs
	dbCS         = 0x501 // the guest's CS selector
	dbDone       = 0x502 // the value the guest read back from lmDataPage
	dbCalc       = 0x503 // compute loop finished, value calcDone
	dbLoop       = 0x504 // timing loop, value 1, 2, 3, ...
	dbOutSkipped = 0x505 // the OUT of lmOut neither faulted nor exited
)

// lmDataValue is what lmCode writes to lmDataPage; calcDone is what lmCalc
// stores to its doorbell.
const (
	lmDataValue = 0x12345678
	calcDone    = 0xca1cd0e5
)

// lmCode is the CPL3 guest (IOPL=0). Each report is one 32-bit store
// `movl %eax,(%rdx)` (89 02) to a doorbell, the VMM's only way out:
//
//	mov $'L',%eax; mov $0xc0000500,%edx; movl %eax,(%rdx)
//	mov %cs,%eax; mov $0xc0000501,%edx; movl %eax,(%rdx)
//	mov $0x12345678,%eax; mov %eax,0x200000; mov 0x200000,%eax
//	mov $0xc0000502,%edx; movl %eax,(%rdx)
//	hlt                      # privileged: #GP, no IDT, triple fault
var lmCode = []byte{
	0xb8, 'L', 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0xc0, 0x89, 0x02,
	0x8c, 0xc8, 0xba, 0x01, 0x05, 0x00, 0xc0, 0x89, 0x02,
	0xb8, 0x78, 0x56, 0x34, 0x12, 0x89, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00,
	0xba, 0x02, 0x05, 0x00, 0xc0, 0x89, 0x02,
	0xf4,
}

// lmLoop rings dbLoop forever, counting, so that each exit shows it is the
// next store:
//
//	xor %eax,%eax; mov $0xc0000504,%edx; 1: inc %eax; movl %eax,(%rdx); jmp 1b
var lmLoop = []byte{0x31, 0xc0, 0xba, 0x04, 0x05, 0x00, 0xc0, 0xff, 0xc0, 0x89, 0x02, 0xeb, 0xfa}

// lmCalc counts %rcx down without exits, then reports once:
//
//	mov $0xca1cd0e5,%eax; 1: dec %rcx; jnz 1b
//	mov $0xc0000503,%edx; movl %eax,(%rdx); jmp . (never reached again)
var lmCalc = []byte{
	0xb8, 0xe5, 0xd0, 0x1c, 0xca, 0x48, 0xff, 0xc9, 0x75, 0xfb,
	0xba, 0x03, 0x05, 0x00, 0xc0, 0x89, 0x02, 0xeb, 0xfe,
}

// lmOut tries port I/O:
//
//	mov $0x3f8,%edx; mov $'O',%al; out %al,(%dx)
//	mov $0xc0000505,%edx; movl %eax,(%rdx)   # only if the OUT did nothing
//	hlt
var lmOut = []byte{
	0xba, 0xf8, 0x03, 0x00, 0x00, 0xb0, 'O', 0xee,
	0xba, 0x05, 0x05, 0x00, 0xc0, 0x89, 0x02,
	0xf4,
}

func segDesc(base, limit uint32, access, flags uint8) uint64 {
	return uint64(limit&0xffff) | uint64(base&0xffffff)<<16 | uint64(access)<<40 |
		uint64(limit>>16&0xf)<<48 | uint64(flags&0xf)<<52 | uint64(base>>24)<<56
}

func (v *vm) buildLongMode() {
	le := binary.LittleEndian
	le.PutUint64(v.mem[lmPML4:], lmPDPT|ptePresent|pteWritable|pteUser)
	le.PutUint64(v.mem[lmPDPT:], lmPD|ptePresent|pteWritable|pteUser)
	for i := uint64(0); i < guestMemBytes>>21; i++ {
		le.PutUint64(v.mem[lmPD+8*i:], i<<21|ptePresent|pteWritable|pteUser|ptePageSize)
	}
	// The doorbell page, as the VMM maps it: user-accessible, writable,
	// backed by no memory slot, so every access to it is an MMIO exit.
	le.PutUint64(v.mem[lmPDPT+8*(lmDoorbellBase>>30):], lmDoorbellPD|ptePresent|pteWritable|pteUser)
	le.PutUint64(v.mem[lmDoorbellPD+8*(lmDoorbellBase>>21&511):], lmDoorbellBase|ptePresent|pteWritable|pteUser|ptePageSize)
	gdt := []uint64{
		0,
		segDesc(0, 0xfffff, 0x9a, 0xa), // kernel code: P, DPL0, exec/read; G, L
		segDesc(0, 0xfffff, 0x92, 0xc), // kernel data: P, DPL0, read/write; G, D/B
		segDesc(0, 0xfffff, 0xfa, 0xa), // user code: P, DPL3
		segDesc(0, 0xfffff, 0xf2, 0xc), // user data: P, DPL3
		segDesc(lmTSS, 0x67, 0x89, 0),  // 64-bit TSS (available), low half
		0,                              // TSS base bits 63:32
	}
	for i, d := range gdt {
		le.PutUint64(v.mem[lmGDT+8*i:], d)
	}
	// The I/O map base lies past the TSS limit, so IOPL alone decides
	// whether CPL3 may use ports: with IOPL=0 every OUT must #GP.
	le.PutUint16(v.mem[lmTSS+0x66:], 0x68)
	copy(v.mem[lmUserCode:], lmCode)
	copy(v.mem[lmUserLoop:], lmLoop)
	copy(v.mem[lmUserCalc:], lmCalc)
	copy(v.mem[lmUserOut:], lmOut)
}

// prepareLongMode gives the vCPU the host's CPUID (KVM checks guest CPUID
// before accepting EFER.LME on some paths) and writes page tables, GDT,
// TSS and guest code into memory.
func (v *vm) prepareLongMode(kvm int) error {
	if _, err := copySupportedCPUID(kvm, v.vcpu); err != nil {
		return err
	}
	v.buildLongMode()
	return nil
}

func flatSeg(sel uint16, typ, dpl uint8, long bool) kvmSegment {
	s := kvmSegment{Base: 0, Limit: 0xffffffff, Selector: sel, Type: typ, Present: 1, DPL: dpl, S: 1, G: 1}
	if long {
		s.L = 1
	} else {
		s.DB = 1
	}
	return s
}

// enterLongMode puts the vCPU straight into 64-bit mode at privilege level
// cpl (0 or 3) with the given IOPL, as the VMM starts its guests (CPL3,
// IOPL=0).
func (v *vm) enterLongMode(rip, rcx uint64, cpl, iopl uint8) error {
	s, err := getSregs(v.vcpu)
	if err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	s.CS = flatSeg(selUserCode, 0xb, 3, true)
	data := flatSeg(selUserData, 0x3, 3, false)
	if cpl == 0 {
		s.CS = flatSeg(selKernelCode, 0xb, 0, true)
		data = flatSeg(selKernelData, 0x3, 0, false)
	}
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvmSegment{Base: lmTSS, Limit: 0x67, Selector: selTSS, Type: 0xb, Present: 1}
	s.LDT = kvmSegment{Selector: 0, Type: 0x2, Present: 1, Unusable: 1}
	s.GDT = kvmDtable{Base: lmGDT, Limit: 7*8 - 1}
	s.IDT = kvmDtable{Base: 0, Limit: 0} // any exception escalates to a triple fault
	s.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0PG
	s.CR3 = lmPML4
	s.CR4 = cr4PAE | cr4OSFXSR | cr4OSXMMEXCPT
	s.EFER = eferSCE | eferLME | eferLMA | eferNXE
	if err := setSregs(v.vcpu, &s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS (long mode, CPL%d): %w", cpl, err)
	}
	regs := kvmRegs{RIP: rip, RCX: rcx, RSP: lmUserStack, RFLAGS: rflagsFixed | uint64(iopl&3)<<12}
	if err := setRegs(v.vcpu, &regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// longModeCPL3 runs code (lmCode, or a planted variant in tests) at cpl
// with IOPL=0 and checks every exit it makes. The cpl parameter exists so a
// test can plant the bug of starting at CPL0 and see the check fail. It
// returns the CS selector the guest itself read: its RPL must be 3, but the
// rest may differ from selUserCode, as on PVM, whose CPL3 guest code runs
// on the host's user code segment (0x33) while KVM_GET_SREGS still shows
// the selector userspace set.
func longModeCPL3(kvm int, v *vm, code []byte, cpl uint8) (uint16, error) {
	if err := v.prepareLongMode(kvm); err != nil {
		return 0, err
	}
	copy(v.mem[lmUserCode:], code)
	// Dirty logging is how the VMM finds the pages an incremental snapshot
	// must carry, so prove it sees a guest write.
	if err := setMemoryRegion(v.fd, 0, memLogDirtyPages, 0, v.mem); err != nil {
		return 0, fmt.Errorf("KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES: %w", err)
	}
	if err := v.enterLongMode(lmUserCode, 0, cpl, 0); err != nil {
		return 0, err
	}
	if err := v.expectDoorbell(dbHello, 'L'); err != nil {
		return 0, fmt.Errorf("first doorbell store at CPL3: %w", err)
	}
	s, err := getSregs(v.vcpu)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	if s.CS.DPL != 3 || s.CS.L != 1 || s.EFER&eferLMA == 0 {
		return 0, fmt.Errorf("after first exit CS.DPL=%d CS.L=%d EFER=%#x, want DPL 3, L 1, LMA set", s.CS.DPL, s.CS.L, s.EFER)
	}
	regs, err := getRegs(v.vcpu)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	if iopl := (regs.RFLAGS & rflagsIOPL) >> 12; iopl != 0 {
		return 0, fmt.Errorf("after first exit RFLAGS=%#x (IOPL=%d), want IOPL=0", regs.RFLAGS, iopl)
	}
	r, err := v.runOnce()
	if err != nil {
		return 0, err
	}
	cs, err := v.doorbellValue(r, dbCS)
	if err != nil {
		return 0, fmt.Errorf("guest-read CS: %w", err)
	}
	if cs > 0xffff || cs&3 != 3 {
		return 0, fmt.Errorf("guest-read CS = %#x, want a selector with RPL 3", cs)
	}
	if err := v.expectDoorbell(dbDone, lmDataValue); err != nil {
		return 0, fmt.Errorf("user write: %w", err)
	}
	if got := binary.LittleEndian.Uint32(v.mem[lmDataPage:]); got != lmDataValue {
		return 0, fmt.Errorf("guest wrote %#x at %#x, host sees %#x", lmDataValue, lmDataPage, got)
	}
	bitmap := make([]uint64, guestMemBytes/pageBytes/64)
	if err := getDirtyLog(v.fd, 0, bitmap); err != nil {
		return 0, fmt.Errorf("KVM_GET_DIRTY_LOG: %w", err)
	}
	dirty := dirtyPages(bitmap)
	if !slices.Contains(dirty, lmDataPage) {
		return 0, fmt.Errorf("KVM_GET_DIRTY_LOG: the guest wrote page %#x but the dirty pages are %#x", lmDataPage, dirty)
	}
	if slices.Contains(dirty, lmUntouched) {
		return 0, fmt.Errorf("KVM_GET_DIRTY_LOG: page %#x is marked dirty though nothing wrote it (dirty pages %#x)", lmUntouched, dirty)
	}
	r, err = v.runOnce()
	if err != nil {
		return 0, err
	}
	if r != exitShutdown {
		return 0, v.unexpected(r, "KVM_EXIT_SHUTDOWN (hlt at CPL3 must #GP, and with no IDT that is a triple fault)")
	}
	return uint16(cs), nil
}

// outFaultsAtCPL3 runs code (lmOut, or a planted variant in tests) at cpl
// with IOPL=0 on a vCPU prepared for long mode and checks that its OUT
// faults: with IOPL=0 and no I/O bitmap, port I/O from CPL3 must #GP,
// which with no IDT is a triple fault (KVM_EXIT_SHUTDOWN). An OUT that
// reaches userspace would mean the CPU ignores IOPL, so a guest could
// bypass the doorbells.
func outFaultsAtCPL3(v *vm, code []byte, cpl uint8) error {
	copy(v.mem[lmUserOut:], code)
	if err := v.enterLongMode(lmUserOut, 0, cpl, 0); err != nil {
		return err
	}
	r, err := v.runOnce()
	if err != nil {
		return err
	}
	switch r {
	case exitShutdown:
		return nil
	case exitIO:
		io := v.ioExit()
		return fmt.Errorf("OUT at CPL3 with IOPL=0 reached userspace as KVM_EXIT_IO (port %#x data %x); it must #GP", io.port, io.data)
	case exitMMIO:
		m := v.mmioExit()
		if m.addr == lmDoorbellBase+dbOutSkipped {
			return errors.New("OUT at CPL3 with IOPL=0 neither faulted nor exited: the guest went on to the next doorbell store")
		}
	}
	return v.unexpected(r, "KVM_EXIT_SHUTDOWN (OUT at CPL3 with IOPL=0 must #GP, and with no IDT that is a triple fault)")
}

// portIOWithIOPL3 reports whether an OUT at cpl with IOPL=3 reaches
// userspace as KVM_EXIT_IO on this host (true) or faults (false). It runs
// on a VM of its own, since the answer is for information only: the VMM
// never gives its guests IOPL=3. PVM, for one, does not honour IOPL and
// raises #GP.
func portIOWithIOPL3(kvm int, cpl uint8) (bool, error) {
	v, err := newVM(kvm)
	if err != nil {
		return false, err
	}
	defer v.close()
	if err := v.prepareLongMode(kvm); err != nil {
		return false, err
	}
	if err := v.enterLongMode(lmUserOut, 0, cpl, 3); err != nil {
		return false, err
	}
	r, err := v.runOnce()
	if err != nil {
		return false, err
	}
	switch r {
	case exitShutdown:
		return false, nil
	case exitIO:
		if err := v.checkOut(serialPort, 'O'); err != nil {
			return false, err
		}
		return true, nil
	}
	return false, v.unexpected(r, "KVM_EXIT_IO or KVM_EXIT_SHUTDOWN")
}

// timeDoorbellExits times n doorbell stores of lmLoop at CPL3, checking
// that each exit is the next store to dbLoop.
func timeDoorbellExits(v *vm, n int) (time.Duration, error) {
	if err := v.enterLongMode(lmUserLoop, 0, 3, 0); err != nil {
		return 0, err
	}
	return v.timeExits(n, func(r uint32, i int) error {
		return v.checkDoorbell(r, dbLoop, uint32(i+2)) // the warm-up exit is i=-1, value 1
	})
}

func timeLongModeLoop(v *vm, iters int) (time.Duration, error) {
	if err := v.enterLongMode(lmUserCalc, uint64(iters), 3, 0); err != nil {
		return 0, err
	}
	start := time.Now()
	r, err := v.runOnce()
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if err := v.checkDoorbell(r, dbCalc, calcDone); err != nil {
		return 0, err
	}
	regs, err := getRegs(v.vcpu)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	if regs.RCX != 0 {
		return 0, fmt.Errorf("loop ended with rcx=%d, want 0", regs.RCX)
	}
	return d, nil
}
