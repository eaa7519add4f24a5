package kvm

// This file is the only place in the package that hands Go pointers to the
// kernel: every KVM ioctl passes the address of a struct laid out as in
// <linux/kvm.h> (abi_amd64.go), which needs unsafe.Pointer. Nothing else in
// the package imports unsafe.

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
	_ [unsafe.Sizeof(Regs{}) - RegsSize]byte
	_ [RegsSize - unsafe.Sizeof(Regs{})]byte
	_ [unsafe.Sizeof(Sregs{}) - SregsSize]byte
	_ [SregsSize - unsafe.Sizeof(Sregs{})]byte
	_ [unsafe.Sizeof(MemRegion{}) - MemRegionSize]byte
	_ [MemRegionSize - unsafe.Sizeof(MemRegion{})]byte
	_ [unsafe.Sizeof(DirtyLog{}) - DirtyLogSize]byte
	_ [DirtyLogSize - unsafe.Sizeof(DirtyLog{})]byte
	_ [unsafe.Sizeof(MsrEntry{}) - MsrEntrySize]byte
	_ [MsrEntrySize - unsafe.Sizeof(MsrEntry{})]byte
	_ [unsafe.Sizeof(CPUIDEntry{}) - CPUIDEntrySize]byte
	_ [CPUIDEntrySize - unsafe.Sizeof(CPUIDEntry{})]byte
	_ [unsafe.Sizeof(Segment{}) - 24]byte
	_ [24 - unsafe.Sizeof(Segment{})]byte
	_ [unsafe.Sizeof(DTable{}) - 16]byte
	_ [16 - unsafe.Sizeof(DTable{})]byte
)

// ioctl retries a call a signal interrupted: the Go runtime signals its
// threads (preemption), and some KVM ioctls (KVM_CREATE_VM among them)
// give up with EINTR when a signal is pending. KVM_RUN goes through
// Vcpu.Run instead, where EINTR is the answer to a kick.
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

// ioctlPtr is ioctl with a pointer argument. The pointer becomes a
// uintptr only in the argument list of unix.Syscall, which keeps what it
// points at in place for the call (go:uintptrkeepalive). Converting it
// any earlier, and passing the uintptr on through a Go call such as
// ioctl, is wrong: a buffer on the goroutine's stack moves when the stack
// grows (the race detector's instrumentation made it grow here), and the
// kernel then wrote KVM_GET_MSR_INDEX_LIST's answer into the old stack
// while the caller read a buffer still zero (a VM saved no MSRs in its
// snapshots).
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) error {
	_, err := ioctlPtrN(fd, req, p)
	return err
}

// ioctlPtrN is ioctlPtr that also returns the ioctl's result.
func ioctlPtrN(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, errno
	}
}

// System is an open /dev/kvm.
type System struct{ fd int }

// Open opens /dev/kvm and checks that it speaks APIVersion. The errors
// say what to do when there is no KVM or no permission.
func Open() (*System, error) {
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
	if v != APIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_API_VERSION answered %d, this VMM speaks %d", v, APIVersion)
	}
	return &System{fd: fd}, nil
}

// Close closes /dev/kvm. VMs created from it stay usable.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension asks KVM_CHECK_EXTENSION of the system: 0 means absent,
// and so does an error (ioctl failure) for the callers that need not tell
// the two apart; CheckExtensionErr tells them apart.
func (s *System) CheckExtension(capability uintptr) int {
	r, _ := checkExtension(s.fd, capability)
	return r
}

// CheckExtensionErr is CheckExtension with the ioctl's error.
func (s *System) CheckExtensionErr(capability uintptr) (int, error) {
	return checkExtension(s.fd, capability)
}

func checkExtension(fd int, capability uintptr) (int, error) {
	r, err := ioctl(fd, ioctlCheckExtension, capability)
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION %d: %w", capability, err)
	}
	return int(r), nil
}

// CreateVM creates a VM; the caller closes it.
func (s *System) CreateVM() (*VM, error) {
	r, err := ioctl(s.fd, ioctlCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(r)}, nil
}

