package vmm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// Snapshot saves the paused (or halted) VM. A Full snapshot starts a new
// chain; an Incremental one holds only the pages written since the
// previous snapshot taken or restored on this VM (KVM's dirty log for the
// guest's writes, the VMM's own bitmap for what devices wrote) and the
// disk chunks written since then. That previous snapshot may be a live
// one (SnapshotLive): the increment then holds everything written since
// the live copy began, and with its registers and devices it completes
// the chain into a state the guest was in.
//
// The disk is saved as it is in its file. Block writes that are held
// (Exit.Hold, neither released nor dropped) are not in the snapshot: the
// caller carries them with it, as it carries every held output, and
// releases them on whichever host goes on (Machine.Deliver on a VM
// restored from the snapshot). A restored VM does not hold them, so its
// reads do not see them until they are delivered: deliver them before its
// guest reads the disk live (a replaying guest's reads come from the log).
// Outputs may be released while Snapshot runs: each lands wholly in this
// snapshot or in the next increment.
//
// A VM whose last restored snapshot is live has no state of its own to
// save, and Snapshot refuses it (ErrLiveRestored).
func (m *Machine) Snapshot(kind SnapshotKind) (*Snapshot, error) {
	return m.SnapshotReleased(kind, nil)
}

// SnapshotReleased is Snapshot, with the held block writes in released
// (outputs of this VM its owner has released and will perform, in this
// order) saved as if they were performed already: in the disk section,
// over what the file holds. Their owner need not wait for them to reach
// the file before the snapshot: a join's pause waited for each one's
// fdatasync, which beside other I/O took tens of milliseconds. Those of
// them performed meanwhile are in the file; outputs that are not held
// block writes of this VM are ignored. The held writes not in released
// stay out of the snapshot, as in Snapshot.
func (m *Machine) SnapshotReleased(kind SnapshotKind, released []*Output) (*Snapshot, error) {
	var s *Snapshot
	err := m.do(func() error {
		var err error
		s, err = m.takeSnapshot(kind, released)
		return err
	})
	if err == nil {
		// A VM that takes snapshots may be asked for a resync's
		// increment: its buffer is made when it runs, before the first.
		m.spare.size(0)
	}
	return s, err
}

// SnapshotLive copies the VM's memory and disk while the guest runs: the
// first steps of a pre-copy, which keeps the pause of a checkpoint as
// short as the last increment. It may be called from any goroutine,
// whether the VM runs or not (not on a failed or closed one), and does not
// stop the vCPU: a Full live snapshot copies every non-zero page and disk
// chunk, an Incremental one the pages and chunks written since the
// previous snapshot of this VM began.
//
// What it copies may be torn: the guest writes memory and the disk during
// the copy. That is correct because the dirty log, the VMM's own dirty
// bits and the disk's written chunks are taken (fetched and cleared) at
// the start of the copy, so everything written during or after it is in
// the next snapshot of the chain. The result is marked Live and carries
// no vCPU or device state, which would mean nothing while the guest runs.
// It takes its place in the chain like any snapshot, so the next one
// (live, or a paused Incremental) follows it.
//
// Pre-copy to a new replica:
//
//	full, _ := m.SnapshotLive(vmm.Full)         // ship; the replica restores it
//	inc, _ := m.SnapshotLive(vmm.Incremental)   // ship; fewer pages (repeat while it shrinks)
//	m.Pause()
//	last, _ := m.Snapshot(vmm.Incremental)      // ship: the pause lasts this long
//	// resume once the replica restored full, inc..., last
//
// Held block writes are not in the disk, as with Snapshot. Snapshots and
// restores of one VM happen one at a time: Snapshot and Restore wait for
// a SnapshotLive in progress, and it for them.
//
// The copy runs AtLowPriority, so that it takes from the guest only the
// CPU the guest leaves idle.
func (m *Machine) SnapshotLive(kind SnapshotKind) (*Snapshot, error) {
	if liveCopyAtGuestPriority {
		return m.snapshotLive(kind)
	}
	var s *Snapshot
	var err error
	AtLowPriority(func() { s, err = m.snapshotLive(kind) })
	return s, err
}

