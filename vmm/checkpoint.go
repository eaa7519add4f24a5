package vmm

import (
	"bytes"
	"crypto/rand"
	"fmt"
)

// Snapshot saves the paused (or halted) VM. A Full snapshot starts a new
// chain; an Incremental one holds only the pages written since the
// previous snapshot taken or restored on this VM (KVM's dirty log for the
// guest's writes, the VMM's own bitmap for what devices wrote) and the
// disk chunks written since then.
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
func (m *Machine) Snapshot(kind SnapshotKind) (*Snapshot, error) {
	var s *Snapshot
	err := m.do(func() error {
		var err error
		s, err = m.takeSnapshot(kind)
		return err
	})
	return s, err
}

// Restore loads a snapshot into this VM, which must not be running. A Full
// snapshot needs only the same memory size and a disk of the same size;
// an Incremental one applies only on a VM that is at its base (the
// snapshot it follows in its chain, taken or restored here). The disk's
// chunks are written into this VM's disk file and made durable; a Full
// snapshot first zeroes the whole disk, so that nothing the file held
// before survives. After a restore the VM is Paused (or Halted, if the
// snapshot was) and later increments are taken relative to it.
func (m *Machine) Restore(s *Snapshot) error {
	return m.do(func() error { return m.restoreSnapshot(s) })
}

var zeroPage = make([]byte, PageBytes)

