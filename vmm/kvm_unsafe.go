package vmm

// This file is the only place that hands Go pointers to the kernel: every
// KVM ioctl passes the address of a struct laid out as in <linux/kvm.h>
// (kvm_amd64.go), which needs unsafe.Pointer. Nothing else in the package
// imports unsafe.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Compile-time checks that the Go structs have the kernel's sizes: each line
// fails to compile if the size is larger or smaller.
var (
	_ [unsafe.Sizeof(Regs{}) - kvmRegsSize]byte
	_ [kvmRegsSize - unsafe.Sizeof(Regs{})]byte
	_ [unsafe.Sizeof(Sregs{}) - kvmSregsSize]byte
	_ [kvmSregsSize - unsafe.Sizeof(Sregs{})]byte
	_ [unsafe.Sizeof(kvmMemRegion{}) - kvmMemRegionSize]byte
	_ [kvmMemRegionSize - unsafe.Sizeof(kvmMemRegion{})]byte
	_ [unsafe.Sizeof(kvmDirtyLog{}) - kvmDirtyLogSize]byte
	_ [kvmDirtyLogSize - unsafe.Sizeof(kvmDirtyLog{})]byte
	_ [unsafe.Sizeof(kvmMsrEntry{}) - kvmMsrEntrySize]byte
	_ [kvmMsrEntrySize - unsafe.Sizeof(kvmMsrEntry{})]byte
	_ [unsafe.Sizeof(kvmCPUIDEntry{}) - kvmCPUIDEntrySize]byte
	_ [kvmCPUIDEntrySize - unsafe.Sizeof(kvmCPUIDEntry{})]byte
	_ [unsafe.Sizeof(Segment{}) - 24]byte
	_ [24 - unsafe.Sizeof(Segment{})]byte
)

// ioctl retries a call a signal interrupted: the Go runtime signals its
// threads (preemption), and some KVM ioctls (KVM_CREATE_VM among them)
// give up with EINTR when a signal is pending. KVM_RUN goes through
// kvmRun instead, where EINTR is the answer to a kick.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, errno
	}
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) error {
	_, err := ioctl(fd, req, uintptr(p))
	return err
}

// kvmSystem is an open /dev/kvm.
type kvmSystem struct{ fd int }

func openKVM() (*kvmSystem, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("open /dev/kvm: %w: this kernel offers no KVM (no VT-x/AMD-V, or a hypervisor that does not nest it); run on a KVM host or in the kvmbox test bed", err)
		}
		return nil, fmt.Errorf("open /dev/kvm: %w (run as root or join the kvm group)", err)
	}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_API_VERSION answered %d, this VMM speaks %d", v, kvmAPIVersion)
	}
	return &kvmSystem{fd: fd}, nil
}

func (s *kvmSystem) close() error { return unix.Close(s.fd) }

func (s *kvmSystem) checkExtension(capability uintptr) int {
	r, err := ioctl(s.fd, ioctlCheckExtension, capability)
	if err != nil {
		return 0
	}
	return int(r)
}

func (s *kvmSystem) createVM() (int, error) {
	r, err := ioctl(s.fd, ioctlCreateVM, 0)
	if err != nil {
		return -1, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return int(r), nil
}

func (s *kvmSystem) vcpuMmapSize() (int, error) {
	r, err := ioctl(s.fd, ioctlGetVcpuMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

func (s *kvmSystem) supportedCPUID() ([]kvmCPUIDEntry, error) {
	buf := make([]byte, kvmCPUIDHeaderSize+maxCPUIDEntries*kvmCPUIDEntrySize)
	binary.LittleEndian.PutUint32(buf, maxCPUIDEntries)
	if err := ioctlPtr(s.fd, ioctlGetSupportedCPUID, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	n := binary.LittleEndian.Uint32(buf)
	if n > maxCPUIDEntries {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID answered %d entries, more than the %d asked for", n, maxCPUIDEntries)
	}
	entries := make([]kvmCPUIDEntry, n)
	copy(entries, unsafe.Slice((*kvmCPUIDEntry)(unsafe.Pointer(&buf[kvmCPUIDHeaderSize])), n))
	return entries, nil
}

func (s *kvmSystem) msrIndexList() ([]uint32, error) {
	buf := make([]uint32, 1+maxMSRIndexListEntries)
	buf[0] = maxMSRIndexListEntries
	if err := ioctlPtr(s.fd, ioctlGetMsrIndexList, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	n := buf[0]
	if n > maxMSRIndexListEntries {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST answered %d entries, more than %d", n, maxMSRIndexListEntries)
	}
	return append([]uint32(nil), buf[1:1+n]...), nil
}

// kvmVM is a VM file descriptor.
type kvmVM struct{ fd int }

func (vm *kvmVM) setTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	return nil
}

func (vm *kvmVM) setUserMemoryRegion(slot, flags uint32, guestPhys uint64, mem []byte) error {
	r := kvmMemRegion{
		Slot:          slot,
		Flags:         flags,
		GuestPhysAddr: guestPhys,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	}
	if err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION (slot %d, %d bytes): %w", slot, len(mem), err)
	}
	return nil
}

// getDirtyLog fetches and clears KVM's dirty bitmap of a slot into bitmap,
// one bit per 4 KiB page.
func (vm *kvmVM) getDirtyLog(slot uint32, bitmap []uint64) error {
	d := kvmDirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	if err := ioctlPtr(vm.fd, ioctlGetDirtyLog, unsafe.Pointer(&d)); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG (slot %d): %w", slot, err)
	}
	return nil
}

func (vm *kvmVM) createVcpu(id int) (int, error) {
	r, err := ioctl(vm.fd, ioctlCreateVcpu, uintptr(id))
	if err != nil {
		return -1, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	return int(r), nil
}

// kvmVcpu is a vCPU file descriptor and its mmap'd struct kvm_run.
type kvmVcpu struct {
	fd  int
	run []byte
}

func (v *kvmVcpu) runArea() []byte { return v.run }

// kvmRun enters the guest. It returns unix.EINTR when a signal or
// immediate_exit stopped it before or during guest execution.
func (v *kvmVcpu) kvmRun() error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// setImmediateExit sets or clears kvm_run.immediate_exit. It may be called
// from any goroutine: the store is atomic on the 32-bit word holding the
// byte (its neighbour request_interrupt_window is never used here).
func (v *kvmVcpu) setImmediateExit(on bool) {
	var val uint32
	if on {
		val = 1 << (8 * runImmediateExitOff)
	}
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&v.run[0])), val)
}

