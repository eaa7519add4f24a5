package agent

import (
	"context"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// newJoiningUnitAgent is a secondary with no VM yet whose NewVM logs
// "new-vm" before the VM's own operations.
func newJoiningUnitAgent(t *testing.T, log *opLog) *Agent {
	t.Helper()
	a, err := New(Config{
		Node: lockstep.Config{VMID: testVMID, Role: wire.RoleSecondary, Mode: lockstep.AckOnCompare, PrecopyRounds: 2},
		NewVM: func(vmm.ExitHook) (VM, error) {
			log.add("new-vm")
			return &loggedVM{log: log, state: vmm.Paused}, nil
		},
		Arbiter: arbiter.NewMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.tr = &loggedTransport{log: log}
	return a
}

// chainPart encodes a snapshot of a pre-copy chain: seq 0 is the full
// first part, each later one an increment over the one before.
func chainPart(t *testing.T, seq uint64, live bool) []byte {
	t.Helper()
	s := &vmm.Snapshot{Kind: vmm.Full, MemSize: 8 << 20, ChainID: 7, Live: live}
	if seq > 0 {
		s.Kind, s.Seq, s.BaseSeq = vmm.Incremental, seq, seq-1
	}
	if !live {
		s.VCPUs = make([]vmm.VCPUState, 1)
	}
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// opsAfter is what the VMs did from the first op named from on.
func opsAfter(l *opLog, from string) []string {
	i := slices.Index(l.ops, from)
	if i < 0 {
		return nil
	}
	return l.ops[i:]
}

// The parts of a chain a joiner loaded as they came (CmdLoadPart) are not
// loaded again: the restore that ends the chain, during which the primary
// is paused, creates no VM and restores only the paused increment.
func TestRestoreLoadsOnlyWhatFollowsThePartsLoaded(t *testing.T) {
	log := &opLog{}
	a := newJoiningUnitAgent(t, log)
	ctx := context.Background()
	p1, p2, end := chainPart(t, 0, true), chainPart(t, 1, true), chainPart(t, 2, false)
	for id, p := range [][]byte{p1, p2} {
		if err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdLoadPart, Checkpoint: lockstep.Checkpoint{ID: uint64(id + 1), Full: id == 0, Data: p}}); err != nil {
			t.Fatalf("load-part %d: %v", id+1, err)
		}
	}
	if want := []string{"new-vm", "restore", "restore"}; !slices.Equal(log.ops, want) {
		t.Fatalf("loading two parts: %q, want %q", log.ops, want)
	}
	log.add("restore-command")
	err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdRestoreCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 3, Full: true, Data: end, Parts: [][]byte{p1, p2}}})
	// This node was never sent the checkpoint: it refuses the
	// confirmation, after the VM did its work.
	if err == nil || !strings.Contains(err.Error(), "CheckpointRestored") {
		t.Fatalf("restore: %v, want the node's refusal of the confirmation", err)
	}
	if got, want := opsAfter(log, "restore-command"), []string{"restore-command", "restore"}; !slices.Equal(got, want) {
		t.Fatalf("restore after two parts loaded: %q, want %q (the paused increment only, into the VM loaded)", got, want)
	}
	if a.vm == nil || a.joinVM != nil {
		t.Fatalf("after the restore: vm %v, joinVM %v: want the loaded VM adopted", a.vm, a.joinVM)
	}
}

// What was loaded ahead that does not start the chain being restored (a
// part missed, or another chain) is dropped: the whole chain goes into a
// new VM, as without loading ahead.
func TestRestoreOfAnotherChainStartsAfresh(t *testing.T) {
	log := &opLog{}
	a := newJoiningUnitAgent(t, log)
	ctx := context.Background()
	p1, p2, end := chainPart(t, 0, true), chainPart(t, 1, true), chainPart(t, 2, false)
	// Part 5 of a chain from 5, then a restore of the chain from 1.
	if err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdLoadPart, Checkpoint: lockstep.Checkpoint{ID: 5, Full: true, Data: p1}}); err != nil {
		t.Fatal(err)
	}
	// An increment that does not follow what is loaded is not loaded.
	if err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdLoadPart, Checkpoint: lockstep.Checkpoint{ID: 7, Data: p2}}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"new-vm", "restore", "close"}; !slices.Equal(log.ops, want) {
		t.Fatalf("a part, then one that does not follow it: %q, want %q", log.ops, want)
	}
	log.add("restore-command")
	_ = a.command(ctx, lockstep.Command{Kind: lockstep.CmdRestoreCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 3, Full: true, Data: end, Parts: [][]byte{p1, p2}}})
	if got, want := opsAfter(log, "restore-command"), []string{"restore-command", "new-vm", "restore", "restore", "restore"}; !slices.Equal(got, want) {
		t.Fatalf("restore of a chain not loaded: %q, want %q", got, want)
	}
}

// policyVM is a loggedVM whose restores record the scheduling policy of
// the thread they run on.
type policyVM struct {
	loggedVM
	policies *[]uint32
}

func (v *policyVM) Restore(s *vmm.Snapshot) error {
	a, err := unix.SchedGetAttr(unix.Gettid(), 0)
	if err != nil {
		return err
	}
	*v.policies = append(*v.policies, a.Policy)
	return v.loggedVM.Restore(s)
}

// A joiner loads pre-copy parts beside the primary's running guest,
// which waits for none of it: where both hosts share CPUs, a load at the
// loop's priority took the primary's vCPU thread's CPU, and the client
// went silent for as long as the load (up to 46 ms for an 0.8 MB part).
// The restore that ends the chain is what the paused primary waits for:
// it keeps the loop's priority.
func TestPartsLoadUnderSchedIdleAndTheChainEndDoesNot(t *testing.T) {
	log := &opLog{}
	var policies []uint32
	a, err := New(Config{
		Node: lockstep.Config{VMID: testVMID, Role: wire.RoleSecondary, Mode: lockstep.AckOnCompare, PrecopyRounds: 2},
		NewVM: func(vmm.ExitHook) (VM, error) {
			return &policyVM{loggedVM: loggedVM{log: log, state: vmm.Paused}, policies: &policies}, nil
		},
		Arbiter: arbiter.NewMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.tr = &loggedTransport{log: log}
	ctx := context.Background()
	p1, p2, end := chainPart(t, 0, true), chainPart(t, 1, true), chainPart(t, 2, false)
	for id, p := range [][]byte{p1, p2} {
		if err := a.command(ctx, lockstep.Command{Kind: lockstep.CmdLoadPart, Checkpoint: lockstep.Checkpoint{ID: uint64(id + 1), Full: id == 0, Data: p}}); err != nil {
			t.Fatalf("load-part %d: %v", id+1, err)
		}
	}
	a.command(ctx, lockstep.Command{Kind: lockstep.CmdRestoreCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 3, Full: true, Data: end, Parts: [][]byte{p1, p2}}})
	want := []uint32{unix.SCHED_IDLE, unix.SCHED_IDLE, unix.SCHED_NORMAL}
	if !slices.Equal(policies, want) {
		t.Fatalf("restores ran under policies %v, want %v (SCHED_IDLE %d: the parts loaded ahead; SCHED_NORMAL %d: the chain's end)", policies, want, unix.SCHED_IDLE, unix.SCHED_NORMAL)
	}
}
