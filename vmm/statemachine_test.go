package vmm

import (
	"cmp"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// scriptedVcpu stands in for KVM in unit tests of the run-state machine
// (Machine.loop, its commands, pause points, kicks), so that they run under
// the race detector on machines without /dev/kvm. Each KVM_RUN returns the
// next scripted exit; the real vCPU is tested by the KVM tests.
type scriptedVcpu struct {
	run       []byte
	immediate atomic.Bool
	mu        sync.Mutex
	steps     []scriptStep
	regs      Regs
	sregs     Sregs
	ioPending bool
	completed int // doorbell stores completed (RIP advanced past them)
}

// scriptStep is a doorbell store of value for port, or (spin) a guest that computes
// without exits until it is kicked.
type scriptStep struct {
	port  uint16
	value uint32
	spin  bool
	// accessBytes is the MMIO access's width when not 4 (a store wider
	// than kvm_run can hold fails the VM).
	accessBytes uint32
}

func newScriptedVcpu(steps ...scriptStep) *scriptedVcpu {
	return &scriptedVcpu{run: make([]byte, 4096), steps: steps}
}

func (v *scriptedVcpu) RunArea() []byte { return v.run }

func (v *scriptedVcpu) SetImmediateExit(on bool) { v.immediate.Store(on) }

const scriptSpinPoll = 100 * time.Microsecond

func (v *scriptedVcpu) Run() error {
	v.mu.Lock()
	if v.ioPending { // KVM completes the last doorbell store first
		v.ioPending = false
		v.completed++
		v.regs.RIP++
	}
	v.mu.Unlock()
	if v.immediate.Load() {
		return unix.EINTR
	}
	v.mu.Lock()
	if len(v.steps) == 0 {
		v.mu.Unlock()
		le.PutUint32(v.run[kvm.RunExitReasonOff:], kvm.ExitShutdown)
		return nil
	}
	s := v.steps[0]
	if !s.spin {
		v.steps = v.steps[1:]
	}
	v.mu.Unlock()
	if s.spin {
		for !v.immediate.Load() {
			time.Sleep(scriptSpinPoll)
		}
		return unix.EINTR
	}
	le.PutUint32(v.run[kvm.RunExitReasonOff:], kvm.ExitMMIO)
	le.PutUint64(v.run[kvm.RunMMIOAddrOff:], DoorbellBase+uint64(s.port))
	le.PutUint32(v.run[kvm.RunMMIODataOff:], s.value)
	le.PutUint32(v.run[kvm.RunMMIOLenOff:], cmp.Or(s.accessBytes, 4))
	v.run[kvm.RunMMIOWriteOff] = 1
	v.mu.Lock()
	v.ioPending = true
	v.mu.Unlock()
	return nil
}

func (v *scriptedVcpu) GetRegs() (Regs, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.regs, nil
}
func (v *scriptedVcpu) SetRegs(r Regs) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.regs = r
	return nil
}
func (v *scriptedVcpu) GetSregs() (Sregs, error) { return v.sregs, nil }
func (v *scriptedVcpu) SetSregs(s Sregs) error   { v.sregs = s; return nil }
func (v *scriptedVcpu) GetBlob(_ string, _ uintptr, size int) ([]byte, error) {
	return make([]byte, size), nil
}
func (v *scriptedVcpu) SetBlob(string, uintptr, []byte, int) error     { return nil }
func (v *scriptedVcpu) GetMSRs(idx []uint32) ([]kvm.MsrEntry, error)   { return nil, nil }
func (v *scriptedVcpu) SetMSRs([]kvm.MsrEntry) error                   { return nil }
func (v *scriptedVcpu) GetDirtyLog(slot uint32, bitmap []uint64) error { return nil }
func (v *scriptedVcpu) pendingCompleted() (pending bool, completed int, rip uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ioPending, v.completed, v.regs.RIP
}

// Request structs the scripts point at.
const (
	scriptClockReq = 0x10000
	scriptHaltReq  = 0x10040
)

func newScriptedMachine(t *testing.T, v *scriptedVcpu) *Machine {
	t.Helper()
	return newScriptedMachineWith(t, v, Config{})
}

