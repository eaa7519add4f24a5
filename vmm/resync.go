package vmm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math/bits"
	"slices"
	"sync"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// Incremental resynchronisation. Two VMs that restored (or took) one
// snapshot are equal there; whatever either changed since is in its dirty
// bits (KVM's log, the VMM's own bits, the disk's written chunks). So a
// secondary that diverged sends what it changed (DirtySinceBase, encoded),
// the primary takes an increment on that base holding its own changes and
// the secondary's (SnapshotCovering), and the secondary applies it on a
// Successor of its VM: a fresh KVM VM over the same memory and disk.
//
//	// secondary, at (chain X, seq s), diverged:
//	d, err := sec.DirtySinceBase()
//	blob, err := d.MarshalBinary()           // sent with the resync request
//	// primary, paused:
//	other, err := vmm.UnmarshalDirtySet(blob)
//	s, err := pri.SnapshotCovering(other, released)
//	if errors.Is(err, vmm.ErrBaseMismatch) { s, err = pri.SnapshotReleased(vmm.Full, released) }
//	// secondary (its VM failed the diverging exit, or is paused):
//	next, err := sec.Successor(hook)         // sec is closed
//	err = next.Restore(s)                    // ErrNotCovered: ask for a full one
//
// The cost is the differing pages and chunks, not the VM's size; the
// successor's KVM VM and vCPU are made ahead, while the VM runs
// (successorPrep), so the pause only loads state into them.

// ErrBaseMismatch is wrapped by SnapshotCovering's error when the VM is
// not at the other VM's base (another chain or seq, other sizes, or no
// base at all): nothing was consumed, take a Full snapshot instead.
var ErrBaseMismatch = errors.New("not at the other VM's base")

// ErrNotCovered is wrapped by Restore's error when an increment lacks a
// page or disk chunk this VM changed since its base: applying it would
// leave that page as this VM wrote it. Nothing was changed; restore a
// Full snapshot instead.
var ErrNotCovered = errors.New("increment does not cover what this VM changed since its base")

// errResumeUnclean is what Resume says on the successor of a VM that
// failed mid-exit.
var errResumeUnclean = errors.New("this VM succeeds one that failed in the middle of an exit, so its registers are not at a clean point: restore a snapshot before running it")

// DirtySinceBase peeks (does not consume) what this VM changed since its
// last snapshot taken or restored: the pages KVM saw the guest write, the
// pages the VMM wrote, and the disk chunks block writes reached (a
// secondary's persisted writes and delivered ones too). It may be called
// from any goroutine, whether the VM runs or not, and from its exit hook
// (it waits for no exit); while the VM runs the set is what was changed
// so far. It fails on a VM with no base (nothing taken
// or restored yet, or a snapshot or restore failed half way) and on a
// closed one.
//
// KVM's dirty log can only be fetched and cleared, so what it fetches is
// kept (with what the previous peeks fetched) and OR'd into the next
// snapshot's dirty bits; a restore forgets it, with the rest.
func (m *Machine) DirtySinceBase() (*DirtySet, error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	// Close releases the VM only with snapMu held: what is seen here
	// holds until the end.
	if m.moved || m.Status().State == Closed {
		return nil, ErrClosed
	}
	if !m.haveBase {
		return nil, errors.New("this VM has no base: it has taken or restored no snapshot (or one failed half way), so it cannot say what it changed since")
	}
	bm, err := m.peekDirty()
	if err != nil {
		return nil, err
	}
	return &DirtySet{
		ChainID:   m.chainID,
		Seq:       m.seq,
		MemSize:   m.mem.Size(),
		DiskBytes: m.block.size(),
		Pages:     dirtyPages(bm, m.mem.Pages()),
		Chunks:    m.block.peekWritten(),
	}, nil
}

// peekDirty returns the pages dirtied since the base without consuming
// them: KVM's log is fetched into dirtyAcc, which the next takeDirty ORs
// in. snapMu must be held.
func (m *Machine) peekDirty() ([]uint64, error) {
	if m.dirtyAcc == nil {
		m.dirtyAcc = make([]uint64, len(m.dirtyWords))
	}
	if err := m.fetchDirtyLog(); err != nil {
		return nil, err
	}
	bm := slices.Clone(m.dirtyAcc)
	m.mem.peekVMMDirty(bm)
	return bm, nil
}

