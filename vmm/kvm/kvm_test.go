package kvm

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/internal/testutil"
)

// The ioctl numbers must be the kernel's: these are the values of the
// _IO/_IOR/_IOW macros of <linux/kvm.h> on x86-64.
func TestIoctlNumbersMatchKernel(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_API_VERSION", ioctlGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", ioctlCreateVM, 0xae01},
		{"KVM_GET_MSR_INDEX_LIST", ioctlGetMsrIndexList, 0xc004ae02},
		{"KVM_GET_SUPPORTED_CPUID", ioctlGetSupportedCPUID, 0xc008ae05},
		{"KVM_CREATE_VCPU", ioctlCreateVcpu, 0xae41},
		{"KVM_GET_DIRTY_LOG", ioctlGetDirtyLog, 0x4010ae42},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, 0x4020ae46},
		{"KVM_RUN", ioctlRun, 0xae80},
		{"KVM_GET_REGS", ioctlGetRegs, 0x8090ae81},
		{"KVM_SET_REGS", ioctlSetRegs, 0x4090ae82},
		{"KVM_GET_SREGS", ioctlGetSregs, 0x8138ae83},
		{"KVM_SET_SREGS", ioctlSetSregs, 0x4138ae84},
		{"KVM_GET_MSRS", ioctlGetMsrs, 0xc008ae88},
		{"KVM_SET_MSRS", ioctlSetMsrs, 0x4008ae89},
		{"KVM_GET_FPU", IoctlGetFPU, 0x81a0ae8c},
		{"KVM_SET_CPUID2", ioctlSetCPUID2, 0x4008ae90},
		{"KVM_GET_VCPU_EVENTS", IoctlGetVcpuEvents, 0x8040ae9f},
		{"KVM_GET_XSAVE", IoctlGetXsave, 0x9000aea4},
		{"KVM_GET_XCRS", IoctlGetXcrs, 0x8188aea6},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestSegmentDescriptorMatchesKnownEncodings(t *testing.T) {
	for _, c := range []struct {
		name          string
		base, limit   uint32
		access, flags uint8
		want          uint64
	}{
		{"kernel code", 0, 0xfffff, AccessKernelCode, FlagsCode64, 0x00af9a000000ffff},
		{"kernel data", 0, 0xfffff, AccessKernelData, FlagsData, 0x00cf92000000ffff},
		{"user code", 0, 0xfffff, AccessUserCode, FlagsCode64, 0x00affa000000ffff},
		{"user data", 0, 0xfffff, AccessUserData, FlagsData, 0x00cff2000000ffff},
		{"user code, accessed", 0, 0xfffff, AccessUserCode | AccessAccessed, FlagsCode64, 0x00affb000000ffff},
		{"tss", 0x14000, TSSLimit, AccessTSS, 0, 0x0000890140000067},
		{"busy tss", 0x2000, TSSLimit, AccessTSSBusy, 0, 0x00008b0020000067},
		{"high base", 0xff123456, 0x12345, 0x92, 0x4, 0xff41921234562345},
	} {
		if got := SegmentDescriptor(c.base, c.limit, c.access, c.flags); got != c.want {
			t.Errorf("%s: SegmentDescriptor = %#016x, want %#016x", c.name, got, c.want)
		}
	}
}

func TestFlatSegment(t *testing.T) {
	code := FlatSegment(0x23, 0xb, 3, true)
	if code.L != 1 || code.DB != 0 || code.DPL != 3 || code.Limit != 0xffffffff || code.Present != 1 || code.S != 1 || code.G != 1 {
		t.Errorf("64-bit code segment = %+v", code)
	}
	data := FlatSegment(0x1b, 0x3, 3, false)
	if data.L != 0 || data.DB != 1 || data.Selector != 0x1b || data.Type != 0x3 {
		t.Errorf("data segment = %+v", data)
	}
}

