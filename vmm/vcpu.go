package vmm

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// Regs, Sregs, Segment and DTable are the KVM structs of the same names
// (package kvm), kept under these names because vmm's API (VMError,
// VCPUState) carries them.
type (
	Regs    = kvm.Regs
	Sregs   = kvm.Sregs
	Segment = kvm.Segment
	DTable  = kvm.DTable
)

// VMError says why a VM stopped: the exit it stopped at, the port, the
// registers at that point and the cause.
type VMError struct {
	Exit    uint64 // index the failing exit had (= exits handled before it)
	Port    uint16 // the port of the failing exit's doorbell (0 when not a device exit)
	Regs    Regs
	RegsErr error // set when the registers could not be read
	Err     error
}

func (e *VMError) Error() string {
	where := fmt.Sprintf("VM stopped at exit %d", e.Exit)
	if e.Port != 0 {
		where += fmt.Sprintf(" (port %#x)", e.Port)
	}
	r := e.Regs
	regs := fmt.Sprintf("rip=%#x rsp=%#x rax=%#x rbx=%#x rcx=%#x rdx=%#x rsi=%#x rdi=%#x rflags=%#x", r.RIP, r.RSP, r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RFLAGS)
	if e.RegsErr != nil {
		regs = "registers unreadable: " + e.RegsErr.Error()
	}
	return fmt.Sprintf("%s: %v [%s]", where, e.Err, regs)
}

func (e *VMError) Unwrap() error { return e.Err }

// loop is the vCPU thread: it creates the vCPU, then runs it and serves
// commands until Close.
func (m *Machine) loop(ready chan<- error, setup func() error) {
	defer close(m.loopDone)
	// A pause reaches a vCPU inside KVM_RUN only as a signal to the thread
	// running it (kick uses tgkill on this thread's id), and KVM binds a
	// vCPU to the task that runs it (moving it costs the kernel an RCU
	// synchronisation). So this goroutine keeps one OS thread for its whole
	// life; it never unlocks, and the thread exits with the goroutine.
	runtime.LockOSThread()
	m.tid.Store(int32(unix.Gettid()))
	if err := setup(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for {
		if m.Status().State == Running {
			select {
			case c := <-m.cmds:
				if m.handle(c) {
					return
				}
			default:
				m.step()
			}
			continue
		}
		if m.handle(<-m.cmds) {
			return
		}
	}
}

// handle serves one command; it reports whether the loop should end.
func (m *Machine) handle(c command) (stop bool) {
	state := m.Status().State
	var err error
	switch c.kind {
	case cmdClose:
		c.reply <- nil
		return true
	case cmdPause:
		if state == Running {
			m.settle()
		}
	case cmdResume:
		switch {
		case state == Running:
			m.pauseAt = c.pauseAt
		case state != Paused:
			err = fmt.Errorf("cannot resume a %s VM", state)
		case m.fuzzy:
			err = errResumeLiveRestored
		case m.unclean:
			err = errResumeUnclean
		case c.pauseAt != 0 && c.pauseAt <= m.disp.next:
			err = fmt.Errorf("cannot pause after %d exits: the VM has already handled %d", c.pauseAt, m.disp.next)
		default:
			m.pauseAt = c.pauseAt
			m.setStatus(func(s *Status) { s.State = Running })
		}
	case cmdDo:
		if state == Running {
			err = errors.New("the VM is running: pause it first")
		} else {
			err = c.fn()
		}
	}
	c.reply <- err
	return false
}

// settle brings a running vCPU to a clean point and marks it Paused. If the
// last exit was a doorbell store, KVM may finish the instruction only on
// the next KVM_RUN, and that pending completion is in no state userspace
// can save; KVM_RUN with immediate_exit set completes it and returns EINTR
// without running guest code (api.rst, KVM_RUN).
func (m *Machine) settle() {
	if err := m.completeIO(); err != nil {
		m.fail(0, err)
		return
	}
	select { // a kick that found the vCPU in a device call is spent
	case <-m.interrupt:
	default:
	}
	m.setStatus(func(s *Status) { s.State = Paused })
}

func (m *Machine) completeIO() error {
	if !m.ioPending {
		return nil
	}
	m.vcpu.SetImmediateExit(true)
	err := m.vcpu.Run()
	m.vcpu.SetImmediateExit(false)
	m.ioPending = false
	if err == nil {
		return fmt.Errorf("KVM_RUN with immediate_exit entered the guest (exit reason %s)", kvm.ExitReasonName(le.Uint32(m.vcpu.RunArea()[kvm.RunExitReasonOff:])))
	}
	if !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("completing the last I/O exit: KVM_RUN: %w", err)
	}
	return nil
}