// fetchDirtyLog moves KVM's dirty log into dirtyAcc; snapMu held.
func (m *Machine) fetchDirtyLog() error {
	tmp := make([]uint64, len(m.dirtyAcc))
	if err := m.dirty.GetDirtyLog(0, tmp); err != nil {
		return err
	}
	for i, w := range tmp {
		m.dirtyAcc[i] |= w
	}
	return nil
}

// takeDirtyAcc ORs what peeks fetched into bm and forgets it; snapMu held.
func (m *Machine) takeDirtyAcc(bm []uint64) {
	for i, w := range m.dirtyAcc {
		bm[i] |= w
	}
	clear(m.dirtyAcc)
}

// peekVMMDirty ORs the VMM's own dirty bits into dst, leaving them set.
func (m *Memory) peekVMMDirty(dst []uint64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for i, w := range m.vmmDirty {
		dst[i] |= w
	}
}

// peekWritten lists the chunks written since the last snapshot, leaving
// them marked. A VM without a disk of its own has none.
func (b *blockDevice) peekWritten() []uint64 {
	if b.f == nil || b.shared {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return dirtyPages(b.written, diskChunks(b.size()))
}

// markWritten marks chunks as written (they are in the next increment).
func (b *blockDevice) markWritten(chunks []uint64) {
	if b.f == nil || b.shared || len(chunks) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range chunks {
		b.written[c/64] |= 1 << (c % 64)
	}
}

// forgetHeld makes the guest's reads stop seeing the held writes: a
// restored guest's state holds none (they are outputs, which the caller
// carries and delivers apart). Releasing one later still performs it.
func (b *blockDevice) forgetHeld() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = nil
}

// SnapshotCovering takes an Incremental snapshot of the paused VM on its
// current chain position, as SnapshotReleased does, that also holds every
// page and disk chunk in other (what another VM changed since the same
// base): applied on that VM, it makes it equal to this one. If this VM is
// not at other's base (chain id and seq, memory and disk sizes) or has
// none, it returns an error wrapping ErrBaseMismatch and consumes
// nothing: take a Full snapshot instead. released is as in
// SnapshotReleased.
func (m *Machine) SnapshotCovering(other *DirtySet, released []*Output) (*Snapshot, error) {
	if other == nil {
		return nil, fmt.Errorf("%w: no dirty set given", ErrBaseMismatch)
	}
	var s *Snapshot
	err := m.do(func() error {
		var err error
		s, err = m.takeSnapshotCovering(Incremental, released, other)
		return err
	})
	if err == nil {
		m.spare.size(len(s.encoded)) // the next resync's, made when the VM runs
	}
	return s, err
}

// checkCover says whether an increment of this VM can cover other;
// snapMu held.
func (m *Machine) checkCover(other *DirtySet) error {
	switch {
	case !m.haveBase:
		return fmt.Errorf("%w: this VM has no base (no snapshot taken or restored since a failure)", ErrBaseMismatch)
	case other.ChainID != m.chainID || other.Seq != m.seq:
		return fmt.Errorf("%w: the other VM is at snapshot %d of chain %#x, this one at snapshot %d of chain %#x", ErrBaseMismatch, other.Seq, other.ChainID, m.seq, m.chainID)
	case other.MemSize != m.mem.Size():
		return fmt.Errorf("%w: the other VM has %d bytes of memory, this one %d", ErrBaseMismatch, other.MemSize, m.mem.Size())
	case other.DiskBytes != m.block.size():
		return fmt.Errorf("%w: the other VM's disk is %d bytes, this one's %d", ErrBaseMismatch, other.DiskBytes, m.block.size())
	}
	if err := other.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrBaseMismatch, err)
	}
	return nil
}

