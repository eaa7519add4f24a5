package vmm

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

// diskWrite is one block write a test guest makes.
type diskWrite struct {
	sector uint64
	n      int
	v      byte // every byte of the write
}

// diskProgram makes the writes in order, one exit each (exit i is write
// i), then exits with code 0.
func diskProgram(writes []diskWrite) []byte {
	var p testProgram
	off := 0
	for i, w := range writes {
		buf := p.buf(off, bytes.Repeat([]byte{w.v}, w.n))
		off += w.n
		p.code.doorbell(PortBlock, p.req(i, OpBlockWrite, buf, uint32(w.n), w.sector))
	}
	p.code.halt(&p, len(writes), 0)
	return p.elf()
}

// holdAtHook holds the outputs of the listed exits and delivers the rest.
type holdAtHook struct {
	hold map[uint64]bool
	mu   sync.Mutex
	held map[uint64]*Output
}

func (h *holdAtHook) OnExit(e *Exit) (Result, error) {
	if e.Dir == DirInput {
		return e.Live()
	}
	if !h.hold[e.Index] {
		return e.Deliver(), nil
	}
	o, err := e.Hold()
	if err != nil {
		return Result{Status: StatusOf(err)}, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held[e.Index] = o
	return Result{}, nil
}

func (h *holdAtHook) output(i uint64) *Output {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held[i]
}

func encodeDecode(t *testing.T, s *Snapshot) *Snapshot {
	t.Helper()
	enc, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	d, err := UnmarshalSnapshot(enc)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestKVMSnapshotCarriesTheDisk is separate storage end to end: a guest
// writes its disk, one write held; a full snapshot (taken with the write
// held) restored on disks full of garbage gives the source's file without
// the held write; an increment after more writes and the release carries
// just their chunks; and a VM restored from the full snapshot that runs
// on and is given the held write (Machine.Deliver, as after a failover)
// ends with the source's disk.
func TestKVMSnapshotCarriesTheDisk(t *testing.T) {
	writes := []diskWrite{
		{0, 1024, 0xa1}, // exit 0: chunk 0
		{41, 512, 0xa2}, // exit 1: the last sector, in the partial chunk 5
		{24, 512, 0xa3}, // exit 2: chunk 3, held
		{16, 512, 0xa4}, // exit 3: chunk 2
		{2, 512, 0xa5},  // exit 4: chunk 0 again
	}
	const mem = 16 << 20
	image := diskProgram(writes)
	// Chunk 4 holds durable content the guest never wrote.
	src := diskFile(t, "src", testDiskBytes, func(p []byte) { copy(p[4*DiskChunkBytes:], bytes.Repeat([]byte{0x44}, 700)) })
	h := &holdAtHook{hold: map[uint64]bool{2: true}, held: map[uint64]*Output{}}
	a := newTestVM(t, Config{MemSizeBytes: mem, Disk: src, Hook: h})
	mustLoad(t, a, image)
	if st, err := a.Run(3); err != nil || st.State != Paused || st.Exits != 3 {
		t.Fatalf("Run(3): %+v %v", st, err)
	}
	full, err := a.Snapshot(Full)
	if err != nil {
		t.Fatalf("full snapshot with a block write held: %v", err)
	}
	if chunksOf(full) != "[0 4 5]" || full.DiskBytes != testDiskBytes {
		t.Fatalf("full snapshot of a %d-byte disk holds chunks %s; want [0 4 5] (chunk 3's write is held)", full.DiskBytes, chunksOf(full))
	}
	full = encodeDecode(t, full)

	restored := func(name string, snaps ...*Snapshot) *Machine {
		t.Helper()
		disk := diskFile(t, name, testDiskBytes, garbage(uint64(len(name))))
		m := newTestVM(t, Config{MemSizeBytes: mem, Disk: disk})
		for _, s := range snaps {
			if err := m.Restore(s); err != nil {
				t.Fatalf("%s: Restore: %v", name, err)
			}
		}
		return m
	}
	b := restored("b", full)
	sameDisk(t, "after the full restore", b.cfg.Disk, src)
	if chunk3 := fileBytes(t, b.cfg.Disk)[3*DiskChunkBytes : 4*DiskChunkBytes]; bytes.Contains(chunk3, []byte{0xa3}) {
		t.Fatal("the held write is on the restored disk")
	}
	c := restored("c", full)

	// On: two more writes, the held one released, an increment.
	if st, err := a.Run(5); err != nil || st.Exits != 5 {
		t.Fatalf("Run(5): %+v %v", st, err)
	}
	heldData := bytes.Clone(h.output(2).Data)
	if err := h.output(2).Release(); err != nil {
		t.Fatal(err)
	}
	inc, err := a.Snapshot(Incremental)
	if err != nil {
		t.Fatal(err)
	}
	if chunksOf(inc) != "[0 2 3]" {
		t.Fatalf("increment holds chunks %s; want [0 2 3], the chunks written since the full snapshot", chunksOf(inc))
	}
	inc = encodeDecode(t, inc)
	if err := b.Restore(inc); err != nil {
		t.Fatal(err)
	}
	sameDisk(t, "full, then the increment", b.cfg.Disk, src)
	d := restored("d", full, inc)
	sameDisk(t, "full and increment on a fresh disk", d.cfg.Disk, src)

	// c goes on from the full snapshot, as a new primary would, and is
	// given the write that was held when the snapshot was taken.
	if st, err := c.Run(0); err != nil || st.State != Halted {
		t.Fatalf("restored VM run to the end: %+v %v", st, err)
	}
	if err := c.Deliver(DeviceBlock, OpBlockWrite, writes[2].sector, heldData); err != nil {
		t.Fatal(err)
	}
	if st, err := a.Run(0); err != nil || st.State != Halted {
		t.Fatalf("source run to the end: %+v %v", st, err)
	}
	sameDisk(t, "restored VM run on, held write delivered", c.cfg.Disk, src)
	sameFinalState(t, a, c)
}

// TestKVMDeliverWhileRunning delivers a console line and a block write to
// a VM whose guest spins in user mode.
func TestKVMDeliverWhileRunning(t *testing.T) {
	var p testProgram
	p.code.doorbell(PortClock, p.req(0, OpClockNow, 0, 0, 0))
	spin := p.code.pc()
	p.code.jmp(spin)
	var con syncBuffer
	disk := diskFile(t, "disk", testDiskBytes, nil)
	m := newTestVM(t, Config{Console: &con, Disk: disk})
	mustLoad(t, m, p.elf())
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x7e}, 2048)
	if err := m.Deliver(DeviceBlock, OpBlockWrite, 8, data); err != nil {
		t.Fatal(err)
	}
	if err := m.Deliver(DeviceConsole, OpConsoleWrite, 0, []byte("from the checkpoint\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Deliver(DeviceBlock, OpBlockWrite, 8, data[:100]); err == nil || !strings.Contains(err.Error(), "multiple of the 512-byte sector") {
		t.Fatalf("unaligned write: %v", err)
	}
	if st := m.Status().State; st != Running {
		t.Fatalf("VM %v; the deliveries were to happen while it ran", st)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if got := fileBytes(t, disk)[8*BlockSectorBytes:][:len(data)]; !bytes.Equal(got, data) || con.String() != "from the checkpoint\n" {
		t.Fatalf("after Deliver: disk holds %#x..., console %q", got[0], con.String())
	}
}
