package vmm

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// abandonHook is LiveHook until abandon is set; then it gives up the next
// exit, as a replaying hook told to abandon its VM does (the agent's
// errAborted), and the VM fails in the middle of that exit.
type abandonHook struct {
	abandon atomic.Bool
	// onAbandon, if set, runs in the exit given up, before it fails: where
	// a secondary's node asks its VM for its dirty set.
	onAbandon func()
}

var errAbandoned = errors.New("exit abandoned: the VM is being replaced")

func (h *abandonHook) OnExit(e *Exit) (Result, error) {
	if h.abandon.Load() {
		if h.onAbandon != nil {
			h.onAbandon()
		}
		return Result{}, errAbandoned
	}
	return LiveHook{}.OnExit(e)
}

// resyncSide is one VM of a resync test: kvstore over a UDP NIC with a
// disk of its own.
type resyncSide struct {
	m    *Machine
	c    *kvClient
	peer *net.UDPConn
	nic  *UDPNIC
	disk *os.File
	hook *abandonHook
}

const resyncMemBytes = 32 << 20

func newResyncSide(t *testing.T, name string) *resyncSide {
	t.Helper()
	s := &resyncSide{hook: &abandonHook{}}
	s.nic, s.peer = udpPeer(t)
	var err error
	if s.disk, err = os.Create(filepath.Join(t.TempDir(), name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.disk.Close() })
	if err := s.disk.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	s.m = newTestVM(t, Config{MemSizeBytes: resyncMemBytes, NIC: s.nic, Disk: s.disk, Hook: s.hook})
	s.c = newKVClient(t, s.peer, s.nic.LocalAddr())
	return s
}

func (s *resyncSide) put(t *testing.T, id int, key, val string) {
	t.Helper()
	if r := s.c.do(t, itoa(uint64(id))+" PUT "+key+" "+val); !strings.Contains(r, " OK ") {
		t.Fatalf("PUT %s %s answered %q", key, val, r)
	}
}

func (s *resyncSide) get(t *testing.T, id int, key string) string {
	t.Helper()
	// Short answers come in frames padded to 60 bytes.
	r := strings.TrimSpace(strings.TrimRight(s.c.do(t, itoa(uint64(id))+" GET "+key), "\x00"))
	return strings.TrimPrefix(r, itoa(uint64(id))+" ")
}

func mustHash(t *testing.T, m *Machine) [32]byte {
	t.Helper()
	h, err := m.StateHash()
	if err != nil {
		t.Fatalf("StateHash: %v", err)
	}
	return h
}

// vmmWrite writes guest memory as the VMM does (a device's result), on a
// VM that is not running.
func vmmWrite(t *testing.T, m *Machine, addr uint64, data []byte) {
	t.Helper()
	if err := m.do(func() error { return m.mem.Write(addr, data) }); err != nil {
		t.Fatal(err)
	}
}

// markerAddr is a page no guest here uses (between the boot info and the
// image), the lowest that a test's VMM write dirties.
const markerAddr = 0x300000

