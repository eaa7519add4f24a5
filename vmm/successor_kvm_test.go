package vmm

import (
	"fmt"
	"testing"
	"time"
)

// waitSuccessorPrepared waits (a second at most) for m's successor's VM
// and vCPU to be made in the background (successorPrep) and says whether
// they were.
func waitSuccessorPrepared(m *Machine) bool {
	for deadline := time.Now().Add(time.Second); !m.prep.ready(); time.Sleep(time.Millisecond) {
		if prepareSuccessorOff || time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// waitSpareReady waits (a second at most) for m's spare buffer to be
// made in the background, if one is wanted.
func waitSpareReady(m *Machine) {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		m.spare.mu.Lock()
		ready := !m.spare.preparing && cap(m.spare.buf) >= m.spare.want
		m.spare.mu.Unlock()
		if ready {
			return
		}
	}
}

// preparedSuccessorCheck resyncs a diverged secondary onto a successor
// built on the VM and vCPU prepared while the secondary ran
// (successorPrep) and says what is wrong, if anything: the successor
// must have the prepared VM, the covering increment restored on it must
// make it hash as the primary, and after both serve one more request
// every page the primary's guest wrote must show in the successor's dirty
// set too (KVM's dirty log of the prepared slot).
func preparedSuccessorCheck(t *testing.T) string {
	a, b := diverge(t)
	if !waitSuccessorPrepared(b.m) {
		return "no VM was prepared for the secondary's successor within a second"
	}
	b.m.prep.mu.Lock()
	prepared := b.m.prep.vm
	b.m.prep.mu.Unlock()
	d, err := b.m.DirtySinceBase()
	if err != nil {
		t.Fatal(err)
	}
	inc, err := a.m.SnapshotCovering(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := b.m.Successor(&abandonHook{})
	if err != nil {
		return fmt.Sprintf("Successor with a prepared VM: %v", err)
	}
	t.Cleanup(func() { next.Close() })
	if next.vm != prepared {
		return "the successor made a VM of its own in the pause, not the one prepared"
	}
	if err := next.Restore(encodeDecode(t, inc)); err != nil {
		return fmt.Sprintf("restoring the covering increment on the prepared successor: %v", err)
	}
	if ha, hb := mustHash(t, a.m), mustHash(t, next); ha != hb {
		return fmt.Sprintf("after the resync onto the prepared successor the primary hashes %x, the secondary %x: %s", ha[:8], hb[:8], stateDiff(t, a.m, next))
	}
	b.m = next
	for _, s := range []*resyncSide{a, b} {
		if err := s.m.Resume(0); err != nil {
			t.Fatal(err)
		}
		s.put(t, 50, "after", "prepared")
		if err := s.m.Pause(); err != nil {
			t.Fatal(err)
		}
	}
	da, err := a.m.DirtySinceBase()
	if err != nil {
		t.Fatal(err)
	}
	dn, err := next.DirtySinceBase()
	if err != nil {
		return fmt.Sprintf("the prepared successor's dirty set after its guest ran: %v", err)
	}
	// A new VM's log may hold more (its first run marked pages of the
	// image around those written: a VM made in the pause does too), which
	// only sends more; it must hold every page the guest wrote.
	if p, n := missing(da.Pages, dn.Pages); len(da.Pages) == 0 || n > 0 {
		return fmt.Sprintf("after one PUT on both, the prepared successor's dirty pages %v lack page %d (and %d more) of the primary's %v", dn.Pages, p, n-1, da.Pages)
	}
	return ""
}

// TestKVMPreparedSuccessor: a secondary's successor uses the VM and vCPU
// made while it ran, and the resync onto it is as onto a VM made in the
// pause (preparedSuccessorCheck).
func TestKVMPreparedSuccessor(t *testing.T) { passes(t, preparedSuccessorCheck) }

// TestKVMPreparedSuccessorWithoutDirtyLogIsCaught plants a prepared VM
// whose memory slot logs no dirty pages: the check must see it.
func TestKVMPreparedSuccessorWithoutDirtyLogIsCaught(t *testing.T) {
	caughtWhenPlanted(t, &preparedSlotWithoutDirtyLog, preparedSuccessorCheck, "a prepared slot without dirty logging")
}