// AtLowPriority runs fn on an OS thread of its own under the kernel's
// SCHED_IDLE policy and waits for it: for work done beside a running
// guest, such as a live snapshot and its encoding. A copy at the vCPU
// thread's priority took half of a shared CPU from it, and the guest went
// silent for as long as the copy, which grows with the VM's memory and
// disk (pauses of up to 50 ms seen for 40 MB). Nice 19 was not enough
// either: a CPU running a nice-19 thread is busy to the kernel, so a vCPU
// thread woken (or preempted) on the other CPU, behind the client's and
// the daemons' threads, waited there for up to 10 ms while the copy ran
// alone on a CPU of its own (seen with sched_switch tracing of joins). A
// CPU running only SCHED_IDLE threads counts as idle: a waking thread is
// placed on it and preempts the copy at once, and the load balancer pulls
// waiting threads to it as to an idle CPU.
//
// SCHED_IDLE gets almost nothing of CPUs that others keep busy (a live
// increment beside two busy CPUs took 24 s), and the thread holds a Go P
// and keeps the collector off meanwhile (below). So fn runs under it for
// lowPriorityIdleMax at most; after that its thread goes on at nice
// lowPriorityNice (as where SCHED_IDLE is refused), which bounds a copy
// to what it took before. The thread is never handed back to the Go
// runtime (the goroutine ends locked to it, so it exits), so no other
// goroutine ever runs at that priority. A failure to lower the priority
// is ignored: fn then runs as it would have anyway.
//
// The garbage collector is off while fn runs (debug.SetGCPercent(-1),
// the setting before the first of overlapping calls is put back after
// the last): the thread holds a Go P while the kernel starves it, and a
// collection stops the world, which waits for every P, so a vCPU thread
// back from KVM_RUN waited with it for as long as the copy thread was
// kept off its CPU (the guest silent for 45 to 196 ms per copy of 2 MiB
// + 2 MiB beside one other busy process on its CPU, 6 to 19 ms with no
// collection). The price: the process's heap grows without a collection
// for as long as fn runs.
func AtLowPriority(fn func()) {
	if !lowPriorityKeepsGC {
		holdGC()
		defer releaseGC()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		t := lowerThreadPriority()
		fn()
		// Back to the priority it had (where allowed), so that the
		// few steps to the thread's end are not starved while the
		// collector is let run again.
		t.restore()
	}()
	<-done
}

// lowPriorityIdleMax is how long AtLowPriority's fn runs under
// SCHED_IDLE before its thread goes on at nice lowPriorityNice. A live
// full copy of the kvstore guest's 3 MB takes 20 to 50 ms beside it on
// two cores.
var lowPriorityIdleMax = 100 * time.Millisecond

// lowThread is a thread AtLowPriority lowered.
type lowThread struct {
	tid        int
	was        *unix.SchedAttr // nil: sched_getattr failed
	wasNice    int             // getpriority(2)'s answer, 20 - nice
	wasNiceErr error

	mu    sync.Mutex
	idle  bool        // under SCHED_IDLE now
	done  bool        // restored: the thread may be gone
	timer *time.Timer // lowers it to nice lowPriorityNice after lowPriorityIdleMax
}

