package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Pre-copy end to end, on real guests: live snapshots taken while the
// guest runs, a paused increment, and the chain restored into a fresh VM
// that must be the source at the pause, memory page by page, registers,
// devices and disk, and must run on to the same end.

// precopyMemstressCmdline dirties a 32 MiB working set, 16 pages per
// iteration, in a stride that comes back to a page only after 512
// iterations: pages written during a copy are seldom written again soon,
// so a copy that loses them shows. It runs for about a second, well past
// the pre-copy.
const precopyMemstressCmdline = "pages=8192 iters=20000 dirty=16 pattern=stride stride=13 seed=5"

const precopyMemBytes = 64 << 20

// precopy takes the pre-copy chain of a running VM: a live full snapshot
// and liveIncs live increments while it runs, then the pause and the
// paused increment, and passes each through the encoding (after the
// pause, so that the guest's run between the snapshots is not stretched
// by the coding of 32 MB). progress counts what the guest has done
// (console lines, exits): it must grow during the live full snapshot, or
// the copy did not overlap the guest's run.
func precopy(t *testing.T, m *Machine, liveIncs int, progress func() uint64) []*Snapshot {
	t.Helper()
	var chain []*Snapshot
	for i := 0; i <= liveIncs; i++ {
		kind := Incremental
		if i == 0 {
			kind = Full
		}
		before := progress()
		s, err := m.SnapshotLive(kind)
		if err != nil {
			t.Fatalf("live %s snapshot: %v", kind, err)
		}
		ran := progress() - before
		if st := m.Status().State; st != Running {
			t.Fatalf("the VM is %v after live snapshot %d; it was to run throughout (raise the guest's iteration count)", st, i)
		}
		if !s.Live || s.Kind != kind || len(s.VCPUs) != 0 || len(s.Devices) != 0 || s.Seq != uint64(i) {
			t.Fatalf("live snapshot %d: live %v kind %v, %d vCPUs, %d devices, seq %d", i, s.Live, s.Kind, len(s.VCPUs), len(s.Devices), s.Seq)
		}
		t.Logf("live %s snapshot: %d pages, %d disk chunks; the guest went %d steps on meanwhile", kind, s.Pages(), s.Chunks(), ran)
		if i == 0 && ran == 0 {
			t.Fatal("the guest made no progress during the live full snapshot: it did not run while its memory was copied")
		}
		chain = append(chain, s)
	}
	// Two steps more before the pause: the guest's second step from now
	// is all done after the last live copy began, so the paused increment
	// is never empty and the chain without it never whole (a quick last
	// copy and pause can fall within one device exit of the guest).
	waitProgress(t, "the guest's steps after the last live snapshot", progress, progress()+2)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if st := m.Status(); st.State != Paused {
		t.Fatalf("after Pause: %+v; the guest ended before the pause (raise its iteration count)", st)
	}
	last, err := m.Snapshot(Incremental)
	if err != nil {
		t.Fatalf("paused increment after the live ones: %v", err)
	}
	if last.Live || len(last.VCPUs) != 1 || last.Seq != uint64(liveIncs+1) {
		t.Fatalf("paused increment: live %v, %d vCPUs, seq %d", last.Live, len(last.VCPUs), last.Seq)
	}
	t.Logf("paused increment: %d pages, %d disk chunks", last.Pages(), last.Chunks())
	chain = append(chain, last)
	for i, s := range chain {
		chain[i] = encodeDecode(t, s)
	}
	return chain
}

func restoreChain(t *testing.T, m *Machine, chain ...*Snapshot) {
	t.Helper()
	for i, s := range chain {
		if err := m.Restore(s); err != nil {
			t.Fatalf("restoring snapshot %d of the chain (%s, live %v): %v", i, s.Kind, s.Live, err)
		}
	}
}