// VcpuMmapSize is the size of a vCPU's struct kvm_run mapping.
func (s *System) VcpuMmapSize() (int, error) {
	r, err := ioctl(s.fd, ioctlGetVcpuMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// SupportedCPUID is KVM_GET_SUPPORTED_CPUID: the CPUID leaves this host's
// KVM can give a guest, which Vcpu.SetCPUID takes as they are.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	buf := make([]byte, CPUIDHeaderSize+MaxCPUIDEntries*CPUIDEntrySize)
	binary.LittleEndian.PutUint32(buf, MaxCPUIDEntries)
	if err := ioctlPtr(s.fd, ioctlGetSupportedCPUID, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	n := binary.LittleEndian.Uint32(buf)
	if n > MaxCPUIDEntries {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID answered %d entries, more than the %d asked for", n, MaxCPUIDEntries)
	}
	entries := make([]CPUIDEntry, n)
	copy(entries, unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[CPUIDHeaderSize])), n))
	return entries, nil
}

// MSRIndexList is KVM_GET_MSR_INDEX_LIST: the MSRs Vcpu.GetMSRs can read.
func (s *System) MSRIndexList() ([]uint32, error) {
	buf := make([]uint32, 1+MaxMSRIndexListEntries)
	buf[0] = MaxMSRIndexListEntries
	if err := ioctlPtr(s.fd, ioctlGetMsrIndexList, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	n := buf[0]
	if n > MaxMSRIndexListEntries {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST answered %d entries, more than %d", n, MaxMSRIndexListEntries)
	}
	return append([]uint32(nil), buf[1:1+n]...), nil
}

// VM is a VM file descriptor.
type VM struct{ fd int }

// Close closes the VM's fd. Its vCPUs keep it alive in the kernel until
// they are closed too; the guest memory its slots point at must stay
// mapped until then.
func (vm *VM) Close() error { return unix.Close(vm.fd) }

// CheckExtension asks KVM_CHECK_EXTENSION of the VM (some capabilities
// are per VM), with the ioctl's error.
func (vm *VM) CheckExtension(capability uintptr) (int, error) {
	return checkExtension(vm.fd, capability)
}

// SetTSSAddr is KVM_SET_TSS_ADDR: the 3-page area below 4 GiB Intel KVM
// needs for its real-mode emulation (AMD ignores it).
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	return nil
}

// SetUserMemoryRegion maps mem as guest-physical [guestPhys,
// guestPhys+len(mem)) in slot. mem must stay mapped (and must not be a Go
// heap slice the collector could move or free) until the slot is removed
// or the VM closed: the kernel keeps its address.
func (vm *VM) SetUserMemoryRegion(slot, flags uint32, guestPhys uint64, mem []byte) error {
	r := MemRegion{
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

// GetDirtyLog fetches and clears KVM's dirty bitmap of a slot made with
// MemLogDirtyPages into bitmap, one bit per 4 KiB page (DirtyPages decodes
// it). bitmap must have a bit for every page of the slot.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	d := DirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	if err := ioctlPtr(vm.fd, ioctlGetDirtyLog, unsafe.Pointer(&d)); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG (slot %d): %w", slot, err)
	}
	return nil
}

// CreateVcpu creates vCPU id and maps its struct kvm_run (mmapSize from
// System.VcpuMmapSize); the caller closes it.
func (vm *VM) CreateVcpu(id, mmapSize int) (*Vcpu, error) {
	r, err := ioctl(vm.fd, ioctlCreateVcpu, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	v := &Vcpu{fd: int(r)}
	if v.run, err = unix.Mmap(v.fd, 0, mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		unix.Close(v.fd)
		return nil, fmt.Errorf("mmap kvm_run: %w", err)
	}
	return v, nil
}

// Vcpu is a vCPU file descriptor and its mmap'd struct kvm_run.
type Vcpu struct {
	fd  int
	run []byte
}

// Close unmaps kvm_run and closes the vCPU. RunArea's slice is invalid
// after it.
func (v *Vcpu) Close() error {
	if v.run != nil {
		unix.Munmap(v.run)
		v.run = nil
	}
	return unix.Close(v.fd)
}

// RunArea is the mmap'd struct kvm_run (read it with the Run*Off offsets).
// It aliases kernel memory that the next Run overwrites.
func (v *Vcpu) RunArea() []byte { return v.run }

// Run enters the guest (KVM_RUN) until its next exit, whose reason is at
// RunExitReasonOff of RunArea. It returns unix.EINTR when a signal or
// immediate_exit stopped it before or during guest execution; it does not
// retry, since EINTR is how a kick reaches the vCPU thread.
func (v *Vcpu) Run() error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// SetImmediateExit sets or clears kvm_run.immediate_exit. It may be called
// from any goroutine: the store is atomic on the 32-bit word holding the
// byte (its neighbour request_interrupt_window must be unused).
func (v *Vcpu) SetImmediateExit(on bool) {
	var val uint32
	if on {
		val = 1 << (8 * RunImmediateExitOff)
	}
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&v.run[0])), val)
}