// lowerThreadPriority puts the calling thread under SCHED_IDLE, and at
// nice lowPriorityNice once lowPriorityIdleMax has passed or if the
// kernel refuses SCHED_IDLE.
func lowerThreadPriority() *lowThread {
	t := &lowThread{tid: unix.Gettid()}
	t.wasNice, t.wasNiceErr = unix.Getpriority(unix.PRIO_PROCESS, t.tid)
	var err error
	if t.was, err = unix.SchedGetAttr(t.tid, 0); err != nil {
		t.was = nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.was != nil && !lowPriorityNiceOnly {
		low := *t.was
		low.Size = unix.SizeofSchedAttr
		low.Policy, low.Flags, low.Priority, low.Nice = unix.SCHED_IDLE, 0, 0, lowPriorityNice
		t.idle = unix.SchedSetAttr(t.tid, &low, 0) == nil
	}
	if t.idle {
		t.timer = time.AfterFunc(lowPriorityIdleMax, t.leaveIdle)
	} else {
		_ = unix.Setpriority(unix.PRIO_PROCESS, t.tid, lowPriorityNice)
	}
	return t
}

// leaveIdle moves the thread from SCHED_IDLE to nice lowPriorityNice,
// unless it is done.
func (t *lowThread) leaveIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done || !t.idle {
		return
	}
	normal := *t.was
	normal.Size = unix.SizeofSchedAttr
	normal.Policy, normal.Flags, normal.Priority, normal.Nice = unix.SCHED_NORMAL, 0, 0, lowPriorityNice
	if unix.SchedSetAttr(t.tid, &normal, 0) == nil {
		t.idle = false
	}
}

// restore puts back the policy and nice value the thread had; called on
// that thread.
func (t *lowThread) restore() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done = true
	if t.timer != nil {
		t.timer.Stop()
	}
	if t.was != nil {
		was := *t.was
		was.Size = unix.SizeofSchedAttr
		if unix.SchedSetAttr(t.tid, &was, 0) == nil { // its nice value too
			return
		}
	}
	if t.wasNiceErr == nil {
		_ = unix.Setpriority(unix.PRIO_PROCESS, t.tid, 20-t.wasNice)
	}
}

// gcHold counts the AtLowPriority calls running and keeps the GC
// percentage they found.
var gcHold struct {
	sync.Mutex
	n   int
	was int
}

func holdGC() {
	gcHold.Lock()
	defer gcHold.Unlock()
	if gcHold.n == 0 {
		gcHold.was = debug.SetGCPercent(-1)
	}
	gcHold.n++
}

func releaseGC() {
	gcHold.Lock()
	defer gcHold.Unlock()
	if gcHold.n--; gcHold.n == 0 {
		debug.SetGCPercent(gcHold.was)
	}
}

// HoldGC keeps the garbage collector off until a matching ReleaseGC, as
// AtLowPriority does while its fn runs (the holds are counted together):
// for a caller whose guest must not meet a collection for a while, such
// as a primary between the first live copy of a join and the first
// frames after its pause. The heap grows without a collection meanwhile,
// so a hold must be bounded in time by its caller.
func HoldGC() { holdGC() }

// ReleaseGC undoes one HoldGC.
func ReleaseGC() { releaseGC() }

// GCHeld reports whether a HoldGC or an AtLowPriority keeps the collector
// off now.
func GCHeld() bool {
	gcHold.Lock()
	defer gcHold.Unlock()
	return gcHold.n > 0
}

// lowPriorityKeepsGC is a planted bug for the tests, which must catch
// it: AtLowPriority leaves the garbage collector on.
var lowPriorityKeepsGC = false

// lowPriorityNice is the nice value of AtLowPriority's threads where
// SCHED_IDLE is refused.
const lowPriorityNice = 19

// lowPriorityNiceOnly is a planted bug for the tests, which must catch
// it: AtLowPriority runs fn at nice lowPriorityNice, not SCHED_IDLE.
var lowPriorityNiceOnly = false

// liveCopyAtGuestPriority is a planted bug for the tests, which must
// catch it: SnapshotLive copies on its caller's thread, at the priority
// of the vCPU thread.
var liveCopyAtGuestPriority = false

