package main

import (
	"encoding/binary"
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

// Guest-physical layout of the long-mode probe. Everything is
// identity-mapped with 2 MiB pages that have U/S set, as the VMM does.
const (
	lmUserCode  = 0x1000
	lmUserLoop  = 0x1100
	lmUserCalc  = 0x1200
	lmPML4      = 0x10000
	lmPDPT      = 0x11000
	lmPD        = 0x12000
	lmGDT       = 0x13000
	lmTSS       = 0x14000
	lmDataPage  = 0x200000 // first byte of the second 2 MiB page
	lmUntouched = 0x300000 // a page nothing writes
	lmUserStack = 0x3ff000
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
	rflagsIOPL3 = 3 << 12
)

// GDT selectors (index<<3 | RPL).
const (
	selKernelCode = 1 << 3
	selKernelData = 2 << 3
	selUserCode   = 3<<3 | 3
	selUserData   = 4<<3 | 3
	selTSS        = 5 << 3
)

// Ports the long-mode guest reports on.
const (
	portCS   = 0xf0 // low byte of CS
	portDone = 0xf1 // low byte of the value written to lmDataPage
	portCalc = 0xf2 // compute loop finished
)

// lmCode is the CPL3 guest:
//
//	mov $0x3f8,%edx; mov $'L',%al; out %al,(%dx)
//	mov %cs,%eax; out %al,$0xf0
//	mov $0x12345678,%eax; mov %eax,0x200000; out %al,$0xf1
//	hlt                      # privileged: #GP, no IDT, triple fault
var lmCode = []byte{
	0xba, 0xf8, 0x03, 0x00, 0x00, 0xb0, 'L', 0xee,
	0x8c, 0xc8, 0xe6, portCS,
	0xb8, 0x78, 0x56, 0x34, 0x12, 0x89, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0xe6, portDone,
	0xf4,
}

// lmLoop: mov $0x3f8,%edx; 1: out %al,(%dx); jmp 1b
var lmLoop = []byte{0xba, 0xf8, 0x03, 0x00, 0x00, 0xee, 0xeb, 0xfd}

// lmCalc: 1: dec %rcx; jnz 1b; out %al,$0xf2; jmp . (never reached again)
var lmCalc = []byte{0x48, 0xff, 0xc9, 0x75, 0xfb, 0xe6, portCalc, 0xeb, 0xfe}

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
	le.PutUint16(v.mem[lmTSS+0x66:], 0x68) // I/O map base past the limit: IOPL alone decides
	copy(v.mem[lmUserCode:], lmCode)
	copy(v.mem[lmUserLoop:], lmLoop)
	copy(v.mem[lmUserCalc:], lmCalc)
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
// cpl (0 or 3) with IOPL=3, as the VMM starts its guests.
func (v *vm) enterLongMode(rip, rcx uint64, cpl uint8) error {
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
		return fmt.Errorf("KVM_SET_SREGS (long mode, CPL3): %w", err)
	}
	regs := kvmRegs{RIP: rip, RCX: rcx, RSP: lmUserStack, RFLAGS: rflagsFixed | rflagsIOPL3}
	if err := setRegs(v.vcpu, &regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// longModeCPL3 runs lmCode at CPL3 and checks every exit it makes. The
// cpl parameter exists so a test can plant the bug of starting at CPL0 and
// see the check fail.
func longModeCPL3(kvm int, v *vm, cpl uint8) error {
	if _, err := copySupportedCPUID(kvm, v.vcpu); err != nil {
		return err
	}
	v.buildLongMode()
	// Dirty logging is how the VMM finds the pages an incremental snapshot
	// must carry, so prove it sees a guest write.
	if err := setMemoryRegion(v.fd, 0, memLogDirtyPages, 0, v.mem); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES: %w", err)
	}
	if err := v.enterLongMode(lmUserCode, 0, cpl); err != nil {
		return err
	}
	if err := v.expectOut(serialPort, 'L'); err != nil {
		return fmt.Errorf("first OUT at CPL3 with IOPL=3: %w", err)
	}
	s, err := getSregs(v.vcpu)
	if err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	if s.CS.DPL != 3 || s.CS.L != 1 || s.EFER&eferLMA == 0 {
		return fmt.Errorf("after first exit CS.DPL=%d CS.L=%d EFER=%#x, want DPL 3, L 1, LMA set", s.CS.DPL, s.CS.L, s.EFER)
	}
	if err := v.expectOut(portCS, selUserCode); err != nil {
		return fmt.Errorf("guest-read CS: %w", err)
	}
	if err := v.expectOut(portDone, 0x78); err != nil {
		return fmt.Errorf("user write: %w", err)
	}
	if got := binary.LittleEndian.Uint32(v.mem[lmDataPage:]); got != 0x12345678 {
		return fmt.Errorf("guest wrote %#x at %#x, host sees %#x", 0x12345678, lmDataPage, got)
	}
	bitmap := make([]uint64, guestMemBytes/pageBytes/64)
	if err := getDirtyLog(v.fd, 0, bitmap); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG: %w", err)
	}
	dirty := dirtyPages(bitmap)
	if !slices.Contains(dirty, lmDataPage) {
		return fmt.Errorf("KVM_GET_DIRTY_LOG: the guest wrote page %#x but the dirty pages are %#x", lmDataPage, dirty)
	}
	if slices.Contains(dirty, lmUntouched) {
		return fmt.Errorf("KVM_GET_DIRTY_LOG: page %#x is marked dirty though nothing wrote it (dirty pages %#x)", lmUntouched, dirty)
	}
	r, err := v.runOnce()
	if err != nil {
		return err
	}
	if r != exitShutdown {
		return v.unexpected(r, "KVM_EXIT_SHUTDOWN (hlt at CPL3 must #GP, and with no IDT that is a triple fault)")
	}
	return nil
}

func timeLongModeExits(v *vm, n int) (time.Duration, error) {
	if err := v.enterLongMode(lmUserLoop, 0, 3); err != nil {
		return 0, err
	}
	return v.timeExits(n, serialPort)
}

func timeLongModeLoop(v *vm, iters int) (time.Duration, error) {
	if err := v.enterLongMode(lmUserCalc, uint64(iters), 3); err != nil {
		return 0, err
	}
	start := time.Now()
	r, err := v.runOnce()
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if r != exitIO || v.ioExit().port != portCalc {
		return 0, v.unexpected(r, fmt.Sprintf("KVM_EXIT_IO to port %#x", portCalc))
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
