// Package kvm is the raw KVM API for x86-64 that ftvm's VMM (package vmm)
// and the kvmbox probe (scripts/kvmbox/kvmprobe) are built on: the kernel
// ABI structs (kvm_regs, kvm_sregs, kvm_segment, kvm_dtable,
// kvm_userspace_memory_region, kvm_dirty_log, kvm_msr_entry,
// kvm_cpuid_entry2), the ioctl numbers, exit reasons and kvm_run offsets,
// thin wrappers for the ioctls, the decoding of the dirty log, and the
// long-mode architecture constants and descriptor encodings a VMM needs
// to start a guest directly in 64-bit mode. It knows nothing of ftvm's
// devices, doorbells, memory map or record/replay; that is package vmm.
// It plays the part of Firecracker's kvm-ioctls and vstate crates.
//
// A VMM uses it like this (errors elided):
//
//	sys, _ := kvm.Open()                 // /dev/kvm, API version checked
//	defer sys.Close()
//	vm, _ := sys.CreateVM()
//	defer vm.Close()
//	mem, _ := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
//	defer unix.Munmap(mem)              // after vm.Close and vcpu.Close
//	vm.SetUserMemoryRegion(0, kvm.MemLogDirtyPages, 0, mem)
//	n, _ := sys.VcpuMmapSize()
//	vcpu, _ := vm.CreateVcpu(0, n)
//	defer vcpu.Close()
//	cpuid, _ := sys.SupportedCPUID()
//	vcpu.SetCPUID(cpuid)
//	vcpu.SetSregs(sregs)                // e.g. built with FlatSegment
//	vcpu.SetRegs(kvm.Regs{RIP: entry, RFLAGS: kvm.RFLAGSReserved})
//	for {
//		if err := vcpu.Run(); errors.Is(err, unix.EINTR) {
//			continue // a signal or immediate_exit: look at your queue
//		}
//		switch binary.LittleEndian.Uint32(vcpu.RunArea()[kvm.RunExitReasonOff:]) {
//		case kvm.ExitMMIO: // read RunMMIO*Off of RunArea ...
//		}
//	}
//
// # Lifetime and threads
//
// System, VM and Vcpu each own one file descriptor, released by Close;
// nothing is closed behind the caller's back, and closing the System does
// not close the VMs made from it. Guest memory handed to
// VM.SetUserMemoryRegion is the caller's: it must stay mapped, at the same
// address, until every vCPU and the VM are closed (use mmap'd memory, not a
// Go slice the collector may move or free). Vcpu.RunArea aliases the
// kernel's kvm_run; it is valid until Vcpu.Close and is rewritten by every
// Run.
//
// KVM binds a vCPU to the thread that runs it, and a kick reaches a vCPU in
// KVM_RUN only as a signal to that thread: call Run from one goroutine
// locked to its OS thread (runtime.LockOSThread). Run does not retry EINTR,
// since that is how a signal or SetImmediateExit stops it; every other
// wrapper retries EINTR, which the Go runtime's preemption signals cause.
// SetImmediateExit is the one method safe to call from any goroutine while
// Run is in progress; the rest belong to the vCPU's thread, or to any
// goroutine while no Run is in progress.
//
// # Files
//
// abi_amd64.go holds the ABI (structs, sizes, ioctl numbers, capabilities,
// exit reasons, kvm_run offsets); kvm_amd64_unsafe.go the wrappers and the
// compile-time size checks, the only unsafe code; longmode_amd64.go the
// architecture constants and encodings; dirty.go the dirty-bitmap decoding.
// The package is built without cgo (kvmprobe runs in a static initramfs).
package kvm