func (m *Machine) snapshotLive(kind SnapshotKind) (*Snapshot, error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	// Close unmaps memory only with snapMu held: the state seen here
	// holds until the copy is done.
	switch st := m.Status().State; st {
	case Closed:
		return nil, ErrClosed
	case Failed:
		return nil, fmt.Errorf("cannot snapshot a failed VM")
	}
	if err := m.checkSnapshotKind(kind); err != nil {
		return nil, err
	}
	s := &Snapshot{Kind: kind, Live: true, MemSize: m.mem.Size()}
	if kind == Full {
		s.ChainID = newChainID()
	} else {
		s.ChainID, s.Seq, s.BaseSeq = m.chainID, m.seq+1, m.seq
	}
	// From here on the dirty bits are consumed: if anything fails, the
	// next snapshot must be full. They are taken before anything is
	// copied, so that whatever the guest writes from now on, torn in this
	// copy or not, is in the next snapshot.
	late := kind == Full && liveFullDirtyLogAtEnd
	var bm, written []uint64
	if !late {
		var err error
		if bm, err = m.takeDirty(); err != nil {
			m.haveBase = false
			return nil, err
		}
		written = m.block.takeWritten()
	}
	if kind == Full {
		s.PageNumbers = m.mem.nonZeroPages()
	} else {
		s.PageNumbers = dirtyPages(bm, m.mem.Pages())
	}
	s.PageData = m.mem.copyPages(s.PageNumbers)
	if err := m.block.saveDiskLive(kind, written, s); err != nil {
		m.haveBase = false
		return nil, err
	}
	if liveCopied != nil {
		liveCopied()
	}
	if late {
		m.block.takeWritten()
		if _, err := m.takeDirty(); err != nil {
			m.haveBase = false
			return nil, err
		}
	}
	m.haveBase, m.chainID, m.seq = true, s.ChainID, s.Seq
	return s, nil
}

// liveFullDirtyLogAtEnd is a planted bug for the tests, which must catch
// it: a live Full snapshot takes the dirty log and the disk's written
// chunks after its copy instead of before, so the guest's writes during
// the copy are in neither it nor the next increment.
var liveFullDirtyLogAtEnd = false

// liveCopied, when set (by tests), runs in SnapshotLive after the copy
// and before the late dirty log of liveFullDirtyLogAtEnd: a test that
// waits there for the guest to write has writes that land after their
// pages were copied, every time, not only when the copy and the guest
// happen to overlap.
var liveCopied func()

// ErrLiveRestored is wrapped by the errors of Resume and Snapshot on a VM
// whose last restored snapshot is live: its memory is a fuzzy copy and
// its registers and devices are not the guest's.
var ErrLiveRestored = errors.New("restored a live snapshot")

// errResumeLiveRestored is what Resume says on such a VM.
var errResumeLiveRestored = fmt.Errorf("%w: apply the paused increment that follows it before running", ErrLiveRestored)

// Restore loads a snapshot into this VM, which must not be running. A Full
// snapshot needs only the same memory size and a disk of the same size;
// an Incremental one applies only on a VM that is at its base (the
// snapshot it follows in its chain, taken or restored here). The disk's
// chunks are written into this VM's disk file and made durable; a Full
// snapshot first zeroes the whole disk, so that nothing the file held
// before survives. After a restore the VM is Paused (or Halted, if the
// snapshot was) and later increments are taken relative to it.
//
// An increment is refused (an error wrapping ErrNotCovered, nothing
// changed) when this VM changed since its base a page or disk chunk the
// increment lacks: applied, it would leave that page as this VM wrote it.
// Block writes this VM holds are no longer seen by its reads after a
// restore (the restored guest holds none); releasing one still performs
// it.
//
// A live snapshot restores memory and disk only, and leaves registers,
// devices and the exit count as they were: the VM is Paused but Resume
// and Snapshot refuse it (ErrLiveRestored) until a snapshot that is not
// live, the paused increment that ends the pre-copy, is applied on top.
func (m *Machine) Restore(s *Snapshot) error {
	err := m.do(func() error { return m.restoreSnapshot(s) })
	if err == nil && !s.Live {
		// A resync may ask for its successor: made when it runs.
		m.restored.Store(true)
	}
	return err
}

// newChainID picks a random chain id, so that increments of one VM's
// chains never apply to another's.
func newChainID() uint64 {
	var id [8]byte
	rand.Read(id[:])
	return le.Uint64(id[:])
}

