package vmm

// The KVM ABI for x86-64: ioctl numbers, exit reasons and the structs the
// ioctls exchange, laid out exactly as in <linux/kvm.h> and
// <asm/kvm.h> (Documentation/virt/kvm/api.rst). Struct sizes are asserted at
// compile time in kvm_unsafe.go.

// kvmIO is the ioctl type byte of every KVM ioctl.
const kvmIO = 0xAE

// ioctl direction bits of the generic Linux encoding.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | kvmIO<<8 | nr
}

// Sizes of the structs below, in bytes, as the kernel declares them.
const (
	kvmRegsSize        = 144
	kvmSregsSize       = 312
	kvmFPUSize         = 416
	kvmXsaveSize       = 4096
	kvmXcrsSize        = 392
	kvmVcpuEventsSize  = 64
	kvmMemRegionSize   = 32
	kvmDirtyLogSize    = 16
	kvmEnableCapSize   = 104
	kvmMsrsHeaderSize  = 8
	kvmMsrEntrySize    = 16
	kvmCPUIDHeaderSize = 8
	kvmCPUIDEntrySize  = 40
	kvmMsrListHdrSize  = 4
)

var (
	ioctlGetAPIVersion       = ioc(iocNone, 0x00, 0)
	ioctlCreateVM            = ioc(iocNone, 0x01, 0)
	ioctlGetMsrIndexList     = ioc(iocRead|iocWrite, 0x02, kvmMsrListHdrSize)
	ioctlCheckExtension      = ioc(iocNone, 0x03, 0)
	ioctlGetVcpuMmapSize     = ioc(iocNone, 0x04, 0)
	ioctlGetSupportedCPUID   = ioc(iocRead|iocWrite, 0x05, kvmCPUIDHeaderSize)
	ioctlCreateVcpu          = ioc(iocNone, 0x41, 0)
	ioctlGetDirtyLog         = ioc(iocWrite, 0x42, kvmDirtyLogSize)
	ioctlSetUserMemoryRegion = ioc(iocWrite, 0x46, kvmMemRegionSize)
	ioctlSetTSSAddr          = ioc(iocNone, 0x47, 0)
	ioctlRun                 = ioc(iocNone, 0x80, 0)
	ioctlGetRegs             = ioc(iocRead, 0x81, kvmRegsSize)
	ioctlSetRegs             = ioc(iocWrite, 0x82, kvmRegsSize)
	ioctlGetSregs            = ioc(iocRead, 0x83, kvmSregsSize)
	ioctlSetSregs            = ioc(iocWrite, 0x84, kvmSregsSize)
	ioctlGetMsrs             = ioc(iocRead|iocWrite, 0x88, kvmMsrsHeaderSize)
	ioctlSetMsrs             = ioc(iocWrite, 0x89, kvmMsrsHeaderSize)
	ioctlGetFPU              = ioc(iocRead, 0x8c, kvmFPUSize)
	ioctlSetFPU              = ioc(iocWrite, 0x8d, kvmFPUSize)
	ioctlSetCPUID2           = ioc(iocWrite, 0x90, kvmCPUIDHeaderSize)
	ioctlGetVcpuEvents       = ioc(iocRead, 0x9f, kvmVcpuEventsSize)
	ioctlSetVcpuEvents       = ioc(iocWrite, 0xa0, kvmVcpuEventsSize)
	ioctlGetXsave            = ioc(iocRead, 0xa4, kvmXsaveSize)
	ioctlSetXsave            = ioc(iocWrite, 0xa5, kvmXsaveSize)
	ioctlGetXcrs             = ioc(iocRead, 0xa6, kvmXcrsSize)
	ioctlSetXcrs             = ioc(iocWrite, 0xa7, kvmXcrsSize)
)

// Capabilities asked with KVM_CHECK_EXTENSION.
const (
	capUserMemory    = 3
	capSetTSSAddr    = 4
	capExtCPUID      = 7
	capXsave         = 55
	capXcrs          = 56
	capImmediateExit = 136
)