// coverIncrement adds other's pages to the dirty bitmap bm of an
// increment.
func coverIncrement(bm []uint64, other *DirtySet) {
	if other == nil {
		return
	}
	if coveringLeavesOutOwnPage {
		leaveOutOwnPage(bm, other)
	}
	for _, p := range other.Pages {
		bm[p/64] |= 1 << (p % 64)
	}
}

// leaveOutOwnPage clears the lowest page of bm that other lacks.
func leaveOutOwnPage(bm []uint64, other *DirtySet) {
	for i, w := range bm {
		for ; w != 0; w &= w - 1 {
			p := uint64(i)*64 + uint64(bits.TrailingZeros64(w))
			if _, found := slices.BinarySearch(other.Pages, p); !found {
				bm[i] &^= 1 << (p % 64)
				return
			}
		}
	}
}

// coveringLeavesOutOwnPage is a planted bug for the tests, which must
// catch it: SnapshotCovering leaves out the lowest page that this VM
// changed and the other did not, so the other VM keeps that page as it
// was at the base (its restore cannot tell: it did not change the page).
var coveringLeavesOutOwnPage = false

// checkCovered says whether increment s holds every page and chunk this
// VM changed since its base; snapMu held, s checked.
func (m *Machine) checkCovered(s *Snapshot) error {
	bm, err := m.peekDirty()
	if err != nil {
		return err
	}
	if p, n := missing(dirtyPages(bm, m.mem.Pages()), s.PageNumbers); n > 0 {
		return fmt.Errorf("%w: this VM wrote page %d (and %d more pages) since snapshot %d of chain %#x, and increment %d lacks it: restore a full snapshot", ErrNotCovered, p, n-1, m.seq, m.chainID, s.Seq)
	}
	if !s.DiskOmitted {
		if c, n := missing(m.block.peekWritten(), s.DiskChunks); n > 0 {
			return fmt.Errorf("%w: this VM wrote disk chunk %d (and %d more chunks) since snapshot %d of chain %#x, and increment %d lacks it: restore a full snapshot", ErrNotCovered, c, n-1, m.seq, m.chainID, s.Seq)
		}
	}
	return nil
}

// missing returns the first of want (increasing) that have (increasing)
// lacks, and how many it lacks.
func missing(want, have []uint64) (first uint64, n int) {
	j := 0
	for _, v := range want {
		for j < len(have) && have[j] < v {
			j++
		}
		if j < len(have) && have[j] == v {
			continue
		}
		if n == 0 {
			first = v
		}
		n++
	}
	return first, n
}

// successorState is what a VM hands its successor from its vCPU thread.
type successorState struct {
	vcpu     VCPUState
	haveRegs bool
	unclean  bool
	halted   bool
	exitCode uint64
}

// Successor closes m and returns a VM that goes on from where m is, on a
// fresh KVM VM and vCPU (made while m ran, when they are ready: see
// successorPrep; else here): m's guest memory (the same mapping: nothing is
// copied), devices, disk and held block writes, exit count, chain
// position and dirty bits (KVM's log of m is fetched before its VM is
// closed), with its exits going to hook (nil: LiveHook). The new VM is
// Paused (Halted if m was).
//
// m must not be running: Paused, Halted, or Failed. A VM fails when its
// hook gives up an exit (a replaying hook told to abandon it); its vCPU
// is then stuck in the middle of that exit, and KVM would complete the
// pending access on its next KVM_RUN. The successor's vCPU has no such
// access pending, which is why it is a fresh one; as its registers are
// those of the exit given up, it refuses to run or be snapshotted until a
// snapshot is restored on it. A successor of a paused VM runs on as m
// would have.
//
// The NIC and its backend, the memory and the /dev/kvm handle pass to the
// successor: closing m releases only its VM and vCPU. Held outputs of m
// stay valid; releasing one performs it through the successor's device.
// No other call on m may run while Successor does; on an error m is left
// as it was (though it may have to be closed).
func (m *Machine) Successor(hook ExitHook) (*Machine, error) {
	if hook == nil {
		hook = LiveHook{}
	}
	var st successorState
	locked := false
	err := m.do(func() error {
		state := m.Status().State
		switch state {
		case Failed:
			st.unclean = true // the exit given up stays pending: no completeIO
		case Paused, Halted:
			if err := m.completeIO(); err != nil {
				return err
			}
		default:
			return fmt.Errorf("cannot make a successor of a %s VM", state)
		}
		st.unclean = st.unclean || m.unclean
		v, err := m.saveVCPU()
		if err != nil && !st.unclean {
			return err
		}
		st.vcpu, st.haveRegs = v, err == nil
		st.halted, st.exitCode = m.disp.halted, m.disp.exitCode
		// snapMu stays held until m is marked moved: no live snapshot or
		// peek takes m's dirty bits meanwhile.
		m.snapMu.Lock()
		locked = true
		if m.moved {
			return ErrClosed
		}
		if m.dirtyAcc == nil {
			m.dirtyAcc = make([]uint64, len(m.dirtyWords))
		}
		return m.fetchDirtyLog()
	})
	if err != nil {
		if locked {
			m.snapMu.Unlock()
		}
		return nil, err
	}
	n, err := m.newSuccessor(hook, &st)
	if err != nil {
		m.snapMu.Unlock()
		return nil, err
	}
	m.moved = true
	m.snapMu.Unlock()
	m.Close()
	return n, nil
}