// checkSnapshotKind says whether a snapshot of this kind can be taken
// now; snapMu must be held.
func (m *Machine) checkSnapshotKind(kind SnapshotKind) error {
	switch {
	case kind != Full && kind != Incremental:
		return fmt.Errorf("unknown snapshot kind %d", kind)
	case m.fuzzy:
		return fmt.Errorf("cannot snapshot a VM that %w, so its registers and devices are not the guest's: apply the paused increment that follows it first", ErrLiveRestored)
	case m.unclean:
		return fmt.Errorf("cannot snapshot: %w", errResumeUnclean)
	case kind == Incremental && !m.haveBase:
		return fmt.Errorf("no base for an incremental snapshot: take (or restore) a full snapshot first")
	}
	return nil
}

// takeDirty fetches and clears the pages dirtied since the dirty bits
// were last taken: KVM's log of the guest's writes OR'd with the VMM's
// own. The bitmap is m.dirtyWords, so snapMu must be held while it is in
// use.
func (m *Machine) takeDirty() ([]uint64, error) {
	bm := m.dirtyWords
	clear(bm)
	if err := m.dirty.GetDirtyLog(0, bm); err != nil {
		return nil, err
	}
	m.takeDirtyAcc(bm)
	m.mem.takeVMMDirty(bm)
	return bm, nil
}

func (m *Machine) takeSnapshot(kind SnapshotKind, released []*Output) (*Snapshot, error) {
	return m.takeSnapshotCovering(kind, released, nil)
}

// takeSnapshotCovering is takeSnapshot; an increment also holds the pages
// and chunks of other, when given (SnapshotCovering).
func (m *Machine) takeSnapshotCovering(kind SnapshotKind, released []*Output, other *DirtySet) (*Snapshot, error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if st := m.Status().State; st != Paused && st != Halted {
		return nil, fmt.Errorf("cannot snapshot a %s VM", st)
	}
	if err := m.checkSnapshotKind(kind); err != nil {
		return nil, err
	}
	if other != nil {
		if err := m.checkCover(other); err != nil {
			return nil, err
		}
	}
	s := &Snapshot{
		Kind:     kind,
		Halted:   m.disp.halted,
		MemSize:  m.mem.Size(),
		NextExit: m.disp.next,
		ExitCode: m.disp.exitCode,
	}
	// Device state and registers first: nothing is consumed until they
	// are saved.
	for d := DeviceConsole; d <= DeviceHalt; d++ {
		st, err := m.disp.devs[d].saveState()
		if err != nil {
			return nil, err
		}
		s.Devices = append(s.Devices, DeviceState{Device: d, State: st})
	}
	v, err := m.saveVCPU()
	if err != nil {
		return nil, err
	}
	s.VCPUs = []VCPUState{v}
	// saveDisk clears the disk's written bitmap only if it succeeds, so
	// an error here leaves the next increment whole; after it, a failure
	// makes the next snapshot full anyway.
	if other != nil {
		m.block.markWritten(other.Chunks)
	}
	if err := m.block.saveDisk(kind, s, released); err != nil {
		return nil, err
	}

	// From here on the dirty bits are consumed: if anything fails, the
	// next snapshot must be full.
	bm, err := m.takeDirty()
	if err != nil {
		m.haveBase = false
		return nil, err
	}
	if kind == Full {
		s.ChainID = newChainID()
		s.PageNumbers = m.mem.nonZeroPages()
	} else {
		s.ChainID, s.Seq, s.BaseSeq = m.chainID, m.seq+1, m.seq
		coverIncrement(bm, other)
		s.PageNumbers = dirtyPages(bm, m.mem.Pages())
	}
	if other != nil {
		s.placePages(m.mem, &m.spare) // encoded at once for the resync
	} else {
		s.PageData = m.mem.copyPages(s.PageNumbers)
	}
	m.haveBase, m.chainID, m.seq = true, s.ChainID, s.Seq
	return s, nil
}

