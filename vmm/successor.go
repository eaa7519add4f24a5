package vmm

import (
	"sync"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// successorPrep is the KVM VM and vCPU a VM keeps ready for its
// Successor, so that a resync's pause does not create them. Creating
// them (KVM_CREATE_VM, the TSS, the memory slot over the guest's memory
// with dirty logging, KVM_CREATE_VCPU and its CPUID) made the Successor
// step of a 1,000-page resync's pause 0.6 to 1.1 ms at p50 on these
// hosts, and up to 8.7 ms at worst on 1 GiB, whose slot's metadata the
// kernel allocates for every page; 0.19 to 0.31 ms without. So they are made
// while the VM runs (AtLowPriority, on a CPU the guest leaves idle, from
// Resume: prepareAhead) once it has restored a snapshot (it has a base
// from then on, so a resync may ask for its successor), and the pause
// only loads the registers into them.
//
// KVM allows it: a VM's memory slot holds only the user address of the
// memory, which any number of VMs of one process may map at once (a
// successor's slot always overlapped its predecessor's while the latter
// was torn down). The prepared VM never runs, so its MMU maps nothing
// and its dirty log stays empty until its vCPU first runs as the
// successor; the predecessor's log is fetched before it is closed, as
// with a VM made in the pause. A vCPU may be created on any thread of
// the process: KVM binds it to the task of its first KVM_RUN, which is
// the successor's vCPU thread.
//
// One successorPrep serves a VM and all its successors (they share its
// memory, /dev/kvm handle and CPUID): each takes the prepared pair, if
// one is ready, and has the next made. It is closed with the last of
// them; the memory and the /dev/kvm handle, which a preparation under
// way uses, are released when it ends.
type successorPrep struct {
	mu        sync.Mutex
	vm        *kvm.VM   // ready, with its slot (nil: none ready)
	vcpu      *kvm.Vcpu // ready, with its CPUID
	preparing chan struct{}
	closed    bool
}

// prepareSuccessorOff is for tests and benchmarks: Successor creates its
// VM and vCPU in the pause, as it did before they were prepared.
var prepareSuccessorOff = false

// preparedSlotWithoutDirtyLog is a planted bug for the tests, which must
// catch it: the prepared VM's memory slot logs no dirty pages.
var preparedSlotWithoutDirtyLog = false

// prepare starts making a VM and vCPU for the next successor of src in
// the background, unless a pair is ready or being made. It does not wait.
// src's memory, /dev/kvm handle and CPUID are set and do not change.
func (p *successorPrep) prepare(src *Machine) {
	if prepareSuccessorOff {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.preparing != nil || p.vm != nil || src.kvm == nil || src.mem == nil || src.cpuid == nil {
		return
	}
	done := make(chan struct{})
	p.preparing = done
	sys, mem, cpuid := src.kvm, src.mem, src.cpuid
	go func() {
		defer close(done)
		var vm *kvm.VM
		var vcpu *kvm.Vcpu
		var err error
		AtLowPriority(func() { vm, vcpu, err = makeSuccessorVM(sys, mem, cpuid) })
		p.mu.Lock()
		defer p.mu.Unlock()
		p.preparing = nil
		if err != nil {
			// The successor makes its own in its pause, as without this.
			return
		}
		if p.closed {
			closeVM(vm, vcpu)
			return
		}
		p.vm, p.vcpu = vm, vcpu
	}()
}

// take hands out the prepared VM and vCPU (from now on the caller's), or
// nils when none is ready.
func (p *successorPrep) take() (*kvm.VM, *kvm.Vcpu) {
	p.mu.Lock()
	defer p.mu.Unlock()
	vm, vcpu := p.vm, p.vcpu
	p.vm, p.vcpu = nil, nil
	return vm, vcpu
}

// ready says whether a prepared pair waits (for tests and benchmarks).
func (p *successorPrep) ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vm != nil
}

// close closes what is ready, and makes no more; then it runs free,
// which releases what a preparation uses (the memory, the /dev/kvm
// handle): at once, or when the preparation under way ends. It does not
// wait for that one, which may take a while at idle priority: a VM is
// closed inside a pause too (a full resync retires the old VM).
func (p *successorPrep) close(free func()) {
	p.mu.Lock()
	p.closed = true
	vm, vcpu := p.vm, p.vcpu
	p.vm, p.vcpu = nil, nil
	done := p.preparing
	p.mu.Unlock()
	if vm != nil {
		closeVM(vm, vcpu)
	}
	if done == nil {
		free()
		return
	}
	go func() {
		<-done
		free()
	}()
}

// makeSuccessorVM makes what newSuccessor would: a VM with the TSS and
// one memory slot over mem with dirty logging, and its vCPU 0 with cpuid.
func makeSuccessorVM(sys *kvm.System, mem *Memory, cpuid []kvm.CPUIDEntry) (*kvm.VM, *kvm.Vcpu, error) {
	vm, err := sys.CreateVM()
	if err != nil {
		return nil, nil, err
	}
	fail := func(vcpu *kvm.Vcpu, err error) (*kvm.VM, *kvm.Vcpu, error) {
		closeVM(vm, vcpu)
		return nil, nil, err
	}
	if sys.CheckExtension(kvm.CapSetTSSAddr) > 0 {
		if err := vm.SetTSSAddr(kvmTSSAddr); err != nil {
			return fail(nil, err)
		}
	}
	flags := uint32(kvm.MemLogDirtyPages)
	if preparedSlotWithoutDirtyLog {
		flags = 0
	}
	if err := vm.SetUserMemoryRegion(0, flags, 0, mem.buf); err != nil {
		return fail(nil, err)
	}
	size, err := sys.VcpuMmapSize()
	if err != nil {
		return fail(nil, err)
	}
	vcpu, err := vm.CreateVcpu(0, size)
	if err != nil {
		return fail(nil, err)
	}
	if err := vcpu.SetCPUID(cpuid); err != nil {
		return fail(vcpu, err)
	}
	// kvm_run is faulted in here (written), not at the successor's
	// first run.
	vcpu.SetImmediateExit(false)
	return vm, vcpu, nil
}

// closeVM closes a vCPU (if any) and its VM.
func closeVM(vm *kvm.VM, vcpu *kvm.Vcpu) {
	if vcpu != nil {
		vcpu.Close()
	}
	if vm != nil {
		vm.Close()
	}
}