// differingPages lists the pages whose bytes differ in two VMs' memories.
func differingPages(t *testing.T, a, b *Machine) []uint64 {
	t.Helper()
	ma, err := a.ReadMemory(0, a.MemSize())
	if err != nil {
		t.Fatal(err)
	}
	mb, err := b.ReadMemory(0, b.MemSize())
	if err != nil {
		t.Fatal(err)
	}
	var diff []uint64
	for p := 0; p+PageBytes <= len(ma); p += PageBytes {
		if !bytes.Equal(ma[p:p+PageBytes], mb[p:p+PageBytes]) {
			diff = append(diff, uint64(p/PageBytes))
		}
	}
	return diff
}

func sameMemory(t *testing.T, what string, a, b *Machine) {
	t.Helper()
	if d := differingPages(t, a, b); len(d) > 0 {
		t.Fatalf("%s: %d pages differ from the source's, first %v", what, len(d), d[:min(len(d), 8)])
	}
}

// sameVCPU compares everything a snapshot saves of the vCPU but the TSC,
// which runs on while the VMs are paused.
func sameVCPU(t *testing.T, what string, a, b *Machine) {
	t.Helper()
	va, err := a.VCPUState()
	if err != nil {
		t.Fatal(err)
	}
	vb, err := b.VCPUState()
	if err != nil {
		t.Fatal(err)
	}
	if va.Regs != vb.Regs || va.Sregs != vb.Sregs {
		t.Fatalf("%s: registers differ:\nsource   %+v\nrestored %+v", what, va.Regs, vb.Regs)
	}
	for _, blob := range []struct {
		name string
		a, b []byte
	}{{"FPU", va.FPU, vb.FPU}, {"XSAVE", va.XSAVE, vb.XSAVE}, {"XCRs", va.XCRs, vb.XCRs}, {"vCPU events", va.Events, vb.Events}} {
		if !bytes.Equal(blob.a, blob.b) {
			t.Fatalf("%s: %s state differs", what, blob.name)
		}
	}
	noTSC := func(msrs []MSR) string {
		var s []string
		for _, m := range msrs {
			if m.Index != 0x10 {
				s = append(s, fmt.Sprintf("%#x=%#x", m.Index, m.Value))
			}
		}
		return strings.Join(s, " ")
	}
	if ma, mb := noTSC(va.MSRs), noTSC(vb.MSRs); ma != mb {
		t.Fatalf("%s: MSRs differ:\nsource   %s\nrestored %s", what, ma, mb)
	}
}