func (m *Machine) takeSnapshot(kind SnapshotKind) (*Snapshot, error) {
	if st := m.Status().State; st != Paused && st != Halted {
		return nil, fmt.Errorf("cannot snapshot a %s VM", st)
	}
	if kind != Full && kind != Incremental {
		return nil, fmt.Errorf("unknown snapshot kind %d", kind)
	}
	if kind == Incremental && !m.haveBase {
		return nil, fmt.Errorf("no base for an incremental snapshot: take (or restore) a full snapshot first")
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
	if err := m.block.saveDisk(kind, s); err != nil {
		return nil, err
	}

	// From here on the dirty bits are consumed: if anything fails, the
	// next snapshot must be full.
	bm := m.dirtyWords
	clear(bm)
	if err := m.dirty.getDirtyLog(0, bm); err != nil {
		m.haveBase = false
		return nil, err
	}
	m.mem.takeVMMDirty(bm)

	if kind == Full {
		var id [8]byte
		rand.Read(id[:])
		s.ChainID = le.Uint64(id[:])
		for p := uint64(0); p < m.mem.Pages(); p++ {
			page := m.mem.buf[p*PageBytes : (p+1)*PageBytes]
			if !bytes.Equal(page, zeroPage) {
				s.PageNumbers = append(s.PageNumbers, p)
			}
		}
	} else {
		s.ChainID, s.Seq, s.BaseSeq = m.chainID, m.seq+1, m.seq
		s.PageNumbers = dirtyPages(bm, m.mem.Pages())
	}
	s.PageData = make([]byte, 0, len(s.PageNumbers)*PageBytes)
	for _, p := range s.PageNumbers {
		s.PageData = append(s.PageData, m.mem.buf[p*PageBytes:(p+1)*PageBytes]...)
	}
	m.haveBase, m.chainID, m.seq = true, s.ChainID, s.Seq
	return s, nil
}

func (m *Machine) restoreSnapshot(s *Snapshot) error {
	// Everything that can be checked is checked before anything changes.
	if s.MemSize != m.mem.Size() {
		return fmt.Errorf("snapshot is of a %d-byte memory; this VM has %d bytes", s.MemSize, m.mem.Size())
	}
	if len(s.VCPUs) != 1 {
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
	devs := map[Device][]byte{}
	for _, d := range s.Devices {
		devs[d.Device] = d.State
	}
	for d := DeviceConsole; d <= DeviceHalt; d++ {
		if _, ok := devs[d]; !ok {
			return fmt.Errorf("snapshot lacks the state of the %s device", d)
		}
	}
	v := s.VCPUs[0]
	if len(v.XSAVE) > 0 && !m.hasXsave {
		return fmt.Errorf("snapshot holds XSAVE state but this host's KVM has no KVM_CAP_XSAVE")
	}
	// A halted VM's last doorbell store may still be pending in KVM:
	// complete it, or KVM would skip an instruction of the restored state
	// on the next run.
	if err := m.completeIO(); err != nil {
		return err
	}

	if s.Kind == Full && !m.freshMem {
		clear(m.mem.buf)
	}
	for i, p := range s.PageNumbers {
		copy(m.mem.buf[p*PageBytes:], s.PageData[i*PageBytes:(i+1)*PageBytes])
	}
	m.freshMem = false
	failed := func(err error) error {
		m.haveBase = false
		err = fmt.Errorf("restore failed half way, the VM state is undefined (restore a full snapshot): %w", err)
		m.setStatus(func(st *Status) { st.State = Failed; st.Err = err })
		return err
	}
	if err := m.block.restoreDisk(s); err != nil {
		return failed(err)
	}
	if err := m.restoreVCPU(v); err != nil {
		return failed(err)
	}
	for d := DeviceConsole; d <= DeviceHalt; d++ {
		if err := m.disp.devs[d].restoreState(devs[d]); err != nil {
			return failed(err)
		}
	}
	m.disp.next, m.disp.halted, m.disp.exitCode = s.NextExit, s.Halted, s.ExitCode
	// The restored memory is the base of the next increment: forget what
	// was dirty before and what the copy itself dirtied.
	if err := m.dirty.getDirtyLog(0, m.dirtyWords); err != nil {
		return failed(err)
	}
	clear(m.mem.vmmDirty)
	m.haveBase, m.chainID, m.seq = true, s.ChainID, s.Seq
	m.setStatus(func(st *Status) {
		st.State, st.Err, st.ExitCode = Paused, nil, s.ExitCode
		if s.Halted {
			st.State = Halted
		}
	})
	return nil
}

func (m *Machine) saveVCPU() (VCPUState, error) {
	var v VCPUState
	var err error
	if v.Regs, err = m.vcpu.getRegs(); err != nil {
		return v, err
	}
	if v.Sregs, err = m.vcpu.getSregs(); err != nil {
		return v, err
	}
	if m.hasXsave {
		if v.XSAVE, err = m.vcpu.getBlob("KVM_GET_XSAVE", ioctlGetXsave, kvmXsaveSize); err != nil {
			return v, err
		}
	} else if v.FPU, err = m.vcpu.getBlob("KVM_GET_FPU", ioctlGetFPU, kvmFPUSize); err != nil {
		return v, err
	}
	if m.hasXcrs {
		if v.XCRs, err = m.vcpu.getBlob("KVM_GET_XCRS", ioctlGetXcrs, kvmXcrsSize); err != nil {
			return v, err
		}
	}
	if v.Events, err = m.vcpu.getBlob("KVM_GET_VCPU_EVENTS", ioctlGetVcpuEvents, kvmVcpuEventsSize); err != nil {
		return v, err
	}
	msrs, err := m.vcpu.getMSRs(m.msrIndices)
	if err != nil {
		return v, err
	}
	for _, e := range msrs {
		v.MSRs = append(v.MSRs, MSR{Index: e.Index, Value: e.Data})
	}
	return v, nil
}

func (m *Machine) restoreVCPU(v VCPUState) error {
	if err := m.vcpu.setSregs(v.Sregs); err != nil {
		return err
	}
	if err := m.vcpu.setRegs(v.Regs); err != nil {
		return err
	}
	if len(v.XCRs) > 0 && m.hasXcrs {
		if err := m.vcpu.setBlob("KVM_SET_XCRS", ioctlSetXcrs, v.XCRs, kvmXcrsSize); err != nil {
			return err
		}
	}
	if len(v.XSAVE) > 0 {
		if err := m.vcpu.setBlob("KVM_SET_XSAVE", ioctlSetXsave, v.XSAVE, kvmXsaveSize); err != nil {
			return err
		}
	} else if len(v.FPU) > 0 {
		if err := m.vcpu.setBlob("KVM_SET_FPU", ioctlSetFPU, v.FPU, kvmFPUSize); err != nil {
			return err
		}
	}
	msrs := make([]kvmMsrEntry, len(v.MSRs))
	for i, e := range v.MSRs {
		msrs[i] = kvmMsrEntry{Index: e.Index, Data: e.Value}
	}
	if err := m.vcpu.setMSRs(msrs); err != nil {
		return err
	}
	if len(v.Events) > 0 {
		return m.vcpu.setBlob("KVM_SET_VCPU_EVENTS", ioctlSetVcpuEvents, v.Events, kvmVcpuEventsSize)
	}
	return nil
}