// GetRegs is KVM_GET_REGS.
func (v *Vcpu) GetRegs() (Regs, error) {
	var r Regs
	err := ioctlPtr(v.fd, ioctlGetRegs, unsafe.Pointer(&r))
	return r, wrapIoctl("KVM_GET_REGS", err)
}

// SetRegs is KVM_SET_REGS.
func (v *Vcpu) SetRegs(r Regs) error {
	return wrapIoctl("KVM_SET_REGS", ioctlPtr(v.fd, ioctlSetRegs, unsafe.Pointer(&r)))
}

// GetSregs is KVM_GET_SREGS.
func (v *Vcpu) GetSregs() (Sregs, error) {
	var s Sregs
	err := ioctlPtr(v.fd, ioctlGetSregs, unsafe.Pointer(&s))
	return s, wrapIoctl("KVM_GET_SREGS", err)
}

// SetSregs is KVM_SET_SREGS.
func (v *Vcpu) SetSregs(s Sregs) error {
	return wrapIoctl("KVM_SET_SREGS", ioctlPtr(v.fd, ioctlSetSregs, unsafe.Pointer(&s)))
}

// GetBlob and SetBlob move an opaque fixed-size struct (kvm_fpu,
// kvm_xsave, kvm_xcrs, kvm_vcpu_events) that a VMM saves without reading:
// req is one of the Ioctl* numbers, size its struct's size, name the
// ioctl's name for the error.
func (v *Vcpu) GetBlob(name string, req uintptr, size int) ([]byte, error) {
	b := make([]byte, size)
	return b, wrapIoctl(name, ioctlPtr(v.fd, req, unsafe.Pointer(&b[0])))
}

// SetBlob: see GetBlob. It refuses a blob of the wrong size.
func (v *Vcpu) SetBlob(name string, req uintptr, b []byte, size int) error {
	if len(b) != size {
		return fmt.Errorf("%s: state is %d bytes, the kernel wants %d", name, len(b), size)
	}
	return wrapIoctl(name, ioctlPtr(v.fd, req, unsafe.Pointer(&b[0])))
}

// GetMSRs is KVM_GET_MSRS of the listed MSRs; it fails if KVM refuses one.
func (v *Vcpu) GetMSRs(indices []uint32) ([]MsrEntry, error) {
	if len(indices) == 0 {
		return nil, nil
	}
	buf := make([]byte, MsrsHeaderSize+len(indices)*MsrEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(indices)))
	entries := unsafe.Slice((*MsrEntry)(unsafe.Pointer(&buf[MsrsHeaderSize])), len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	n, err := ioctlPtrN(v.fd, ioctlGetMsrs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSRS: %w", err)
	}
	if int(n) != len(indices) {
		return nil, fmt.Errorf("KVM_GET_MSRS read %d of %d MSRs; MSR %#x was refused", n, len(indices), indices[n])
	}
	return append([]MsrEntry(nil), entries...), nil
}

// SetMSRs is KVM_SET_MSRS; it fails if KVM refuses one.
func (v *Vcpu) SetMSRs(msrs []MsrEntry) error {
	if len(msrs) == 0 {
		return nil
	}
	buf := make([]byte, MsrsHeaderSize+len(msrs)*MsrEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(msrs)))
	copy(unsafe.Slice((*MsrEntry)(unsafe.Pointer(&buf[MsrsHeaderSize])), len(msrs)), msrs)
	n, err := ioctlPtrN(v.fd, ioctlSetMsrs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	if int(n) != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS wrote %d of %d MSRs; MSR %#x was refused", n, len(msrs), msrs[n].Index)
	}
	return nil
}

// SetCPUID is KVM_SET_CPUID2.
func (v *Vcpu) SetCPUID(entries []CPUIDEntry) error {
	buf := make([]byte, CPUIDHeaderSize+len(entries)*CPUIDEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	if len(entries) > 0 {
		copy(unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[CPUIDHeaderSize])), len(entries)), entries)
	}
	return wrapIoctl("KVM_SET_CPUID2", ioctlPtr(v.fd, ioctlSetCPUID2, unsafe.Pointer(&buf[0])))
}

func wrapIoctl(name string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
