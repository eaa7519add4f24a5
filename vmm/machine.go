package vmm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// Config describes one VM.
type Config struct {
	// MemSizeBytes is the guest's RAM: a multiple of 2 MiB from 8 MiB to
	// 2 GiB. Zero means DefaultMemSizeBytes.
	MemSizeBytes uint64
	// Console receives the guest's console output (nil discards it).
	Console io.Writer
	// NIC is the network backend (nil: a NIC connected to nothing).
	NIC NICBackend
	// MAC is the NIC's address (zero: DefaultMAC).
	MAC [6]byte
	// Disk backs the block device (nil: a disk of 0 sectors). The VM
	// does not close it. Snapshots carry its contents, and a restore
	// rewrites it, so that a replica with its own copy of the disk
	// (separate storage) ends up with the same one.
	Disk *os.File
	// DiskSharedStorage says that Disk is the very file the replica's VM
	// uses too (shared storage): snapshots then omit the disk's contents
	// and a restore leaves the disk alone, since rewriting it would
	// clobber what the other VM writes. Both VMs of a snapshot must be
	// configured alike; a restore refuses a mix.
	DiskSharedStorage bool
	// Entropy is the entropy device's source (nil: crypto/rand).
	Entropy io.Reader
	// Hook sees every device exit (nil: LiveHook).
	Hook ExitHook
	// Cmdline is copied into the boot info (at most 255 bytes).
	Cmdline string
	// Logger receives the VMM's reports of guest requests it refused
	// (GuestError), at most one line per guestErrorLogInterval. Nil:
	// slog.Default().
	Logger *slog.Logger
}

// DefaultMemSizeBytes is the guest RAM when Config.MemSizeBytes is zero.
const DefaultMemSizeBytes = 64 << 20

// DefaultMAC is a locally administered unicast address.
var DefaultMAC = [6]byte{0x02, 0x66, 0x74, 0x76, 0x6d, 0x01}

// State is where a VM is in its life.
type State int

// The run states. A VM starts Paused; Resume makes it Running; it becomes
// Paused again at a clean point (after a Pause, or at the exit count given
// to Resume), Halted when the guest exits, Failed when it stopped with an
// error, and Closed after Close.
const (
	Paused State = iota
	Running
	Halted
	Failed
	Closed
)

