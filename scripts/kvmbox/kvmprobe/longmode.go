package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// dirtyPages turns a KVM dirty bitmap (kvm.DirtyPages decodes the page
// numbers) into the guest-physical addresses of the dirty pages of a slot
// that starts at address 0.
func dirtyPages(bitmap []uint64) []uint64 {
	pages := kvm.DirtyPages(bitmap, uint64(len(bitmap))*64)
	for i := range pages {
		pages[i] *= kvm.PageBytes
	}
	return pages
}

// Guest-physical layout of the long-mode probe. It is the probe's own, not
// the VMM's (vmm/layout_amd64.go), because the probe guest is a few
// hand-assembled instructions at fixed low addresses, not an ELF at
// vmm.LoadBase with a boot-info page, and the probe must not depend on the
// VMM's devices; what it shares with the VMM is the kind of mapping:
// guest memory identity-mapped with 2 MiB pages that have U/S set, and the
// doorbell page at lmDoorbellBase, which no memory slot backs.
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

// GDT selectors (index<<3 | RPL) of the probe's GDT, whose order (user
// code before user data) is its own; the VMM's puts user data first, as
// SYSRET wants.
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

func (v *vm) buildLongMode() {
	le := binary.LittleEndian
	const rwu = kvm.PTEPresent | kvm.PTEWrite | kvm.PTEUser
	le.PutUint64(v.mem[lmPML4:], lmPDPT|rwu)
	le.PutUint64(v.mem[lmPDPT:], lmPD|rwu)
	for i := uint64(0); i < guestMemBytes>>21; i++ {
		le.PutUint64(v.mem[lmPD+8*i:], i<<21|rwu|kvm.PTEPageSize)
	}
	// The doorbell page, as the VMM maps it: user-accessible, writable,
	// backed by no memory slot, so every access to it is an MMIO exit.
	le.PutUint64(v.mem[lmPDPT+8*(lmDoorbellBase>>30):], lmDoorbellPD|rwu)
	le.PutUint64(v.mem[lmDoorbellPD+8*(lmDoorbellBase>>21&511):], lmDoorbellBase|rwu|kvm.PTEPageSize)
	gdt := []uint64{
		0,
		kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessKernelCode, kvm.FlagsCode64), // P, DPL0, exec/read; G, L
		kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessKernelData, kvm.FlagsData),   // P, DPL0, read/write; G, D/B
		kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessUserCode, kvm.FlagsCode64),   // P, DPL3
		kvm.SegmentDescriptor(0, 0xfffff, kvm.AccessUserData, kvm.FlagsData),     // P, DPL3
		kvm.SegmentDescriptor(lmTSS, kvm.TSSLimit, kvm.AccessTSS, 0),             // 64-bit TSS (available), low half
		0, // TSS base bits 63:32
	}
	for i, d := range gdt {
		le.PutUint64(v.mem[lmGDT+8*i:], d)
	}
	// The I/O map base lies past the TSS limit, so IOPL alone decides
	// whether CPL3 may use ports: with IOPL=0 every OUT must #GP.
	le.PutUint16(v.mem[lmTSS+kvm.TSSIOMapBaseOff:], kvm.TSSLimit+1)
	copy(v.mem[lmUserCode:], lmCode)
	copy(v.mem[lmUserLoop:], lmLoop)
	copy(v.mem[lmUserCalc:], lmCalc)
	copy(v.mem[lmUserOut:], lmOut)
}

// prepareLongMode gives the vCPU the host's CPUID (KVM checks guest CPUID
// before accepting EFER.LME on some paths) and writes page tables, GDT,
// TSS and guest code into memory.
func (v *vm) prepareLongMode(sys *kvm.System) error {
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		return err
	}
	if err := v.vcpu.SetCPUID(cpuid); err != nil {
		return err
	}
	v.buildLongMode()
	return nil
}

// enterLongMode puts the vCPU straight into 64-bit mode at privilege level
// cpl (0 or 3) with the given IOPL, as the VMM starts its guests (CPL3,
// IOPL=0).
func (v *vm) enterLongMode(rip, rcx uint64, cpl, iopl uint8) error {
	s, err := v.vcpu.GetSregs()
	if err != nil {
		return err
	}
	s.CS = kvm.FlatSegment(selUserCode, 0xb, 3, true)
	data := kvm.FlatSegment(selUserData, 0x3, 3, false)
	if cpl == 0 {
		s.CS = kvm.FlatSegment(selKernelCode, 0xb, 0, true)
		data = kvm.FlatSegment(selKernelData, 0x3, 0, false)
	}
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvm.Segment{Base: lmTSS, Limit: kvm.TSSLimit, Selector: selTSS, Type: 0xb, Present: 1}
	s.LDT = kvm.Segment{Selector: 0, Type: 0x2, Present: 1, Unusable: 1}
	s.GDT = kvm.DTable{Base: lmGDT, Limit: 7*8 - 1}
	s.IDT = kvm.DTable{Base: 0, Limit: 0} // any exception escalates to a triple fault
	s.CR0 = kvm.CR0PE | kvm.CR0MP | kvm.CR0ET | kvm.CR0NE | kvm.CR0WP | kvm.CR0PG
	s.CR3 = lmPML4
	s.CR4 = kvm.CR4PAE | kvm.CR4OSFXSR | kvm.CR4OSXMMEXCPT
	s.EFER = kvm.EFERSCE | kvm.EFERLME | kvm.EFERLMA | kvm.EFERNXE
	if err := v.vcpu.SetSregs(s); err != nil {
		return fmt.Errorf("long mode, CPL%d: %w", cpl, err)
	}
	// IOPL is set here only for the information check portIOWithIOPL3; the
	// VMM always starts its guests with IOPL=0.
	return v.vcpu.SetRegs(kvm.Regs{RIP: rip, RCX: rcx, RSP: lmUserStack, RFLAGS: kvm.RFLAGSReserved | uint64(iopl&3)<<kvm.RFLAGSIOPLShift})
}