func TestDirtyPagesDecodesBitmap(t *testing.T) {
	bitmap := []uint64{1<<0 | 1<<63, 0, 1<<5 | 1<<40}
	if got, want := DirtyPages(bitmap, 3*64), []uint64{0, 63, 128 + 5, 128 + 40}; !slices.Equal(got, want) {
		t.Fatalf("DirtyPages = %v, want %v", got, want)
	}
	// Bits past the slot's last page are not pages.
	if got, want := DirtyPages(bitmap, 128+6), []uint64{0, 63, 128 + 5}; !slices.Equal(got, want) {
		t.Fatalf("DirtyPages of 134 pages = %v, want %v", got, want)
	}
	if got := DirtyPages(make([]uint64, 4), 256); len(got) != 0 {
		t.Fatalf("DirtyPages of an empty bitmap = %v, want none", got)
	}
	if got := BitmapWords(65 * PageBytes); got != 2 {
		t.Fatalf("BitmapWords(65 pages) = %d, want 2", got)
	}
}

func TestExitReasonName(t *testing.T) {
	if got := ExitReasonName(ExitMMIO); got != "MMIO" {
		t.Errorf("ExitReasonName(ExitMMIO) = %q", got)
	}
	if got := ExitReasonName(99); got != "reason 99" {
		t.Errorf("ExitReasonName(99) = %q", got)
	}
}

// TestVcpuOnRealKVM drives the wrappers against the kernel: a vCPU's
// registers set are the registers read back, a memory slot with dirty
// logging gives a bitmap, and immediate_exit makes Run return EINTR
// without entering the guest.
func TestVcpuOnRealKVM(t *testing.T) {
	testutil.Require(t, testutil.KVM)
	sys, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if sys.CheckExtension(CapUserMemory) <= 0 {
		t.Fatal("KVM_CAP_USER_MEMORY absent")
	}
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	const size = 4 << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := vm.SetUserMemoryRegion(0, MemLogDirtyPages, 0, mem); err != nil {
		t.Fatal(err)
	}
	n, err := sys.VcpuMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	vcpu, err := vm.CreateVcpu(0, n)
	if err != nil {
		t.Fatal(err)
	}
	defer vcpu.Close()
	cpuid, err := sys.SupportedCPUID()
	if err != nil || len(cpuid) == 0 {
		t.Fatalf("SupportedCPUID = %d entries, %v", len(cpuid), err)
	}
	if err := vcpu.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}
	want := Regs{RIP: 0x1000, RSP: 0x8000, RAX: 42, R15: 7, RFLAGS: RFLAGSReserved}
	if err := vcpu.SetRegs(want); err != nil {
		t.Fatal(err)
	}
	if got, err := vcpu.GetRegs(); err != nil || got != want {
		t.Fatalf("GetRegs = %+v, %v; want %+v", got, err, want)
	}
	s, err := vcpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := vcpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if got, err := vcpu.GetSregs(); err != nil || got.CS.Base != 0 || got.CS.Selector != 0 {
		t.Fatalf("GetSregs CS = %+v, %v; want base 0 selector 0", got.CS, err)
	}
	bm := make([]uint64, BitmapWords(size))
	if err := vm.GetDirtyLog(0, bm); err != nil {
		t.Fatal(err)
	}
	if got := DirtyPages(bm, size/PageBytes); len(got) != 0 {
		t.Fatalf("dirty pages before the guest ran: %v", got)
	}
	vcpu.SetImmediateExit(true)
	if err := vcpu.Run(); !errors.Is(err, unix.EINTR) {
		t.Fatalf("Run with immediate_exit = %v, want EINTR", err)
	}
	vcpu.SetImmediateExit(false)
	if got, err := vcpu.GetRegs(); err != nil || got.RIP != want.RIP {
		t.Fatalf("after an immediate exit RIP = %#x, %v; want %#x (no guest code ran)", got.RIP, err, want.RIP)
	}
	if err := vcpu.SetBlob("KVM_SET_FPU", IoctlSetFPU, make([]byte, 7), FPUSize); err == nil {
		t.Fatal("SetBlob accepted a 7-byte kvm_fpu")
	}
	fpu, err := vcpu.GetBlob("KVM_GET_FPU", IoctlGetFPU, FPUSize)
	if err != nil || len(fpu) != FPUSize {
		t.Fatalf("GetBlob(kvm_fpu) = %d bytes, %v", len(fpu), err)
	}
	if err := vcpu.SetBlob("KVM_SET_FPU", IoctlSetFPU, fpu, FPUSize); err != nil {
		t.Fatal(err)
	}
}