var stateNames = [...]string{"paused", "running", "halted", "failed", "closed"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Status is a snapshot of a VM's run state.
type Status struct {
	State    State
	Exits    uint64 // device exits handled (the next exit's index), as of the last state change
	ExitCode uint64 // the guest's exit code, when Halted
	Err      error  // why it stopped, when Failed
	// GuestErrors counts the requests refused as guest bugs (GuestError)
	// since the VM was created: current whenever Status is called.
	GuestErrors uint64
}

// ErrClosed is returned by calls on a closed Machine.
var ErrClosed = errors.New("VM is closed")

// Machine is one VM with one vCPU (the state types allow more). All methods
// may be called from any goroutine; the vCPU itself lives on one locked OS
// thread that the methods drive by messages.
type Machine struct {
	cfg   Config
	kvm   *kvm.System
	vm    *kvm.VM
	kvcpu *kvm.Vcpu // the KVM vCPU behind vcpu, for release
	vcpu  vcpuOps   // set on the vCPU thread before New returns
	dirty dirtyLogger
	mem   *Memory
	disp  *dispatcher
	nic   *nicDevice
	block *blockDevice

	msrIndices []uint32 // snapshotMSRs that this host's KVM knows
	// cpuid is what createVcpu gave the vCPU (KVM_GET_SUPPORTED_CPUID):
	// a successor's vCPU gets the same without asking KVM again, which
	// took half a millisecond of a resync's pause.
	cpuid    []kvm.CPUIDEntry
	hasXsave bool
	hasXcrs  bool

	cmds      chan command
	interrupt chan struct{} // wakes a blocking device call (NIC WAIT)
	tid       atomic.Int32  // the vCPU thread, for kicks
	loopDone  chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex // guards status and changed
	status  Status
	changed chan struct{} // closed and replaced on every status change

	// Owned by the vCPU thread:
	ioPending bool   // a doorbell exit was handled but KVM may not have completed it
	pauseAt   uint64 // pause when this many exits have been handled (0: never)
	freshMem  bool   // memory has never been written: a full restore needs no clearing

	// snapMu is held by every snapshot and restore, for its whole
	// length: by Snapshot and Restore on the vCPU thread and by
	// SnapshotLive on its caller's goroutine while the vCPU runs. It
	// orders them in the chain, keeps the dirty bits they consume from
	// being taken twice at once, and keeps Close from unmapping the
	// memory under a live copy.
	snapMu     sync.Mutex
	haveBase   bool     // snapMu: chainID/seq name the snapshot this VM's memory is at
	chainID    uint64   // snapMu
	seq        uint64   // snapMu
	dirtyWords []uint64 // snapMu: the dirty bitmap a snapshot builds
	// fuzzy says the last snapshot restored here is live: registers and
	// devices are not the guest's, so the VM may not run or be
	// snapshotted. Written on the vCPU thread with snapMu held; read
	// there freely, elsewhere under snapMu.
	fuzzy bool
	// unclean says this VM succeeds one that failed mid-exit (Successor):
	// its registers are not at a clean point, so it may not run or be
	// snapshotted until a restore. Accessed as fuzzy is.
	unclean bool
	// dirtyAcc holds KVM dirty bits fetched but not consumed: by a peek
	// (DirtySinceBase) or from the VM this one succeeds. The next
	// snapshot ORs them in; a restore clears them. snapMu.
	dirtyAcc []uint64
	// moved says the memory, the NIC and the /dev/kvm handle belong to a
	// successor (resync.go): release closes only this VM's vCPU and VM.
	// snapMu.
	moved bool
	// spare is the buffer kept ready for a resync increment's encoding
	// (resync.go).
	spare spareBuffer
	// prep is the VM and vCPU kept ready for a Successor (successor.go),
	// shared with the successors.
	prep *successorPrep
	// restored says the VM (or one it succeeds) restored a snapshot that
	// is not live: a resync may ask for its successor.
	restored atomic.Bool
}

type cmdKind int

// kickRetryInterval is how often a waiting command kicks a running vCPU
// again.
const kickRetryInterval = 5 * time.Millisecond

// cmdQueueMax bounds the commands waiting for the vCPU thread.
const cmdQueueMax = 16

const (
	cmdResume cmdKind = iota
	cmdPause
	cmdDo
	cmdClose
)

type command struct {
	kind    cmdKind
	pauseAt uint64
	fn      func() error // cmdDo: runs on the vCPU thread while not running
	reply   chan error
}

// New creates a VM: it opens /dev/kvm, creates the VM, its memory (one
// slot with dirty logging) and its vCPU on a dedicated thread. The VM is
// Paused and empty: Load a program or Restore a snapshot, then Resume.
func New(cfg Config) (*Machine, error) {
	m, err := newMachine(cfg)
	if err != nil {
		return nil, err
	}
	if err := m.open(); err != nil {
		m.release()
		return nil, err
	}
	if err := m.start(m.createVcpu); err != nil {
		m.release()
		return nil, err
	}
	return m, nil
}

// vcpuOps is what the run loop and checkpoints need of a vCPU: KVM's
// (*kvm.Vcpu), or in unit tests of the run-state machine on machines
// without /dev/kvm, a scripted one.
type vcpuOps interface {
	Run() error
	RunArea() []byte // struct kvm_run
	SetImmediateExit(on bool)
	GetRegs() (Regs, error)
	SetRegs(Regs) error
	GetSregs() (Sregs, error)
	SetSregs(Sregs) error
	GetBlob(name string, req uintptr, size int) ([]byte, error)
	SetBlob(name string, req uintptr, b []byte, size int) error
	GetMSRs(indices []uint32) ([]kvm.MsrEntry, error)
	SetMSRs(msrs []kvm.MsrEntry) error
}

// dirtyLogger fetches and clears the guest's dirty-page bitmap (*kvm.VM,
// or a fake in unit tests).
type dirtyLogger interface {
	GetDirtyLog(slot uint32, bitmap []uint64) error
}

func newMachine(cfg Config) (*Machine, error) {
	if cfg.MemSizeBytes == 0 {
		cfg.MemSizeBytes = DefaultMemSizeBytes
	}
	if err := checkMemSize(cfg.MemSizeBytes); err != nil {
		return nil, err
	}
	if cfg.MAC == [6]byte{} {
		cfg.MAC = DefaultMAC
	}
	if cfg.Hook == nil {
		cfg.Hook = LiveHook{}
	}
	if cfg.Entropy == nil {
		cfg.Entropy = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Machine{
		cfg:       cfg,
		cmds:      make(chan command, cmdQueueMax),
		interrupt: make(chan struct{}, 1),
		loopDone:  make(chan struct{}),
		changed:   make(chan struct{}),
		freshMem:  true,
		prep:      &successorPrep{},
	}, nil
}

// start runs the vCPU thread; setup runs first on it (creating the vCPU).
func (m *Machine) start(setup func() error) error {
	ready := make(chan error, 1)
	go m.loop(ready, setup)
	if err := <-ready; err != nil {
		<-m.loopDone
		return err
	}
	return nil
}

// initDevices creates the devices over guest memory.
func (m *Machine) initDevices() error {
	m.dirtyWords = make([]uint64, len(m.mem.vmmDirty))
	block, err := newBlock(m.cfg.Disk, m.cfg.DiskSharedStorage)
	if err != nil {
		return err
	}
	m.block = block
	m.nic = newNIC(m.cfg.NIC, m.cfg.MAC, m.interrupt)
	m.disp = &dispatcher{mem: m.mem, hook: m.cfg.Hook}
	glog := &guestErrorLog{log: m.cfg.Logger}
	observer, _ := m.cfg.Hook.(GuestErrorObserver)
	m.disp.onGuestError = func(ge *GuestError) {
		glog.report(ge)
		if observer != nil {
			observer.OnGuestError(ge)
		}
	}
	m.disp.devs[DeviceConsole] = newConsole(m.cfg.Console)
	m.disp.devs[DeviceClock] = newClock()
	m.disp.devs[DeviceEntropy] = newEntropy(m.cfg.Entropy)
	m.disp.devs[DeviceNIC] = m.nic
	m.disp.devs[DeviceBlock] = block
	m.disp.devs[DeviceHalt] = haltDevice{}
	return nil
}

func (m *Machine) open() error {
	var err error
	if m.kvm, err = kvm.Open(); err != nil {
		return err
	}
	for _, c := range []struct {
		capability uintptr
		name       string
	}{{kvm.CapUserMemory, "KVM_CAP_USER_MEMORY"}, {kvm.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"}, {kvm.CapExtCPUID, "KVM_CAP_EXT_CPUID"}} {
		if m.kvm.CheckExtension(c.capability) <= 0 {
			return fmt.Errorf("this host's KVM lacks %s, which the VMM needs", c.name)
		}
	}
	m.hasXsave = m.kvm.CheckExtension(kvm.CapXsave) > 0
	m.hasXcrs = m.kvm.CheckExtension(kvm.CapXcrs) > 0
	known, err := m.kvm.MSRIndexList()
	if err != nil {
		return err
	}
	for _, want := range snapshotMSRs {
		for _, k := range known {
			if k == want {
				m.msrIndices = append(m.msrIndices, want)
				break
			}
		}
	}
	if m.vm, err = m.kvm.CreateVM(); err != nil {
		return err
	}
	if m.kvm.CheckExtension(kvm.CapSetTSSAddr) > 0 {
		if err := m.vm.SetTSSAddr(kvmTSSAddr); err != nil {
			return err
		}
	}
	buf, err := unix.Mmap(-1, 0, int(m.cfg.MemSizeBytes), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("mmap %d bytes of guest memory: %w", m.cfg.MemSizeBytes, err)
	}
	m.mem = newMemory(buf)
	if err := m.vm.SetUserMemoryRegion(0, kvm.MemLogDirtyPages, 0, buf); err != nil {
		return err
	}
	m.dirty = m.vm
	return m.initDevices()
}

// createVcpu runs on the vCPU thread.
func (m *Machine) createVcpu() error {
	size, err := m.kvm.VcpuMmapSize()
	if err != nil {
		return err
	}
	if m.kvcpu, err = m.vm.CreateVcpu(0, size); err != nil {
		return err
	}
	if m.cpuid == nil {
		if m.cpuid, err = m.kvm.SupportedCPUID(); err != nil {
			return err
		}
	}
	if err := m.kvcpu.SetCPUID(m.cpuid); err != nil {
		return err
	}
	m.vcpu = m.kvcpu
	return nil
}

// release frees what open and createVcpu acquired.
func (m *Machine) release() {
	// A live snapshot may be copying memory and reading the dirty log
	// from another goroutine: wait for it before the memory and the VM's
	// fd go.
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if m.nic != nil && !m.moved {
		m.nic.close()
	}
	if m.moved {
		// A predecessor (or a successor that failed to be made): only
		// its vCPU and VM are its own. The kernel's teardown of a VM
		// (its MMU, memory slot and vCPU) took up to a millisecond, in
		// a resync's pause: it runs beside the successor instead.
		vcpu, vm := m.kvcpu, m.vm
		go func() {
			if vcpu != nil {
				vcpu.Close()
			}
			if vm != nil {
				vm.Close()
			}
		}()
		return
	}
	if m.kvcpu != nil {
		m.kvcpu.Close()
	}
	if m.vm != nil {
		m.vm.Close()
	}
	// A successor's VM being prepared uses the memory and /dev/kvm:
	// they go when it is done.
	mem, sys := m.mem, m.kvm
	m.prep.close(func() {
		if mem != nil && sys != nil {
			unix.Munmap(mem.buf)
		}
		if sys != nil {
			sys.Close()
		}
	})
}

// Load writes a guest program (a static x86-64 ELF linked at LoadBase),
// the page tables, GDT, TSS and boot info into memory and points the vCPU
// at its entry in 64-bit mode at CPL3. The VM must be Paused.
func (m *Machine) Load(elfImage []byte) error {
	return m.do(func() error {
		if err := setupSystemArea(m.mem); err != nil {
			return err
		}
		img, err := loadELF(m.mem, elfImage, m.mem.Size()-stackReserveBytes)
		if err != nil {
			return err
		}
		if err := writeBootInfo(m.mem, img.HeapStart, m.cfg.Cmdline); err != nil {
			return err
		}
		m.freshMem = false
		if err := m.vcpu.SetSregs(initialSregs()); err != nil {
			return err
		}
		return m.vcpu.SetRegs(initialRegs(img.Entry, m.mem.Size()))
	})
}

// LoadFile is Load of the ELF file at path.
func (m *Machine) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("guest program: %w", err)
	}
	return m.Load(b)
}

// Resume runs the vCPU. With pauseAfterExits > 0 the VM pauses at a clean
// point as soon as that many device exits in total have been handled
// (Status.Exits == pauseAfterExits). It returns once the vCPU runs; use
// Wait to learn when it stops.
func (m *Machine) Resume(pauseAfterExits uint64) error {
	err := m.send(command{kind: cmdResume, pauseAt: pauseAfterExits})
	if err == nil {
		m.prepareAhead()
	}
	return err
}

// prepareAhead has what the next resync's pause needs made while the VM
// runs, in the background: the spare buffer for an increment's encoding
// if the VM has taken snapshots, and its successor's VM and vCPU if it
// has restored one. Not in the pause, after the snapshot or the restore
// that wants them: each is made at idle priority with the collector held
// off, and the collection that its end lets start, after the 4 MB of a
// spare, ran in the rest of the pause (the worst pauses of the resync
// benchmark each had one).
func (m *Machine) prepareAhead() {
	if m.spare.wanted() {
		m.spare.prepare(0)
	}
	if m.restored.Load() {
		m.prep.prepare(m)
	}
}

// Run is Resume followed by Wait.
func (m *Machine) Run(pauseAfterExits uint64) (Status, error) {
	if err := m.Resume(pauseAfterExits); err != nil {
		return m.Status(), err
	}
	st := m.Wait()
	return st, st.Err
}

// Pause stops a running vCPU at the next clean point: between two exits,
// with the last exit completed, so that registers and memory can be saved.
// It returns when the VM is no longer Running.
func (m *Machine) Pause() error {
	return m.send(command{kind: cmdPause})
}

// kick makes the vCPU thread leave KVM_RUN (immediate_exit covers the
// window before it enters; the signal interrupts it inside) and wakes a
// blocking device call. SIGURG is the Go runtime's own preemption signal,
// which every Go program already tolerates arriving at any time.
func (m *Machine) kick() {
	// Under mu so that Close cannot unmap kvm_run underneath.
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.status.State == Closed || m.vcpu == nil {
		return
	}
	m.vcpu.SetImmediateExit(true)
	if tid := m.tid.Load(); tid != 0 {
		unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
	select {
	case m.interrupt <- struct{}{}:
	default:
	}
}

// Wait blocks until the VM is not Running and returns its status.
func (m *Machine) Wait() Status {
	for {
		m.mu.Lock()
		st, ch := m.status, m.changed
		m.mu.Unlock()
		if st.State != Running {
			m.fillCounters(&st)
			return st
		}
		<-ch
	}
}

// Status returns the current run state without waiting.
func (m *Machine) Status() Status {
	m.mu.Lock()
	st := m.status
	m.mu.Unlock()
	m.fillCounters(&st)
	return st
}

func (m *Machine) fillCounters(st *Status) {
	if m.disp != nil {
		st.GuestErrors = m.disp.guestErrors.Load()
	}
}

// guestErrorLogInterval is the least time between two log lines about
// refused guest requests: a guest that makes them in a loop must not fill
// the host's log. The next line says how many went unlogged.
const guestErrorLogInterval = 10 * time.Second

// guestErrorLog logs refused guest requests, rate-limited. Owned by the
// vCPU thread.
type guestErrorLog struct {
	log      *slog.Logger
	last     time.Time
	unlogged uint64
}

func (l *guestErrorLog) report(ge *GuestError) {
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < guestErrorLogInterval {
		l.unlogged++
		return
	}
	l.last = now
	l.log.Warn("refused a guest request the guest got wrong (a bug in the guest program); the VM goes on",
		"exit", ge.Exit, "err", ge.Error(), "not_logged_before", l.unlogged)
	l.unlogged = 0
}

func (m *Machine) setStatus(f func(*Status)) {
	m.mu.Lock()
	f(&m.status)
	m.status.Exits = m.disp.next
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// Close stops the vCPU and frees the VM. Held outputs stay valid.
func (m *Machine) Close() error {
	m.closeOnce.Do(func() {
		m.spare.close()
		m.send(command{kind: cmdClose})
		<-m.loopDone
		m.setStatus(func(s *Status) { s.State = Closed })
		m.release()
	})
	return nil
}

// do runs fn on the vCPU thread while the VM is not running.
func (m *Machine) do(fn func() error) error {
	return m.send(command{kind: cmdDo, fn: fn})
}

// send queues a command for the vCPU thread and waits for its answer. The
// command is queued before the kick, so the vCPU thread, which looks at
// the queue after every return from KVM_RUN, cannot miss it.
func (m *Machine) send(c command) error {
	c.reply = make(chan error, 1)
	select {
	case m.cmds <- c:
	case <-m.loopDone:
		return ErrClosed
	}
	// The vCPU thread looks at the queue after every exit and every return
	// from KVM_RUN; a guest that spins without exits needs a kick, repeated
	// in case a Resume raced with this command.
	ticker := time.NewTicker(kickRetryInterval)
	defer ticker.Stop()
	for {
		if m.Status().State == Running {
			m.kick()
		}
		select {
		case err := <-c.reply:
			return err
		case <-m.loopDone:
			select {
			case err := <-c.reply:
				return err
			default:
				return ErrClosed
			}
		case <-ticker.C:
		}
	}
}

// ReadMemory copies guest memory [addr, addr+n) while the VM is not running.
func (m *Machine) ReadMemory(addr, n uint64) ([]byte, error) {
	var out []byte
	err := m.do(func() error {
		b, err := m.mem.Slice(addr, n)
		out = append([]byte(nil), b...)
		return err
	})
	return out, err
}

// MemSize is the guest's RAM in bytes.
func (m *Machine) MemSize() uint64 { return m.cfg.MemSizeBytes }

// VCPUState returns the vCPU's registers (as a snapshot would save them)
// while the VM is not running.
func (m *Machine) VCPUState() (VCPUState, error) {
	var v VCPUState
	err := m.do(func() error {
		var err error
		v, err = m.saveVCPU()
		return err
	})
	return v, err
}

// NICDropped counts received frames dropped because the guest's queue
// was full.
func (m *Machine) NICDropped() uint64 { return m.nic.dropped.Load() }