// longModeCPL3 runs code (lmCode, or a planted variant in tests) at cpl
// with IOPL=0 and checks every exit it makes. The cpl parameter exists so a
// test can plant the bug of starting at CPL0 and see the check fail. It
// returns the CS selector the guest itself read: its RPL must be 3, but the
// rest may differ from selUserCode, as on PVM, whose CPL3 guest code runs
// on the host's user code segment (0x33) while KVM_GET_SREGS still shows
// the selector userspace set.
func longModeCPL3(sys *kvm.System, v *vm, code []byte, cpl uint8) (uint16, error) {
	if err := v.prepareLongMode(sys); err != nil {
		return 0, err
	}
	copy(v.mem[lmUserCode:], code)
	// Dirty logging is how the VMM finds the pages an incremental snapshot
	// must carry, so prove it sees a guest write.
	if err := v.vm.SetUserMemoryRegion(0, kvm.MemLogDirtyPages, 0, v.mem); err != nil {
		return 0, fmt.Errorf("with KVM_MEM_LOG_DIRTY_PAGES: %w", err)
	}
	if err := v.enterLongMode(lmUserCode, 0, cpl, 0); err != nil {
		return 0, err
	}
	if err := v.expectDoorbell(dbHello, 'L'); err != nil {
		return 0, fmt.Errorf("first doorbell store at CPL3: %w", err)
	}
	s, err := v.vcpu.GetSregs()
	if err != nil {
		return 0, err
	}
	if s.CS.DPL != 3 || s.CS.L != 1 || s.EFER&kvm.EFERLMA == 0 {
		return 0, fmt.Errorf("after first exit CS.DPL=%d CS.L=%d EFER=%#x, want DPL 3, L 1, LMA set", s.CS.DPL, s.CS.L, s.EFER)
	}
	regs, err := v.vcpu.GetRegs()
	if err != nil {
		return 0, err
	}
	if iopl := (regs.RFLAGS & kvm.RFLAGSIOPL) >> kvm.RFLAGSIOPLShift; iopl != 0 {
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
	bitmap := make([]uint64, kvm.BitmapWords(guestMemBytes))
	if err := v.vm.GetDirtyLog(0, bitmap); err != nil {
		return 0, err
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
	if r != kvm.ExitShutdown {
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
	case kvm.ExitShutdown:
		return nil
	case kvm.ExitIO:
		io := v.ioExit()
		return fmt.Errorf("OUT at CPL3 with IOPL=0 reached userspace as KVM_EXIT_IO (port %#x data %x); it must #GP", io.port, io.data)
	case kvm.ExitMMIO:
		m := v.mmioExit()
		if m.addr == lmDoorbellBase+dbOutSkipped {
			return errors.New("OUT at CPL3 with IOPL=0 neither faulted nor exited: the guest went on to the next doorbell store")
		}
	}
	return v.unexpected(r, "KVM_EXIT_SHUTDOWN (OUT at CPL3 with IOPL=0 must #GP, and with no IDT that is a triple fault)")
}

// portIOWithIOPL3 is kvmprobe's own (nothing in vmm/kvm or the VMM gives a
// guest IOPL=3): it reports whether an OUT at cpl with IOPL=3 reaches
// userspace as KVM_EXIT_IO on this host (true) or faults (false). It runs
// on a VM of its own, since the answer is for information only: the VMM
// never gives its guests IOPL=3. PVM, for one, does not honour IOPL and
// raises #GP.
func portIOWithIOPL3(sys *kvm.System, cpl uint8) (bool, error) {
	v, err := newVM(sys)
	if err != nil {
		return false, err
	}
	defer v.close()
	if err := v.prepareLongMode(sys); err != nil {
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
	case kvm.ExitShutdown:
		return false, nil
	case kvm.ExitIO:
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
	regs, err := v.vcpu.GetRegs()
	if err != nil {
		return 0, err
	}
	if regs.RCX != 0 {
		return 0, fmt.Errorf("loop ended with rcx=%d, want 0", regs.RCX)
	}
	return d, nil
}