// diverge makes two kvstore VMs from one snapshot and runs them apart:
// a, the primary, serves some PUTs and is paused; b, the secondary,
// serves others, gets a block write delivered (as a secondary's persist
// is), and fails an exit its hook gives up. It returns them with b's
// dirty set.
func diverge(t *testing.T) (a, b *resyncSide) {
	image := guestELF(t, "kvstore")
	a, b = newResyncSide(t, "a"), newResyncSide(t, "b")
	mustLoad(t, a.m, image)
	if err := a.m.Resume(0); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		a.put(t, i, "k"+itoa(uint64(i)), "base"+itoa(uint64(i)))
	}
	if err := a.m.Pause(); err != nil {
		t.Fatal(err)
	}
	base, err := a.m.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.m.Restore(encodeDecode(t, base)); err != nil {
		t.Fatal(err)
	}
	if mustHash(t, a.m) != mustHash(t, b.m) {
		t.Fatal("a VM and the one restored from its full snapshot hash differently")
	}
	for _, s := range []*resyncSide{a, b} {
		if err := s.m.Resume(0); err != nil {
			t.Fatal(err)
		}
	}
	for i := 10; i < 15; i++ {
		a.put(t, i, "a"+itoa(uint64(i)), "primary"+itoa(uint64(i)))
		b.put(t, i, "b"+itoa(uint64(i)), "secondary"+itoa(uint64(i)))
	}
	a.put(t, 20, "k1", "changed-on-the-primary")
	if err := a.m.Pause(); err != nil {
		t.Fatal(err)
	}
	vmmWrite(t, a.m, markerAddr, []byte("written by the primary's VMM only"))

	// A persisted write reaches b's disk by Deliver (or Release, which
	// performs it the same way): in a sector no guest write touched.
	const persistSector = 1<<20/BlockSectorBytes - 8
	if err := b.m.Deliver(DeviceBlock, OpBlockWrite, persistSector, bytes.Repeat([]byte{0xee}, BlockSectorBytes)); err != nil {
		t.Fatal(err)
	}
	// b goes off the rails: its hook gives up the next exit (the frame
	// below wakes its WAIT; the RX after it is given up).
	var inHook *DirtySet
	var inHookErr error
	b.hook.onAbandon = func() { inHook, inHookErr = b.m.DirtySinceBase() }
	b.hook.abandon.Store(true)
	f := udpFrame(DefaultMAC, b.c.mac, b.c.ip, b.c.guest, 40000, kvGuestPort, []byte("30 GET k1"))
	setUDPChecksum(f)
	if _, err := b.peer.WriteToUDP(f, b.nic.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if st := b.m.Wait(); st.State != Failed || !errors.Is(st.Err, errAbandoned) {
		t.Fatalf("secondary after its hook gave up an exit: %+v, want Failed with the hook's error", st)
	}
	if inHookErr != nil || inHook == nil || len(inHook.Pages) == 0 {
		t.Fatalf("DirtySinceBase from the exit hook: %+v %v", inHook, inHookErr)
	}
	d, err := b.m.DirtySinceBase()
	if err != nil {
		t.Fatal(err)
	}
	if c := uint64(persistSector * BlockSectorBytes / DiskChunkBytes); !containsSorted(d.Chunks, c) {
		t.Fatalf("the chunk %d a delivered write reached is not in the secondary's dirty set %v", c, d.Chunks)
	}
	if len(d.Pages) == 0 {
		t.Fatal("the secondary's dirty set has no pages, though its guest served requests")
	}
	if mustHash(t, a.m) == mustHash(t, b.m) {
		t.Fatal("the two VMs hash alike after serving different requests")
	}
	return a, b
}