// sameDevices compares the devices' state and the exit count. The
// clock's state is the guest's time, which runs on in both VMs: the
// restored clock must go on from the time saved in the paused increment
// last, by no more than the time since the increment was taken.
func sameDevices(t *testing.T, what string, a, b *Machine, last *Snapshot, takenAt time.Time) {
	t.Helper()
	states := func(m *Machine) map[Device][]byte {
		out := map[Device][]byte{}
		err := m.do(func() error {
			for d := DeviceConsole; d <= DeviceHalt; d++ {
				st, err := m.disp.devs[d].saveState()
				if err != nil {
					return err
				}
				out[d] = st
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	sa, sb := states(a), states(b)
	for d := DeviceConsole; d <= DeviceHalt; d++ {
		if d != DeviceClock && !bytes.Equal(sa[d], sb[d]) {
			t.Fatalf("%s: %s device state differs: source %x, restored %x", what, d, sa[d], sb[d])
		}
	}
	var saved []byte
	for _, d := range last.Devices {
		if d.Device == DeviceClock {
			saved = d.State
		}
	}
	clock := func(st []byte) uint64 { return le.Uint64(st[1:]) }
	if len(saved) != 9 || len(sb[DeviceClock]) != 9 {
		t.Fatalf("%s: clock state %x saved, %x restored; want 9 bytes", what, saved, sb[DeviceClock])
	}
	if ran := clock(sb[DeviceClock]) - clock(saved); clock(sb[DeviceClock]) < clock(saved) || ran > uint64(time.Since(takenAt)) {
		t.Fatalf("%s: the restored guest clock reads %d, the paused increment saved %d: it must go on from there, by at most the %v since", what, clock(sb[DeviceClock]), clock(saved), time.Since(takenAt))
	}
	if ea, eb := a.Status().Exits, b.Status().Exits; ea != eb {
		t.Fatalf("%s: the source is at exit %d, the restored VM at %d", what, ea, eb)
	}
}

// lines counts the console lines written so far.
func lines(c *syncBuffer) func() uint64 {
	return func() uint64 { return uint64(strings.Count(c.String(), "\n")) }
}

// waitProgress polls until progress reaches n.
func waitProgress(t *testing.T, what string, progress func() uint64, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for progress() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: only %d of %d after 10s", what, progress(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// runBothToTheEnd resumes two VMs at once and waits for both to halt.
func runBothToTheEnd(t *testing.T, a, b *Machine) {
	t.Helper()
	for _, m := range []*Machine{a, b} {
		if err := m.Resume(0); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*Machine{a, b} {
		if st := m.Wait(); st.State != Halted || st.Err != nil {
			t.Fatalf("run to the end: %+v", st)
		}
	}
}

// TestKVMPrecopyMemstress pre-copies a running memstress: a live full
// snapshot and two live increments while it runs, then the pause and a
// paused increment, restored in order into a fresh VM. Before the paused
// increment the restored VM must differ from the source and refuse to
// run (the check below has teeth); after it, it must be the source at the
// pause, and both must print the same to the end (memstress folds what
// memory held into every line).
func TestKVMPrecopyMemstress(t *testing.T) {
	image := guestELF(t, "memstress")
	var conA, conB syncBuffer
	a := newTestVM(t, Config{MemSizeBytes: precopyMemBytes, Cmdline: precopyMemstressCmdline, Console: &conA})
	b := newTestVM(t, Config{MemSizeBytes: precopyMemBytes, Cmdline: precopyMemstressCmdline, Console: &conB})
	mustLoad(t, a, image)
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	// Past the first pass over the working set, so that most of it is
	// non-zero and the live full snapshot copies 32 MiB.
	waitProgress(t, "memstress iterations", lines(&conA), 600)
	chain := precopy(t, a, 2, lines(&conA))
	takenAt := time.Now()
	atPause := conA.String()

	live, last := chain[:len(chain)-1], chain[len(chain)-1]
	restoreChain(t, b, live...)
	if d := differingPages(t, a, b); len(d) == 0 {
		t.Fatal("restored without the paused increment, the memory equals the source's at the pause: the comparison cannot tell a missing increment")
	} else {
		t.Logf("without the paused increment %d pages differ", len(d))
	}
	if err := b.Resume(0); !errors.Is(err, ErrLiveRestored) || err.Error() != "restored a live snapshot: apply the paused increment that follows it before running" {
		t.Fatalf("Resume after restoring only the live snapshots: %v; want it refused", err)
	}
	for _, kind := range []SnapshotKind{Full, Incremental} {
		if _, err := b.Snapshot(kind); !errors.Is(err, ErrLiveRestored) {
			t.Fatalf("%s snapshot of a VM at a live snapshot: %v; want it refused", kind, err)
		}
	}
	restoreChain(t, b, last)
	sameMemory(t, "after the chain", a, b)
	sameVCPU(t, "after the chain", a, b)
	sameDevices(t, "after the chain", a, b, last, takenAt)

	runBothToTheEnd(t, a, b)
	after := strings.TrimPrefix(conA.String(), atPause)
	if after != conB.String() || !strings.Contains(after, "memstress: done") {
		t.Fatalf("outputs after the pause differ:\nsource   %d bytes, ends %q\nrestored %d bytes, ends %q", len(after), tail(after), len(conB.String()), tail(conB.String()))
	}
	sameFinalState(t, a, b)
}

func tail(s string) string { return s[max(0, len(s)-120):] }

// plantLateDirtyLog makes the next live full snapshot take its dirty
// sets after its copy, and wait after the copy until the guest has gone
// three steps on: what the guest writes then is written after its page or
// chunk was copied, and the bug loses it, however the copy and the guest
// happened to overlap.
func plantLateDirtyLog(t *testing.T, progress func() uint64) {
	t.Helper()
	liveFullDirtyLogAtEnd = true
	liveCopied = func() { waitProgress(t, "the guest's steps after the live copy", progress, progress()+3) }
	t.Cleanup(func() { liveFullDirtyLogAtEnd, liveCopied = false, nil })
}

// TestKVMPrecopyLateDirtyLogIsCaught is the planted bug for the test
// above: a live full snapshot that takes the dirty log after its copy,
// not before, loses the pages the guest wrote during the copy, and the
// restored memory must be seen to differ.
func TestKVMPrecopyLateDirtyLogIsCaught(t *testing.T) {
	image := guestELF(t, "memstress")
	var con syncBuffer
	a := newTestVM(t, Config{MemSizeBytes: precopyMemBytes, Cmdline: precopyMemstressCmdline, Console: &con})
	b := newTestVM(t, Config{MemSizeBytes: precopyMemBytes, Cmdline: precopyMemstressCmdline})
	mustLoad(t, a, image)
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, "memstress iterations", lines(&con), 600)
	plantLateDirtyLog(t, lines(&con))
	chain := precopy(t, a, 0, lines(&con))
	liveFullDirtyLogAtEnd, liveCopied = false, nil
	restoreChain(t, b, chain...)
	d := differingPages(t, a, b)
	if len(d) == 0 {
		t.Fatal("with the dirty log taken after the live copy, the restored memory still equals the source's: the comparison cannot catch a lost write")
	}
	t.Logf("with the dirty log taken late, %d pages differ (first %v)", len(d), d[:min(len(d), 8)])
}

// precopyHeldSector is where the disk guest's first write goes, held:
// no other write touches its chunk.
const precopyHeldSector = 1500

// precopyDiskBytes is 2048 chunks of garbage, which a live full snapshot
// reads in 128 holds of the device's lock: the guest writes the first
// 33 chunks many times meanwhile.
const precopyDiskBytes = 8 << 20

// precopyDiskProgram makes one block write of 512 bytes of 0x5a at
// precopyHeldSector (exit 0), then n writes of 4 KiB (exits 1 to n), each
// one sector further on (sectors 1 to 255, then round from 0), so that
// most span two chunks; before each it changes the first and last words
// of the buffer, so that every write differs from the one before it at
// that sector. Then it exits with code 0.
func precopyDiskProgram(n uint32) []byte {
	var p testProgram
	held := p.req(0, OpBlockWrite, p.buf(0, bytes.Repeat([]byte{0x5a}, 512)), 512, precopyHeldSector)
	buf := p.buf(512, bytes.Repeat([]byte{0x11}, DiskChunkBytes))
	write := p.req(1, OpBlockWrite, buf, DiskChunkBytes, 0)
	p.code.doorbell(PortBlock, held)
	p.code.movECX(n)
	top := p.code.pc()
	p.code.incDword(uint32(buf)).incDword(uint32(buf) + DiskChunkBytes - 4)
	p.code.incByte(write + reqArgOff)
	p.code.doorbell(PortBlock, write)
	p.code.decECX().jnz(top)
	p.code.halt(&p, 2, 0)
	return p.elf()
}

// precopyDiskHook holds exit 0's write and counts exits.
type precopyDiskHook struct {
	exits atomic.Uint64
	mu    sync.Mutex
	held  *Output
}

func (h *precopyDiskHook) OnExit(e *Exit) (Result, error) {
	h.exits.Add(1)
	if e.Index != 0 {
		return LiveHook{}.OnExit(e)
	}
	o, err := e.Hold()
	if err != nil {
		return Result{Status: StatusOf(err)}, nil
	}
	h.mu.Lock()
	h.held = o
	h.mu.Unlock()
	return Result{}, nil
}

// startDiskGuest runs precopyDiskProgram with its first write held, on
// a disk of garbage, and returns it with a VM to restore into (a disk of
// other garbage) once the guest has made a few writes.
func startDiskGuest(t *testing.T) (a, b *Machine, h *precopyDiskHook) {
	t.Helper()
	const mem, writes = 16 << 20, 6000
	h = &precopyDiskHook{}
	a = newTestVM(t, Config{MemSizeBytes: mem, Disk: diskFile(t, "src", precopyDiskBytes, tiledGarbage(1)), Hook: h})
	b = newTestVM(t, Config{MemSizeBytes: mem, Disk: diskFile(t, "dst", precopyDiskBytes, tiledGarbage(2))})
	mustLoad(t, a, precopyDiskProgram(writes))
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, "block writes", h.exits.Load, 20)
	return a, b, h
}

// tiledGarbage is garbage(seed) for 64 KiB, repeated: as good for a disk
// of many chunks, and quick to make under the race detector.
func tiledGarbage(seed uint64) func([]byte) {
	return func(b []byte) {
		tile := make([]byte, 64<<10)
		garbage(seed)(tile)
		for off := 0; off < len(b); off += len(tile) {
			copy(b[off:], tile)
		}
	}
}

// TestKVMPrecopyDisk pre-copies a guest that writes its disk all the
// time, one write held: the writes made during the live copies must end
// up on the restored VM's disk as on the source's (without the held
// write, which the caller carries), and the two must run on to the same
// disk once the held write is released on one and delivered on the other.
func TestKVMPrecopyDisk(t *testing.T) {
	a, b, h := startDiskGuest(t)
	src := a.cfg.Disk
	chain := precopy(t, a, 1, h.exits.Load)
	takenAt := time.Now()
	if full := chain[0]; full.Chunks() != precopyDiskBytes/DiskChunkBytes {
		t.Fatalf("the live full snapshot of a disk of garbage holds %d chunks; want all %d", full.Chunks(), precopyDiskBytes/DiskChunkBytes)
	}
	// The guest writes chunks 0 to 32 (the held one is not in the file);
	// it wrote some during the live full snapshot, so the live increment
	// has some. The paused one may have none: the pause may come before
	// the next write.
	for i, s := range chain[1:] {
		if s.Chunks() > 33 || s.Live && s.Chunks() == 0 {
			t.Fatalf("increment %d (live %v) holds %d disk chunks; want 1 to 33 (0 allowed when paused)", i+1, s.Live, s.Chunks())
		}
	}
	restoreChain(t, b, chain...)
	sameDisk(t, "after the chain", b.cfg.Disk, src)
	sameMemory(t, "after the chain", a, b)
	sameVCPU(t, "after the chain", a, b)
	sameDevices(t, "after the chain", a, b, chain[len(chain)-1], takenAt)

	h.mu.Lock()
	held := h.held
	h.mu.Unlock()
	if err := b.Deliver(DeviceBlock, OpBlockWrite, held.Arg, held.Data); err != nil {
		t.Fatal(err)
	}
	if err := held.Release(); err != nil {
		t.Fatal(err)
	}
	runBothToTheEnd(t, a, b)
	sameDisk(t, "run to the end", b.cfg.Disk, src)
	sameFinalState(t, a, b)
	if got := fileBytes(t, src)[precopyHeldSector*BlockSectorBytes:][:512]; !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 512)) {
		t.Fatal("the held write is not on the disk after its release")
	}
}

// TestKVMPrecopyDiskLateWrittenIsCaught is the planted bug for the disk:
// a live full snapshot that takes the written chunks after its copy loses
// the writes made during it, and the restored disk must be seen to
// differ.
func TestKVMPrecopyDiskLateWrittenIsCaught(t *testing.T) {
	a, b, h := startDiskGuest(t)
	plantLateDirtyLog(t, h.exits.Load)
	chain := precopy(t, a, 0, h.exits.Load)
	liveFullDirtyLogAtEnd, liveCopied = false, nil
	restoreChain(t, b, chain...)
	got, want := fileBytes(t, b.cfg.Disk), fileBytes(t, a.cfg.Disk)
	if bytes.Equal(got, want) {
		t.Fatal("with the written chunks taken after the live copy, the restored disk still equals the source's: the comparison cannot catch a lost write")
	}
	at := firstDiff(got, want)
	t.Logf("with the written chunks taken late, the disks differ first in chunk %d", at/DiskChunkBytes)
}