func (m *Machine) restoreSnapshot(s *Snapshot) error {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	// Everything that can be checked is checked before anything changes.
	if s.MemSize != m.mem.Size() {
		return fmt.Errorf("snapshot is of a %d-byte memory; this VM has %d bytes", s.MemSize, m.mem.Size())
	}
	if err := s.checkState(); err != nil {
		return err
	}
	if !s.Live && len(s.VCPUs) != 1 {
		return fmt.Errorf("snapshot has %d vCPUs; this VM has 1", len(s.VCPUs))
	}
	if len(s.PageData) != len(s.PageNumbers)*PageBytes {
		return fmt.Errorf("snapshot has %d pages but %d bytes of page data", len(s.PageNumbers), len(s.PageData))
	}
	for _, p := range s.PageNumbers {
		if p >= m.mem.Pages() {
			return fmt.Errorf("snapshot page %d lies outside guest memory", p)
		}
	}
	if err := m.block.checkRestoreDisk(s); err != nil {
		return err
	}
	switch s.Kind {
	case Full:
	case Incremental:
		if !m.haveBase || m.chainID != s.ChainID || m.seq != s.BaseSeq {
			at := "no snapshot"
			if m.haveBase {
				at = fmt.Sprintf("snapshot %d of chain %#x", m.seq, m.chainID)
			}
			return fmt.Errorf("increment %d of chain %#x applies on snapshot %d, but this VM is at %s: restore the chain in order from its full snapshot", s.Seq, s.ChainID, s.BaseSeq, at)
		}
	default:
		return fmt.Errorf("unknown snapshot kind %d", s.Kind)
	}
	if s.Kind == Incremental {
		if err := m.checkCovered(s); err != nil {
			return err
		}
	}
	devs := map[Device][]byte{}
	for _, d := range s.Devices {
		devs[d.Device] = d.State
	}
	var v VCPUState
	if !s.Live {
		for d := DeviceConsole; d <= DeviceHalt; d++ {
			if _, ok := devs[d]; !ok {
				return fmt.Errorf("snapshot lacks the state of the %s device", d)
			}
		}
		v = s.VCPUs[0]
		if len(v.XSAVE) > 0 && !m.hasXsave {
			return fmt.Errorf("snapshot holds XSAVE state but this host's KVM has no KVM_CAP_XSAVE")
		}
	}
	// A halted VM's last doorbell store may still be pending in KVM:
	// complete it, or KVM would skip an instruction of the restored state
	// on the next run.
	if err := m.completeIO(); err != nil {
		return err
	}

	// No live copy runs (snapMu is held) and the vCPU thread is here, so
	// nothing else touches memory.
	if s.Kind == Full && !m.freshMem {
		clear(m.mem.buf)
	}
	for i, p := range s.PageNumbers {
		copy(m.mem.buf[p*PageBytes:], s.PageData[i*PageBytes:(i+1)*PageBytes])
	}
	m.freshMem = false
	failed := func(err error) error {
		m.haveBase, m.fuzzy = false, false
		err = fmt.Errorf("restore failed half way, the VM state is undefined (restore a full snapshot): %w", err)
		m.setStatus(func(st *Status) { st.State = Failed; st.Err = err })
		return err
	}
	if err := m.block.restoreDisk(s); err != nil {
		return failed(err)
	}
	m.block.forgetHeld()
	if !s.Live {
		if err := m.restoreVCPU(v); err != nil {
			return failed(err)
		}
		for d := DeviceConsole; d <= DeviceHalt; d++ {
			if err := m.disp.devs[d].restoreState(devs[d]); err != nil {
				return failed(err)
			}
		}
		m.disp.next, m.disp.halted, m.disp.exitCode = s.NextExit, s.Halted, s.ExitCode
	}
	// The restored memory is the base of the next increment: forget what
	// was dirty before and what the copy itself dirtied.
	if err := m.dirty.GetDirtyLog(0, m.dirtyWords); err != nil {
		return failed(err)
	}
	m.mem.clearVMMDirty()
	clear(m.dirtyAcc)
	m.haveBase, m.chainID, m.seq = true, s.ChainID, s.Seq
	m.fuzzy = s.Live
	m.unclean = m.unclean && s.Live
	m.setStatus(func(st *Status) {
		st.State, st.Err, st.ExitCode = Paused, nil, s.ExitCode
		if s.Halted {
			st.State = Halted
		}
	})
	return nil
}