// kvmAPIVersion is the only stable KVM API version.
const kvmAPIVersion = 12

// memLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES, a flag of a memory slot.
const memLogDirtyPages = 1

// Exit reasons in kvm_run.exit_reason.
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHypercall     = 3
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitInternalError = 17
	exitSystemEvent   = 24
)

var exitReasonNames = map[uint32]string{
	exitUnknown: "UNKNOWN", exitException: "EXCEPTION", exitIO: "IO",
	exitHypercall: "HYPERCALL", exitDebug: "DEBUG", exitHLT: "HLT",
	exitMMIO: "MMIO", exitShutdown: "SHUTDOWN (triple fault)",
	exitFailEntry: "FAIL_ENTRY", exitIntr: "INTR",
	exitInternalError: "INTERNAL_ERROR", exitSystemEvent: "SYSTEM_EVENT",
}

func exitReasonName(r uint32) string {
	if n, ok := exitReasonNames[r]; ok {
		return n
	}
	return "reason " + itoa(uint64(r))
}

// Offsets into the mmap'd struct kvm_run (the fields this VMM reads).
const (
	runImmediateExitOff = 1
	runExitReasonOff    = 8
	runUnionOff         = 32 // the exit-reason union
	// io: direction u8, size u8, port u16, ...
	runIOPortOff = runUnionOff + 2
	// mmio: phys_addr u64, data [8]u8, len u32, is_write u8
	runMMIOAddrOff  = runUnionOff + 0
	runMMIODataOff  = runUnionOff + 8
	runMMIOLenOff   = runUnionOff + 16
	runMMIOWriteOff = runUnionOff + 20
	// fail_entry: hardware_entry_failure_reason u64; internal: suberror u32
	runFailReasonOff = runUnionOff + 0
)

// Regs is struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment: a segment register with its hidden part.
type Segment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	Padding                        uint8
}

// DTable is struct kvm_dtable: the GDTR or IDTR.
type DTable struct {
	Base    uint64
	Limit   uint16
	Padding [3]uint16
}

// Sregs is struct kvm_sregs: segment, control and descriptor-table registers.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8, EFER, APICBase    uint64
	InterruptBitmap        [4]uint64
}

// kvmMemRegion is struct kvm_userspace_memory_region.
type kvmMemRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// kvmDirtyLog is struct kvm_dirty_log; Bitmap is a user pointer.
type kvmDirtyLog struct {
	Slot    uint32
	Padding uint32
	Bitmap  uint64
}

// kvmMsrEntry is struct kvm_msr_entry.
type kvmMsrEntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

// kvmCPUIDEntry is struct kvm_cpuid_entry2.
type kvmCPUIDEntry struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
	Padding                [3]uint32
}

// MSRs the snapshot saves, beyond those kept in Sregs (EFER, APIC base):
// the syscall MSRs and segment bases a guest library may set, and the TSC so
// that a restored guest's RDTSC does not run backwards. Only the ones KVM
// lists in KVM_GET_MSR_INDEX_LIST are saved.
var snapshotMSRs = []uint32{
	0x00000010, // IA32_TSC
	0x00000174, // IA32_SYSENTER_CS
	0x00000175, // IA32_SYSENTER_ESP
	0x00000176, // IA32_SYSENTER_EIP
	0x00000277, // IA32_PAT
	0xC0000081, // STAR
	0xC0000082, // LSTAR
	0xC0000083, // CSTAR
	0xC0000084, // SYSCALL_MASK
	0xC0000100, // FS_BASE
	0xC0000101, // GS_BASE
	0xC0000102, // KERNEL_GS_BASE
	0xC0000103, // TSC_AUX
}

// maxCPUIDEntries bounds KVM_GET_SUPPORTED_CPUID's answer (KVM allows 256).
const maxCPUIDEntries = 256

// maxMSRIndexListEntries bounds KVM_GET_MSR_INDEX_LIST's answer.
const maxMSRIndexListEntries = 1024
