package main

// This file holds the only unsafe code of kvmprobe: KVM's ioctls take
// pointers to C structs, and the structs below mirror those layouts
// (linux/kvm.h, x86), so their addresses must be handed to the kernel.

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type kvmSegment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8
}

type kvmDtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT kvmSegment
	GDT, IDT                        kvmDtable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER, APICBase                  uint64
	InterruptBitmap                 [4]uint64
}

type kvmUserspaceMemoryRegion struct {
	Slot, Flags   uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

type kvmCPUIDEntry2 struct {
	Function, Index, Flags, EAX, EBX, ECX, EDX uint32
	_                                          [3]uint32
}

// maxCPUIDEntries bounds the KVM_GET_SUPPORTED_CPUID answer; the kernel
// says E2BIG if it has more, and 6.x kernels report well under 100.
const maxCPUIDEntries = 256

type kvmCPUID2 struct {
	Nent    uint32
	_       uint32
	Entries [maxCPUIDEntries]kvmCPUIDEntry2
}

func init() {
	// The kernel reads these structs by their C sizes; a wrong Go layout
	// would corrupt guest state silently, so refuse to run instead.
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(kvmRegs{}), 144},
		{"kvm_segment", unsafe.Sizeof(kvmSegment{}), 24},
		{"kvm_sregs", unsafe.Sizeof(kvmSregs{}), 312},
		{"kvm_userspace_memory_region", unsafe.Sizeof(kvmUserspaceMemoryRegion{}), 32},
		{"kvm_cpuid_entry2", unsafe.Sizeof(kvmCPUIDEntry2{}), 40},
	} {
		if c.got != c.want {
			panic(fmt.Sprintf("kvmprobe: struct %s is %d bytes, kernel expects %d", c.name, c.got, c.want))
		}
	}
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

func getRegs(fd int) (kvmRegs, error) {
	var r kvmRegs
	_, err := ioctlPtr(fd, kvmGetRegs, unsafe.Pointer(&r))
	return r, err
}

func setRegs(fd int, r *kvmRegs) error {
	_, err := ioctlPtr(fd, kvmSetRegs, unsafe.Pointer(r))
	return err
}

func getSregs(fd int) (kvmSregs, error) {
	var s kvmSregs
	_, err := ioctlPtr(fd, kvmGetSregs, unsafe.Pointer(&s))
	return s, err
}

func setSregs(fd int, s *kvmSregs) error {
	_, err := ioctlPtr(fd, kvmSetSregs, unsafe.Pointer(s))
	return err
}

func setMemoryRegion(vmfd int, slot, flags uint32, gpa uint64, mem []byte) error {
	r := kvmUserspaceMemoryRegion{
		Slot:          slot,
		Flags:         flags,
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	}
	_, err := ioctlPtr(vmfd, kvmSetUserMemoryRegion, unsafe.Pointer(&r))
	return err
}

// copySupportedCPUID gives the vCPU the CPUID the host KVM supports, so the
// guest sees long mode (KVM checks guest CPUID before accepting EFER.LME on
// some paths).
func copySupportedCPUID(kvmfd, vcpufd int) (int, error) {
	c := new(kvmCPUID2)
	c.Nent = maxCPUIDEntries
	if _, err := ioctlPtr(kvmfd, kvmGetSupportedCPUID, unsafe.Pointer(c)); err != nil {
		return 0, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	if _, err := ioctlPtr(vcpufd, kvmSetCPUID2, unsafe.Pointer(c)); err != nil {
		return 0, fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	return int(c.Nent), nil
}

type kvmDirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64 // user address of one bit per 4 KiB page
}

// getDirtyLog fetches (and, without manual protect, clears) the slot's
// dirty bitmap into bitmap.
func getDirtyLog(vmfd int, slot uint32, bitmap []uint64) error {
	l := kvmDirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	_, err := ioctlPtr(vmfd, kvmGetDirtyLog, unsafe.Pointer(&l))
	return err
}