// newScriptedMachineWith is newScriptedMachine with devices from cfg (its
// memory size is always memSizeMinBytes).
func newScriptedMachineWith(t *testing.T, v *scriptedVcpu, cfg Config) *Machine {
	t.Helper()
	cfg.MemSizeBytes = memSizeMinBytes
	m, err := newMachine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.mem = newMemory(make([]byte, memSizeMinBytes))
	if err := m.initDevices(); err != nil {
		t.Fatal(err)
	}
	m.dirty = v
	r := make([]byte, requestStructBytes)
	le.PutUint32(r[reqOpOff:], OpClockNow)
	m.mem.Write(scriptClockReq, r)
	le.PutUint32(r[reqOpOff:], OpHaltExit)
	le.PutUint64(r[reqArgOff:], 5)
	m.mem.Write(scriptHaltReq, r)
	if err := m.start(func() error { m.vcpu = v; return nil }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func clockSteps(n int) []scriptStep {
	s := make([]scriptStep, n)
	for i := range s {
		s[i] = scriptStep{port: PortClock, value: scriptClockReq}
	}
	return s
}

func TestRunStatePauseAtExitCompletesTheIO(t *testing.T) {
	v := newScriptedVcpu(append(clockSteps(10), scriptStep{port: PortHalt, value: scriptHaltReq})...)
	m := newScriptedMachine(t, v)
	st, err := m.Run(4)
	if err != nil || st.State != Paused || st.Exits != 4 {
		t.Fatalf("Run(4): %+v %v", st, err)
	}
	// The clean point: the 4th OUT was completed before the pause.
	if pending, done, _ := v.pendingCompleted(); pending || done != 4 {
		t.Fatalf("at the pause: I/O pending %v, %d completed; want none pending, 4 completed", pending, done)
	}
	if err := m.Resume(3); err == nil || !strings.Contains(err.Error(), "already handled 4") {
		t.Fatalf("Resume to a point behind: %v", err)
	}
	st, err = m.Run(0)
	if err != nil || st.State != Halted || st.ExitCode != 5 || st.Exits != 11 {
		t.Fatalf("run to the end: %+v %v", st, err)
	}
	if err := m.Resume(0); err == nil || !strings.Contains(err.Error(), "halted") {
		t.Fatalf("Resume of a halted VM: %v", err)
	}
}

func TestRunStatePauseKicksASpinningGuest(t *testing.T) {
	v := newScriptedVcpu(scriptStep{port: PortClock, value: scriptClockReq}, scriptStep{spin: true})
	m := newScriptedMachine(t, v)
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	// While it runs, inspection is refused with a reason.
	if _, err := m.Snapshot(Full); err == nil || !strings.Contains(err.Error(), "pause it first") {
		t.Fatalf("Snapshot while running: %v", err)
	}
	for i := 0; i < 3; i++ {
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		if st := m.Status(); st.State != Paused || st.Exits != 1 {
			t.Fatalf("after Pause: %+v", st)
		}
		if err := m.Resume(0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRunStateCloseWhileRunning(t *testing.T) {
	v := newScriptedVcpu(scriptStep{spin: true})
	m := newScriptedMachine(t, v)
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	m.Close()
	<-done
	if st := m.Status(); st.State != Closed {
		t.Fatalf("after Close: %v", st.State)
	}
	if err := m.Resume(0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Resume after Close: %v", err)
	}
}

func TestRunStateFailureNamesTheExit(t *testing.T) {
	// A store to a port with no device no longer fails the VM (the guest
	// gets StatusNoDev and goes on): an MMIO access wider than kvm_run
	// holds still does, at the clock's doorbell.
	v := newScriptedVcpu(append(clockSteps(3), scriptStep{port: 0x42, value: scriptClockReq}, scriptStep{port: PortClock, value: scriptClockReq, accessBytes: 16})...)
	m := newScriptedMachine(t, v)
	v.SetRegs(Regs{RIP: 0x401234})
	st, err := m.Run(0)
	var ve *VMError
	if st.State != Failed || !errors.As(err, &ve) || ve.Exit != 3 || ve.Port != PortClock || ve.Regs.RIP != 0x401238 {
		t.Fatalf("status %+v err %v; want Failed at exit 3, port %#x, with the registers", st, err, PortClock)
	}
	if st.GuestErrors != 1 {
		t.Fatalf("%d guest errors counted, want 1 (the store to port 0x42)", st.GuestErrors)
	}
	if !strings.Contains(err.Error(), "rip=0x401238") {
		t.Fatalf("error %q does not show the registers", err)
	}
}

func TestRunStateSnapshotChain(t *testing.T) {
	v := newScriptedVcpu(clockSteps(20)...)
	m := newScriptedMachine(t, v)
	if _, err := m.Snapshot(Incremental); err == nil || !strings.Contains(err.Error(), "full snapshot first") {
		t.Fatalf("increment without a base: %v", err)
	}
	if _, err := m.Run(2); err != nil {
		t.Fatal(err)
	}
	full, err := m.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Run(5); err != nil {
		t.Fatal(err)
	}
	inc, err := m.Snapshot(Incremental)
	if err != nil {
		t.Fatal(err)
	}
	// The clock answers were written by the VMM, which KVM's dirty log
	// never sees: the increment must carry that page all the same.
	if inc.Seq != 1 || inc.BaseSeq != 0 || inc.NextExit != 5 || len(inc.PageNumbers) != 1 || inc.PageNumbers[0] != scriptClockReq/PageBytes {
		t.Fatalf("increment seq %d base %d next %d pages %v", inc.Seq, inc.BaseSeq, inc.NextExit, inc.PageNumbers)
	}
	other := newScriptedMachine(t, newScriptedVcpu(clockSteps(20)...))
	if err := other.Restore(inc); err == nil || !strings.Contains(err.Error(), "applies on snapshot 0") {
		t.Fatalf("increment before its base: %v", err)
	}
	if err := other.Restore(full); err != nil {
		t.Fatal(err)
	}
	if err := other.Restore(inc); err != nil {
		t.Fatal(err)
	}
	if st := other.Status(); st.Exits != 5 || st.State != Paused {
		t.Fatalf("restored status %+v", st)
	}
	a, _ := m.ReadMemory(0, memSizeMinBytes)
	b, _ := other.ReadMemory(0, memSizeMinBytes)
	if firstDiff(a, b) != len(a) {
		t.Fatalf("restored memory differs at %#x", firstDiff(a, b))
	}
}