func (v *kvmVcpu) getRegs() (Regs, error) {
	var r Regs
	err := ioctlPtr(v.fd, ioctlGetRegs, unsafe.Pointer(&r))
	return r, wrapIoctl("KVM_GET_REGS", err)
}

func (v *kvmVcpu) setRegs(r Regs) error {
	return wrapIoctl("KVM_SET_REGS", ioctlPtr(v.fd, ioctlSetRegs, unsafe.Pointer(&r)))
}

func (v *kvmVcpu) getSregs() (Sregs, error) {
	var s Sregs
	err := ioctlPtr(v.fd, ioctlGetSregs, unsafe.Pointer(&s))
	return s, wrapIoctl("KVM_GET_SREGS", err)
}

func (v *kvmVcpu) setSregs(s Sregs) error {
	return wrapIoctl("KVM_SET_SREGS", ioctlPtr(v.fd, ioctlSetSregs, unsafe.Pointer(&s)))
}

// getBlob and setBlob move an opaque fixed-size struct (kvm_fpu,
// kvm_xsave, kvm_xcrs, kvm_vcpu_events) the VMM saves without reading.
func (v *kvmVcpu) getBlob(name string, req uintptr, size int) ([]byte, error) {
	b := make([]byte, size)
	return b, wrapIoctl(name, ioctlPtr(v.fd, req, unsafe.Pointer(&b[0])))
}

func (v *kvmVcpu) setBlob(name string, req uintptr, b []byte, size int) error {
	if len(b) != size {
		return fmt.Errorf("%s: state is %d bytes, the kernel wants %d", name, len(b), size)
	}
	return wrapIoctl(name, ioctlPtr(v.fd, req, unsafe.Pointer(&b[0])))
}

func (v *kvmVcpu) getMSRs(indices []uint32) ([]kvmMsrEntry, error) {
	if len(indices) == 0 {
		return nil, nil
	}
	buf := make([]byte, kvmMsrsHeaderSize+len(indices)*kvmMsrEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(indices)))
	entries := unsafe.Slice((*kvmMsrEntry)(unsafe.Pointer(&buf[kvmMsrsHeaderSize])), len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	n, err := ioctl(v.fd, ioctlGetMsrs, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSRS: %w", err)
	}
	if int(n) != len(indices) {
		return nil, fmt.Errorf("KVM_GET_MSRS read %d of %d MSRs; MSR %#x was refused", n, len(indices), indices[n])
	}
	return append([]kvmMsrEntry(nil), entries...), nil
}

func (v *kvmVcpu) setMSRs(msrs []kvmMsrEntry) error {
	if len(msrs) == 0 {
		return nil
	}
	buf := make([]byte, kvmMsrsHeaderSize+len(msrs)*kvmMsrEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(msrs)))
	copy(unsafe.Slice((*kvmMsrEntry)(unsafe.Pointer(&buf[kvmMsrsHeaderSize])), len(msrs)), msrs)
	n, err := ioctl(v.fd, ioctlSetMsrs, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	if int(n) != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS wrote %d of %d MSRs; MSR %#x was refused", n, len(msrs), msrs[n].Index)
	}
	return nil
}

func (v *kvmVcpu) setCPUID(entries []kvmCPUIDEntry) error {
	buf := make([]byte, kvmCPUIDHeaderSize+len(entries)*kvmCPUIDEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	if len(entries) > 0 {
		copy(unsafe.Slice((*kvmCPUIDEntry)(unsafe.Pointer(&buf[kvmCPUIDHeaderSize])), len(entries)), entries)
	}
	return wrapIoctl("KVM_SET_CPUID2", ioctlPtr(v.fd, ioctlSetCPUID2, unsafe.Pointer(&buf[0])))
}

func wrapIoctl(name string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