// snapshotMSRs are the MSRs a snapshot saves, beyond those kept in Sregs
// (EFER, APIC base): the syscall MSRs and segment bases a guest library may
// set, and the TSC so that a restored guest's RDTSC does not run backwards.
// Only the ones KVM lists in KVM_GET_MSR_INDEX_LIST are saved.
var snapshotMSRs = []uint32{
	0x00000010, // IA32_TSC
	0x00000174, // IA32_SYSENTER_CS
	0x00000175, // IA32_SYSENTER_ESP
	0x00000176, // IA32_SYSENTER_EIP
	0x00000277, // IA32_PAT
	0xC0000081, // STAR
	0xC0000082, // LSTAR
	0xC0000083, // CSTAR
	0xC0000084, // SYSCALL_MASK
	0xC0000100, // FS_BASE
	0xC0000101, // GS_BASE
	0xC0000102, // KERNEL_GS_BASE
	0xC0000103, // TSC_AUX
}

func (m *Machine) saveVCPU() (VCPUState, error) {
	var v VCPUState
	var err error
	if v.Regs, err = m.vcpu.GetRegs(); err != nil {
		return v, err
	}
	if v.Sregs, err = m.vcpu.GetSregs(); err != nil {
		return v, err
	}
	if m.hasXsave {
		if v.XSAVE, err = m.vcpu.GetBlob("KVM_GET_XSAVE", kvm.IoctlGetXsave, kvm.XsaveSize); err != nil {
			return v, err
		}
	} else if v.FPU, err = m.vcpu.GetBlob("KVM_GET_FPU", kvm.IoctlGetFPU, kvm.FPUSize); err != nil {
		return v, err
	}
	if m.hasXcrs {
		if v.XCRs, err = m.vcpu.GetBlob("KVM_GET_XCRS", kvm.IoctlGetXcrs, kvm.XcrsSize); err != nil {
			return v, err
		}
	}
	if v.Events, err = m.vcpu.GetBlob("KVM_GET_VCPU_EVENTS", kvm.IoctlGetVcpuEvents, kvm.VcpuEventsSize); err != nil {
		return v, err
	}
	msrs, err := m.vcpu.GetMSRs(m.msrIndices)
	if err != nil {
		return v, err
	}
	for _, e := range msrs {
		v.MSRs = append(v.MSRs, MSR{Index: e.Index, Value: e.Data})
	}
	return v, nil
}

func (m *Machine) restoreVCPU(v VCPUState) error {
	if err := m.vcpu.SetSregs(v.Sregs); err != nil {
		return err
	}
	if err := m.vcpu.SetRegs(v.Regs); err != nil {
		return err
	}
	if len(v.XCRs) > 0 && m.hasXcrs {
		if err := m.vcpu.SetBlob("KVM_SET_XCRS", kvm.IoctlSetXcrs, v.XCRs, kvm.XcrsSize); err != nil {
			return err
		}
	}
	if len(v.XSAVE) > 0 {
		if err := m.vcpu.SetBlob("KVM_SET_XSAVE", kvm.IoctlSetXsave, v.XSAVE, kvm.XsaveSize); err != nil {
			return err
		}
	} else if len(v.FPU) > 0 {
		if err := m.vcpu.SetBlob("KVM_SET_FPU", kvm.IoctlSetFPU, v.FPU, kvm.FPUSize); err != nil {
			return err
		}
	}
	msrs := make([]kvm.MsrEntry, len(v.MSRs))
	for i, e := range v.MSRs {
		msrs[i] = kvm.MsrEntry{Index: e.Index, Data: e.Value}
	}
	if err := m.vcpu.SetMSRs(msrs); err != nil {
		return err
	}
	if len(v.Events) > 0 {
		return m.vcpu.SetBlob("KVM_SET_VCPU_EVENTS", kvm.IoctlSetVcpuEvents, v.Events, kvm.VcpuEventsSize)
	}
	return nil
}