func containsSorted(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// resync runs the incremental path from b's dirty set to its successor
// restored from a's covering increment.
func resync(t *testing.T, a, b *resyncSide) *Machine {
	t.Helper()
	d, err := b.m.DirtySinceBase()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	other, err := UnmarshalDirtySet(blob)
	if err != nil {
		t.Fatal(err)
	}
	inc, err := a.m.SnapshotCovering(other, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inc.Kind != Incremental {
		t.Fatalf("covering snapshot is %s", inc.Kind)
	}
	next, err := b.m.Successor(&abandonHook{})
	if err != nil {
		t.Fatalf("Successor of the failed secondary: %v", err)
	}
	t.Cleanup(func() { next.Close() })
	// The dirty bits came along (KVM's log of the old VM among them).
	if dn, err := next.DirtySinceBase(); err != nil || !equalU64(dn.Pages, d.Pages) || !equalU64(dn.Chunks, d.Chunks) || dn.Seq != d.Seq || dn.ChainID != d.ChainID {
		t.Fatalf("the successor's dirty set %+v (%v) is not its predecessor's %+v", dn, err, d)
	}
	if st := b.m.Status(); st.State != Closed {
		t.Fatalf("the predecessor is %s after Successor, want closed", st.State)
	}
	if err := next.Resume(0); err == nil || !strings.Contains(err.Error(), "clean point") {
		t.Fatalf("Resume of the successor of a failed VM before a restore: %v, want a refusal", err)
	}
	if err := next.Restore(encodeDecode(t, inc)); err != nil {
		t.Fatalf("Restore of the covering increment on the successor: %v", err)
	}
	// The restore is the new base: nothing is dirty since.
	if dn, err := next.DirtySinceBase(); err != nil || len(dn.Pages)+len(dn.Chunks) != 0 || dn.Seq != inc.Seq {
		t.Fatalf("after the restore the successor's dirty set is %+v (%v), want empty at seq %d", dn, err, inc.Seq)
	}
	return next
}

// TestKVMIncrementalResync is the incremental resynchronisation on real
// KVM: two kvstore VMs from one snapshot serve different requests (memory
// and disk), the secondary fails an exit; the primary's increment
// covering both sides' changes, restored on the secondary's successor,
// makes the two hash alike (memory, registers, devices, disk), and the
// successor serves on over the same NIC backend as the primary does.
func TestKVMIncrementalResync(t *testing.T) {
	a, b := diverge(t)
	next := resync(t, a, b)
	if ha, hb := mustHash(t, a.m), mustHash(t, next); ha != hb {
		t.Fatalf("after the incremental resync the primary hashes %x, the secondary %x", ha[:8], hb[:8])
	}
	b.m = next
	for _, s := range []*resyncSide{a, b} {
		if err := s.m.Resume(0); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*resyncSide{a, b} {
		for _, q := range []struct{ key, want string }{
			{"k1", "VAL 2 changed-on-the-primary"}, {"k3", "VAL 1 base3"}, {"a12", "VAL 1 primary12"}, {"b12", "NONE"},
		} {
			if got := s.get(t, 40, q.key); got != q.want {
				t.Fatalf("GET %s answered %q after the resync, want %q", q.key, got, q.want)
			}
		}
		s.put(t, 41, "after", "resync")
		if got := s.get(t, 42, "after"); got != "VAL 1 resync" {
			t.Fatalf("GET after answered %q", got)
		}
	}
}

// TestKVMIncrementalResyncMissingPageIsCaught plants a covering snapshot
// that leaves out one page the primary changed: the secondary's restore
// cannot notice (it did not change the page), and the state hashes must.
func TestKVMIncrementalResyncMissingPageIsCaught(t *testing.T) {
	a, b := diverge(t)
	coveringLeavesOutOwnPage = true
	defer func() { coveringLeavesOutOwnPage = false }()
	next := resync(t, a, b)
	if mustHash(t, a.m) == mustHash(t, next) {
		t.Fatal("a covering increment one page short left the VMs hashing alike: StateHash (or the test) misses it")
	}
	got, err := next.ReadMemory(markerAddr, 8)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 8)) {
		t.Fatalf("the page left out holds %q on the secondary; the planted bug did not leave it out", got)
	}
}

// TestKVMIncrementalResyncRefusals: a covering snapshot on another base
// is refused (ErrBaseMismatch) and consumes nothing; an increment that
// lacks a page the secondary wrote after it sent its dirty set is refused
// (ErrNotCovered) and changes nothing, and a full snapshot then does the
// resync; a paused VM's successor runs on as the VM would have.
func TestKVMIncrementalResyncRefusals(t *testing.T) {
	const total, at = 40, 17
	var conA, conB syncBuffer
	a := newTestVM(t, Config{Console: &conA, MemSizeBytes: 16 << 20})
	b := newTestVM(t, Config{Console: &conB, MemSizeBytes: 16 << 20})
	mustLoad(t, a, counterProgram(total))
	if st, err := a.Run(at); err != nil || st.State != Paused {
		t.Fatalf("Run(%d): %+v %v", at, st, err)
	}
	base, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DirtySinceBase(); err == nil {
		t.Fatal("DirtySinceBase on a VM with no base succeeded")
	}
	if err := b.Restore(base); err != nil {
		t.Fatal(err)
	}
	// The primary runs on a little (the guest writes its page), and both
	// VMMs write a page of their own.
	const ran = at + 3
	if st, err := a.Run(ran); err != nil || st.State != Paused {
		t.Fatalf("Run(%d): %+v %v", ran, st, err)
	}
	vmmWrite(t, a, markerAddr, []byte("primary"))
	vmmWrite(t, b, markerAddr+2*PageBytes, []byte("secondary"))
	// A peek on the primary fetches KVM's log: the increment must still
	// hold what it fetched.
	own, err := a.DirtySinceBase()
	if err != nil {
		t.Fatal(err)
	}
	if len(own.Pages) < 2 || !containsSorted(own.Pages, markerAddr/PageBytes) {
		t.Fatalf("the primary's dirty pages %v lack its guest's page or its VMM's %d", own.Pages, markerAddr/PageBytes)
	}
	d, err := b.DirtySinceBase()
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{markerAddr/PageBytes + 2}; !equalU64(d.Pages, want) {
		t.Fatalf("secondary's dirty pages %v, want %v", d.Pages, want)
	}
	// Peeking consumes nothing: again, the same.
	if d2, err := b.DirtySinceBase(); err != nil || !equalU64(d2.Pages, d.Pages) {
		t.Fatalf("a second DirtySinceBase: %v %v, want %v", d2, err, d.Pages)
	}

	for name, wrong := range map[string]DirtySet{
		"seq":   {ChainID: d.ChainID, Seq: d.Seq + 1, MemSize: d.MemSize},
		"chain": {ChainID: d.ChainID + 1, Seq: d.Seq, MemSize: d.MemSize},
		"size":  {ChainID: d.ChainID, Seq: d.Seq, MemSize: d.MemSize * 2},
	} {
		if _, err := a.SnapshotCovering(&wrong, nil); !errors.Is(err, ErrBaseMismatch) {
			t.Fatalf("SnapshotCovering with another %s: %v, want ErrBaseMismatch", name, err)
		}
	}
	// After the refusals the primary's own page is still to be shipped.
	inc, err := a.SnapshotCovering(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(slices.Clone(own.Pages), markerAddr/PageBytes+2); !equalU64(inc.PageNumbers, slices.Sorted(slices.Values(want))) {
		t.Fatalf("covering increment holds pages %v, want %v (the primary's and the secondary's)", inc.PageNumbers, want)
	}

	// The secondary writes a page after it sent its dirty set.
	vmmWrite(t, b, markerAddr+5*PageBytes, []byte("late"))
	before := mustHash(t, b)
	err = b.Restore(inc)
	if !errors.Is(err, ErrNotCovered) {
		t.Fatalf("Restore of an increment lacking a page the VM wrote: %v, want ErrNotCovered", err)
	}
	if mustHash(t, b) != before {
		t.Fatal("a refused restore changed the VM")
	}
	if st := b.Status(); st.State != Paused {
		t.Fatalf("after a refused restore the VM is %s", st.State)
	}
	// The fallback: a full snapshot.
	full, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(full); err != nil {
		t.Fatal(err)
	}
	if d, err := b.DirtySinceBase(); err != nil || len(d.Pages) != 0 {
		t.Fatalf("after a full restore the VM's dirty set is %+v (%v), want empty", d, err)
	}
	if mustHash(t, a) != mustHash(t, b) {
		t.Fatalf("after the full fallback the VMs hash differently: %s; %x %x %x %x", stateDiff(t, a, b), mustHash(t, a), mustHash(t, a), mustHash(t, b), mustHash(t, b))
	}

	// A paused VM's successor runs on: same exits, same output.
	next, err := b.Successor(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if mustHash(t, next) != mustHash(t, a) {
		t.Fatal("a paused VM's successor hashes differently from it")
	}
	beforeA := conA.String()
	for _, m := range []*Machine{a, next} {
		if st, err := m.Run(0); err != nil || st.State != Halted || st.Exits != total+1 {
			t.Fatalf("run to the end: %+v %v", st, err)
		}
	}
	if after := strings.TrimPrefix(conA.String(), beforeA); after != conB.String() || strings.Count(after, "\n") != total-ran {
		t.Fatalf("after the snapshot the VM printed %q, the successor %q", after, conB.String())
	}
	// And the successor of a halted VM is halted.
	last, err := next.Successor(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	if st := last.Status(); st.State != Halted || st.ExitCode != 0 || st.Exits != total+1 {
		t.Fatalf("successor of a halted VM: %+v", st)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// stateDiff says where two VMs' states differ, in the parts StateHash
// covers, for a failure message.
func stateDiff(t *testing.T, a, b *Machine) string {
	t.Helper()
	var out []string
	ma, _ := a.ReadMemory(0, a.MemSize())
	mb, _ := b.ReadMemory(0, b.MemSize())
	if !bytes.Equal(ma, mb) {
		out = append(out, "memory from byte "+itoa(uint64(firstDiff(ma, mb))))
	}
	va, _ := a.VCPUState()
	vb, _ := b.VCPUState()
	if va.Regs != vb.Regs || va.Sregs != vb.Sregs {
		out = append(out, "regs or sregs")
	}
	if !bytes.Equal(va.XSAVE, vb.XSAVE) || !bytes.Equal(va.FPU, vb.FPU) || !bytes.Equal(va.XCRs, vb.XCRs) || !bytes.Equal(va.Events, vb.Events) {
		out = append(out, "xsave, fpu, xcrs or events")
	}
	for i := range min(len(va.MSRs), len(vb.MSRs)) {
		if va.MSRs[i] != vb.MSRs[i] && va.MSRs[i].Index != msrTSC {
			out = append(out, "MSR "+itoa(uint64(va.MSRs[i].Index)))
		}
	}
	a.do(func() error {
		return b.do(func() error {
			for d := DeviceConsole; d <= DeviceHalt; d++ {
				x, _ := a.disp.devs[d].saveState()
				y, _ := b.disp.devs[d].saveState()
				if d != DeviceClock && !bytes.Equal(x, y) {
					out = append(out, d.String()+" state")
				}
			}
			if a.disp.next != b.disp.next || a.disp.halted != b.disp.halted || a.disp.exitCode != b.disp.exitCode {
				out = append(out, "exit count or halt")
			}
			return nil
		})
	})
	return strings.Join(out, ", ")
}
