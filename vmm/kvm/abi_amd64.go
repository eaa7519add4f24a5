package kvm

import "strconv"

// The KVM ABI for x86-64: ioctl numbers, capabilities, exit reasons, the
// offsets into struct kvm_run and the structs the ioctls exchange, laid out
// exactly as in <linux/kvm.h> and <asm/kvm.h>
// (Documentation/virt/kvm/api.rst). Struct sizes are asserted at compile
// time in kvm_amd64_unsafe.go.

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

// Sizes of the kernel's structs, in bytes, as the kernel declares them.
// The opaque ones (FPU, XSAVE, XCRS, vCPU events) are moved as byte blobs
// of these sizes with Vcpu.GetBlob and Vcpu.SetBlob.
const (
	RegsSize          = 144
	SregsSize         = 312
	FPUSize           = 416
	XsaveSize         = 4096
	XcrsSize          = 392
	VcpuEventsSize    = 64
	MemRegionSize     = 32
	DirtyLogSize      = 16
	EnableCapSize     = 104
	MsrsHeaderSize    = 8
	MsrEntrySize      = 16
	CPUIDHeaderSize   = 8
	CPUIDEntrySize    = 40
	MsrListHeaderSize = 4
)

// ioctl request numbers. The ones on the system, VM and vCPU fds that have
// a wrapper below are used through it; the vCPU-state ones that move an
// opaque blob are exported for Vcpu.GetBlob and Vcpu.SetBlob.
var (
	ioctlGetAPIVersion       = ioc(iocNone, 0x00, 0)
	ioctlCreateVM            = ioc(iocNone, 0x01, 0)
	ioctlGetMsrIndexList     = ioc(iocRead|iocWrite, 0x02, MsrListHeaderSize)
	ioctlCheckExtension      = ioc(iocNone, 0x03, 0)
	ioctlGetVcpuMmapSize     = ioc(iocNone, 0x04, 0)
	ioctlGetSupportedCPUID   = ioc(iocRead|iocWrite, 0x05, CPUIDHeaderSize)
	ioctlCreateVcpu          = ioc(iocNone, 0x41, 0)
	ioctlGetDirtyLog         = ioc(iocWrite, 0x42, DirtyLogSize)
	ioctlSetUserMemoryRegion = ioc(iocWrite, 0x46, MemRegionSize)
	ioctlSetTSSAddr          = ioc(iocNone, 0x47, 0)
	ioctlRun                 = ioc(iocNone, 0x80, 0)
	ioctlGetRegs             = ioc(iocRead, 0x81, RegsSize)
	ioctlSetRegs             = ioc(iocWrite, 0x82, RegsSize)
	ioctlGetSregs            = ioc(iocRead, 0x83, SregsSize)
	ioctlSetSregs            = ioc(iocWrite, 0x84, SregsSize)
	ioctlGetMsrs             = ioc(iocRead|iocWrite, 0x88, MsrsHeaderSize)
	ioctlSetMsrs             = ioc(iocWrite, 0x89, MsrsHeaderSize)
	ioctlSetCPUID2           = ioc(iocWrite, 0x90, CPUIDHeaderSize)

	IoctlGetFPU        = ioc(iocRead, 0x8c, FPUSize)
	IoctlSetFPU        = ioc(iocWrite, 0x8d, FPUSize)
	IoctlGetVcpuEvents = ioc(iocRead, 0x9f, VcpuEventsSize)
	IoctlSetVcpuEvents = ioc(iocWrite, 0xa0, VcpuEventsSize)
	IoctlGetXsave      = ioc(iocRead, 0xa4, XsaveSize)
	IoctlSetXsave      = ioc(iocWrite, 0xa5, XsaveSize)
	IoctlGetXcrs       = ioc(iocRead, 0xa6, XcrsSize)
	IoctlSetXcrs       = ioc(iocWrite, 0xa7, XcrsSize)
)

// Capabilities asked with KVM_CHECK_EXTENSION (System.CheckExtension).
const (
	CapUserMemory             = 3
	CapSetTSSAddr             = 4
	CapExtCPUID               = 7
	CapXsave                  = 55
	CapXcrs                   = 56
	CapImmediateExit          = 136
	CapManualDirtyLogProtect2 = 168
	CapDirtyLogRing           = 192
)

// APIVersion is the only stable KVM API version (every kernel since
// 2.6.22); Open refuses any other.
const APIVersion = 12

// MemLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES, a flag of a memory slot:
// KVM keeps a dirty bitmap of the slot (VM.GetDirtyLog).
const MemLogDirtyPages = 1

// Exit reasons in kvm_run.exit_reason.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

var exitReasonNames = map[uint32]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO",
	ExitHypercall: "HYPERCALL", ExitDebug: "DEBUG", ExitHLT: "HLT",
	ExitMMIO: "MMIO", ExitShutdown: "SHUTDOWN (triple fault)",
	ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
	ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT",
}

// ExitReasonName names an exit reason for an error message ("MMIO",
// "reason 42" for one this package does not know).
func ExitReasonName(r uint32) string {
	if n, ok := exitReasonNames[r]; ok {
		return n
	}
	return "reason " + strconv.FormatUint(uint64(r), 10)
}

// Offsets into the mmap'd struct kvm_run (Vcpu.RunArea), little-endian.
const (
	RunImmediateExitOff = 1
	RunExitReasonOff    = 8
	RunUnionOff         = 32 // the exit-reason union
	// io: direction u8, size u8, port u16, count u32, data_offset u64
	RunIODirectionOff  = RunUnionOff + 0
	RunIOSizeOff       = RunUnionOff + 1
	RunIOPortOff       = RunUnionOff + 2
	RunIOCountOff      = RunUnionOff + 4
	RunIODataOffsetOff = RunUnionOff + 8
	// mmio: phys_addr u64, data [8]u8, len u32, is_write u8
	RunMMIOAddrOff  = RunUnionOff + 0
	RunMMIODataOff  = RunUnionOff + 8
	RunMMIOLenOff   = RunUnionOff + 16
	RunMMIOWriteOff = RunUnionOff + 20
	// fail_entry: hardware_entry_failure_reason u64; internal: suberror u32
	RunFailReasonOff = RunUnionOff + 0
)

// IODirOut is kvm_run.io.direction of an OUT (KVM_EXIT_IO_OUT).
const IODirOut = 1

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

// MemRegion is struct kvm_userspace_memory_region (VM.SetUserMemoryRegion
// builds it).
type MemRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// DirtyLog is struct kvm_dirty_log; Bitmap is a user pointer
// (VM.GetDirtyLog builds it).
type DirtyLog struct {
	Slot    uint32
	Padding uint32
	Bitmap  uint64
}

// MsrEntry is struct kvm_msr_entry.
type MsrEntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
	Padding                [3]uint32
}

// MaxCPUIDEntries bounds KVM_GET_SUPPORTED_CPUID's answer (KVM allows 256;
// 6.x kernels report well under 100).
const MaxCPUIDEntries = 256

// MaxMSRIndexListEntries bounds KVM_GET_MSR_INDEX_LIST's answer.
const MaxMSRIndexListEntries = 1024