// newSuccessor builds m's successor; m's snapMu is held.
func (m *Machine) newSuccessor(hook ExitHook, st *successorState) (*Machine, error) {
	cfg := m.cfg
	cfg.Hook = hook
	n, err := newMachine(cfg)
	if err != nil {
		return nil, err
	}
	n.interrupt = m.interrupt // the NIC's WAIT listens on it
	n.kvm, n.msrIndices, n.hasXsave, n.hasXcrs, n.cpuid = m.kvm, m.msrIndices, m.hasXsave, m.hasXcrs, m.cpuid
	n.mem, n.block, n.nic, n.freshMem = m.mem, m.block, m.nic, m.freshMem
	n.prep = m.prep
	n.restored.Store(m.restored.Load())
	n.moved = true // until it is whole: its release must not free what m still owns
	fail := func(err error) (*Machine, error) {
		n.release()
		return nil, err
	}
	// A VM and vCPU made while m ran (successorPrep), else made here.
	var prepared *kvm.Vcpu
	if n.vm, prepared = n.prep.take(); n.vm == nil {
		if n.vm, err = n.kvm.CreateVM(); err != nil {
			return fail(err)
		}
		if n.kvm.CheckExtension(kvm.CapSetTSSAddr) > 0 {
			if err := n.vm.SetTSSAddr(kvmTSSAddr); err != nil {
				return fail(err)
			}
		}
		if err := n.vm.SetUserMemoryRegion(0, kvm.MemLogDirtyPages, 0, n.mem.buf); err != nil {
			return fail(err)
		}
	}
	n.kvcpu = prepared // released with n.vm if what follows fails
	n.dirty = n.vm
	n.dirtyWords = make([]uint64, len(m.dirtyWords))
	n.dirtyAcc = m.dirtyAcc // the old VM's log, fetched: the new one's starts empty
	n.disp = &dispatcher{mem: n.mem, hook: hook, devs: m.disp.devs, next: m.disp.next, halted: st.halted, exitCode: st.exitCode}
	n.disp.guestErrors.Store(m.disp.guestErrors.Load())
	glog := &guestErrorLog{log: cfg.Logger}
	observer, _ := hook.(GuestErrorObserver)
	n.disp.onGuestError = func(ge *GuestError) {
		glog.report(ge)
		if observer != nil {
			observer.OnGuestError(ge)
		}
	}
	n.haveBase, n.chainID, n.seq, n.fuzzy, n.unclean = m.haveBase, m.chainID, m.seq, m.fuzzy, st.unclean
	n.status = Status{State: Paused, Exits: m.disp.next}
	if st.halted {
		n.status.State, n.status.ExitCode = Halted, st.exitCode
	}
	err = n.start(func() error {
		if prepared != nil {
			n.vcpu = prepared
		} else if err := n.createVcpu(); err != nil {
			return err
		}
		if st.haveRegs {
			return n.restoreVCPU(st.vcpu)
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	m.dirtyAcc = nil
	n.moved = false
	return n, nil
}

// StateHash hashes (SHA-256) the state of a VM that is not running: all
// of memory, the vCPU's registers (regs, sregs, FPU or XSAVE, XCRs,
// events, the saved MSRs but the TSC, which runs in host time), every
// device's saved state but the clock's (the guest clock runs while the VM
// is paused), the exit count, halt state and exit code, and the disk's
// contents (none for a shared disk). Two VMs with the same hash are in the
// same state, as far as a snapshot can tell; for tests and for proofs.
func (m *Machine) StateHash() ([32]byte, error) {
	var sum [32]byte
	parts, err := m.StateHashParts()
	if err != nil {
		return sum, err
	}
	h := sha256.New()
	h.Write([]byte("ftvm state hash 2"))
	for _, p := range parts {
		h.Write([]byte(p.Name))
		h.Write(p.Sum[:])
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// StatePart is one part of StateHash: its name ("memory", "regs",
// "xsave", "events", "msrs", a device's name, "exits", "disk" and so on)
// and the SHA-256 of its bytes.
type StatePart struct {
	Name string
	Sum  [32]byte
}

// StateHashParts hashes each part of the state StateHash covers on its
// own, in a fixed order, so that a test whose two VMs differ can say
// where.
func (m *Machine) StateHashParts() ([]StatePart, error) {
	var parts []StatePart
	err := m.do(func() error {
		add := func(name string, write func(h hash.Hash) error) error {
			h := sha256.New()
			if err := write(h); err != nil {
				return err
			}
			var p StatePart
			p.Name = name
			copy(p.Sum[:], h.Sum(nil))
			parts = append(parts, p)
			return nil
		}
		put := func(h hash.Hash, v uint64) { h.Write(le.AppendUint64(nil, v)) }
		blob := func(b []byte) func(h hash.Hash) error {
			return func(h hash.Hash) error { put(h, uint64(len(b))); h.Write(b); return nil }
		}
		add("memory", func(h hash.Hash) error { put(h, m.mem.Size()); h.Write(m.mem.buf); return nil })
		v, err := m.saveVCPU()
		if err != nil {
			return err
		}
		regs, err := v.marshalRegs()
		if err != nil {
			return err
		}
		add("regs", blob(regs))
		add("fpu", blob(v.FPU))
		add("xsave", blob(v.XSAVE))
		add("xcrs", blob(v.XCRs))
		add("events", blob(v.Events))
		for _, msr := range v.MSRs {
			if msr.Index == msrTSC {
				continue
			}
			add(fmt.Sprintf("msr %#x", msr.Index), func(h hash.Hash) error { put(h, msr.Value); return nil })
		}
		for d := DeviceConsole; d <= DeviceHalt; d++ {
			if d == DeviceClock {
				continue
			}
			st, err := m.disp.devs[d].saveState()
			if err != nil {
				return err
			}
			add(d.String(), blob(st))
		}
		add("exits", func(h hash.Hash) error {
			put(h, m.disp.next)
			if m.disp.halted {
				put(h, 1)
			} else {
				put(h, 0)
			}
			put(h, m.disp.exitCode)
			return nil
		})
		return add("disk", func(h hash.Hash) error { return m.block.hashDisk(h) })
	})
	return parts, err
}

// msrTSC is IA32_TSC, left out of StateHash.
const msrTSC = 0x10

// marshalRegs encodes the registers as a snapshot does.
func (v *VCPUState) marshalRegs() ([]byte, error) {
	b, err := binary.Append(nil, le, &v.Regs)
	if err != nil {
		return nil, err
	}
	return binary.Append(b, le, &v.Sregs)
}

// hashDisk writes the disk's size and contents to h, under mu.
func (b *blockDevice) hashDisk(h interface{ Write([]byte) (int, error) }) error {
	h.Write(le.AppendUint64(nil, b.size()))
	if b.f == nil || b.shared {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < b.size(); off += uint64(len(buf)) {
		p := buf[:min(uint64(len(buf)), b.size()-off)]
		if _, err := b.f.ReadAt(p, int64(off)); err != nil {
			return fmt.Errorf("hashing the disk %s at byte %d: %w", b.f.Name(), off, err)
		}
		h.Write(p)
	}
	return nil
}

// spareBuffer is the buffer a VM that takes snapshots keeps ready for
// the encoding of its next resync increment (SnapshotCovering places the
// increment's pages straight into it). Memory the process has not
// touched yet costs a page fault per 4 KiB on first write, 4 to 5 µs
// each on these hosts (KVM in a VM): 4 ms for a fresh buffer of 1,000
// pages, most of a resync's pause. So the buffer is made, and every page
// of it written, while the VM runs (AtLowPriority, on an otherwise idle
// CPU, from Resume: prepareAhead), and the pause finds it resident.
//
// A buffer is handed to one snapshot and never again: the caller keeps
// the encoding (the node ships it and may send it again), and no bytes
// of one increment can leak into another. After a covering snapshot the
// next spare is sized as that one's encoding (at least
// spareMinBytes, at most spareMaxBytes), so a resync as large as the
// last one finds its buffer ready.
type spareBuffer struct {
	mu        sync.Mutex
	buf       []byte // every page written; nil: none ready
	preparing bool   // a goroutine is making one
	closed    bool   // the VM is closed: make no more
	want      int    // the size the next one is made
}

// spareMinBytes is the least size of a spare: an increment of 1,024
// pages, with room for the registers, devices and a few disk chunks.
const spareMinBytes = 1024*(PageBytes+8) + 64<<10

// spareMaxBytes bounds the spare a VM keeps after a large resync: an
// encoding larger than this is made fresh, in the pause, as before.
const spareMaxBytes = 64 << 20

// spareSmallBytes is the size below which an encoding is made fresh,
// not from the spare: its few page faults (64 at most) cost less than
// the spare made again beside the guest.
const spareSmallBytes = 256 << 10

// spareHandedTwice is a planted bug for the tests, which must catch it:
// the spare stays after it is handed to a snapshot, so the next
// increment is encoded over the previous one's bytes.
var spareHandedTwice = false

// take returns a buffer of n bytes for an encoding: the spare if it is
// ready and large enough and n is not small (from now on the caller's
// alone), else a new one.
func (sp *spareBuffer) take(n int) []byte {
	if n < spareSmallBytes {
		return make([]byte, n)
	}
	sp.mu.Lock()
	b := sp.buf
	if cap(b) >= n && !spareHandedTwice {
		sp.buf = nil
	}
	sp.mu.Unlock()
	if cap(b) >= n {
		return b[:n:n]
	}
	return make([]byte, n)
}

// size sets the size of the next spare from used, that of the encoding
// just made (0: none; the next is then spareMinBytes at least), without
// making it: prepare does, once the VM runs.
func (sp *spareBuffer) size(used int) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.sizeLocked(used)
}

func (sp *spareBuffer) sizeLocked(used int) {
	if used > 0 {
		sp.want = min(max(used, spareMinBytes), spareMaxBytes)
	}
	sp.want = max(sp.want, spareMinBytes)
}

// wanted says whether a snapshot sized a spare (size or prepare).
func (sp *spareBuffer) wanted() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.want > 0
}

// prepare makes a spare in the background if none is ready or being
// made; used is as in size. It does not wait.
func (sp *spareBuffer) prepare(used int) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.sizeLocked(used)
	if sp.closed || sp.preparing || cap(sp.buf) >= sp.want {
		return
	}
	sp.preparing = true
	n := sp.want
	go AtLowPriority(func() {
		b := make([]byte, n)
		// Written, not only allocated: a fresh allocation's pages are
		// faulted in on first write.
		for i := 0; i < len(b); i += PageBytes {
			b[i] = 0
		}
		sp.mu.Lock()
		defer sp.mu.Unlock()
		sp.preparing = false
		if !sp.closed && cap(b) > cap(sp.buf) {
			sp.buf = b
		}
	})
}

// close drops the spare; a spare being made is dropped when done.
func (sp *spareBuffer) close() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.closed, sp.buf = true, nil
}