// step runs the guest until its next exit and handles that exit. Every
// exit reason is decided here, in one switch.
func (m *Machine) step() {
	err := m.vcpu.Run()
	m.ioPending = false
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			// A kick or a stray signal: look at the command queue.
			m.vcpu.SetImmediateExit(false)
			return
		}
		m.fail(0, fmt.Errorf("KVM_RUN: %w", err))
		return
	}
	run := m.vcpu.RunArea()
	switch reason := le.Uint32(run[kvm.RunExitReasonOff:]); reason {
	case kvm.ExitMMIO:
		m.handleMMIOExit()
	case kvm.ExitIntr:
		m.vcpu.SetImmediateExit(false)
	case kvm.ExitIO:
		// IOPL is 0, so a CPL3 guest's port access faults before it gets
		// here; a host that lets it through still must not see a device.
		port := le.Uint16(run[kvm.RunIOPortOff:])
		m.fail(port, fmt.Errorf("guest port I/O to %#x: devices are reached only through their doorbell (ftvm.h)", port))
	case kvm.ExitShutdown:
		m.fail(0, errors.New("the guest triple-faulted: it raised an exception (a bad address, a divide by zero, a privileged instruction or port I/O at CPL3) and there is no IDT"))
	case kvm.ExitFailEntry:
		m.fail(0, fmt.Errorf("VM entry failed, hardware reason %#x (the vCPU state is invalid)", le.Uint64(run[kvm.RunFailReasonOff:])))
	case kvm.ExitInternalError:
		m.fail(0, fmt.Errorf("KVM internal error, suberror %d", le.Uint32(run[kvm.RunFailReasonOff:])))
	default:
		m.fail(0, fmt.Errorf("unexpected exit reason %s", kvm.ExitReasonName(reason)))
	}
}

// handleMMIOExit handles an access to guest-physical memory that no slot
// backs: a doorbell store (a device request), or a guest bug.
func (m *Machine) handleMMIOExit() {
	run := m.vcpu.RunArea()
	addr := le.Uint64(run[kvm.RunMMIOAddrOff:])
	size := le.Uint32(run[kvm.RunMMIOLenOff:])
	write := run[kvm.RunMMIOWriteOff] != 0
	if addr < DoorbellBase || addr >= DoorbellBase+kvm.HugePageBytes {
		// Unreachable while the page tables map only memory and the
		// doorbell page (a wild pointer faults first); nothing to answer.
		m.fail(0, fmt.Errorf("guest access to guest-physical address %#x (%d bytes, write=%v) outside guest memory (a wild pointer?)", addr, size, write))
		return
	}
	// Offsets past 0xffff name no port; handleOut refuses them by number.
	port := uint16(min(addr-DoorbellBase, 0xffff))
	if size > 8 {
		m.fail(port, fmt.Errorf("KVM reported an MMIO access of %d bytes; kvm_run holds at most 8", size))
		return
	}
	data := run[kvm.RunMMIODataOff : kvm.RunMMIODataOff+8]
	if !write {
		// A guest bug, but not one to stop the VM for: the load reads
		// all ones (as from an absent device) and the guest goes on.
		for i := range data[:size] {
			data[i] = 0xff
		}
		dev, _ := deviceForPort(port)
		m.disp.refuse(&GuestError{Exit: m.disp.next, Port: port, Device: dev, Skipped: true,
			Reason: fmt.Sprintf("load of %d bytes from doorbell %#x: devices take requests only by a store (it reads all ones)", size, addr)}, 0)
		m.ioPending = true
		return
	}
	var value uint32
	switch size {
	case 1:
		value = uint32(data[0])
	case 2:
		value = uint32(le.Uint16(data))
	default:
		value = le.Uint32(data)
	}
	if err := m.disp.handleOut(port, uint8(size), value); err != nil {
		m.fail(port, err)
		return
	}
	m.ioPending = true
	switch {
	case m.disp.halted:
		code := m.disp.exitCode
		m.setStatus(func(s *Status) { s.State = Halted; s.ExitCode = code })
	case m.pauseAt != 0 && m.disp.next >= m.pauseAt:
		m.pauseAt = 0
		m.settle()
	}
}

// fail stops the VM with an error naming the exit and the registers.
func (m *Machine) fail(port uint16, err error) {
	ve := &VMError{Exit: m.disp.next, Port: port, Err: err}
	ve.Regs, ve.RegsErr = m.vcpu.GetRegs()
	m.setStatus(func(s *Status) { s.State = Failed; s.Err = ve })
}
