package vmm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inputsProgram reads the clock and 8 random bytes n times and prints
// both, so its output depends on every input. With tsc set it also prints
// the time-stamp counter, which no exit records.
func inputsProgram(n uint32, tsc bool) []byte {
	var p testProgram
	buf := p.buf(0, make([]byte, 24))
	clock := p.req(0, OpClockNow, 0, 0, 0)
	ent := p.req(1, OpEntropyRead, buf+8, 8, 0)
	size := uint32(16)
	if tsc {
		size = 24
	}
	con := p.req(2, OpConsoleWrite, buf, size, 0)
	p.code.movECX(n)
	loop := p.code.pc()
	p.code.doorbell(PortClock, clock)
	p.code.movRAXFrom(clock + reqResultOff).movRAXTo(uint32(buf))
	p.code.doorbell(PortEntropy, ent)
	if tsc {
		p.code.rdtsc().movRAXTo(uint32(buf) + 16)
	}
	p.code.doorbell(PortConsole, con)
	p.code.decECX().jnz(loop)
	p.code.halt(&p, 3, 0)
	return p.elf()
}

// recordReplay runs image live with a Recorder and then in a second VM with
// a Replayer fed from the log. It returns both VMs' outputs and the replay
// error (nil when the replay ran to the end and consumed the whole log).
type replayRun struct {
	live, replay       []capturedOutput
	liveVM, replayVM   *Machine
	liveSt             Status
	replayErr, doneErr error
	log                []byte
}

func recordReplay(t *testing.T, image []byte, cfg Config, drive func(m *Machine)) replayRun {
	t.Helper()
	var log bytes.Buffer
	rec := NewRecorder(&log)
	liveCap := &capture{inner: rec}
	cfg.Hook = liveCap
	live := newTestVM(t, cfg)
	mustLoad(t, live, image)
	if err := live.Resume(0); err != nil {
		t.Fatal(err)
	}
	if drive != nil {
		drive(live)
	}
	st := live.Wait()
	if st.State != Halted {
		t.Fatalf("live run: %+v", st)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	rep := NewReplayer(bytes.NewReader(log.Bytes()))
	repCap := &capture{inner: rep}
	replayCfg := Config{MemSizeBytes: cfg.MemSizeBytes, Cmdline: cfg.Cmdline, Hook: repCap}
	replay := newTestVM(t, replayCfg)
	mustLoad(t, replay, image)
	_, err := replay.Run(0)
	r := replayRun{live: liveCap.outputs(), replay: repCap.outputs(), liveVM: live, replayVM: replay, liveSt: st, replayErr: err, log: log.Bytes()}
	if err == nil {
		r.doneErr = rep.Done()
	}
	return r
}

// sameFinalState compares all of memory and the registers of two VMs.
func sameFinalState(t *testing.T, a, b *Machine) {
	t.Helper()
	ma, err := a.ReadMemory(0, a.MemSize())
	if err != nil {
		t.Fatal(err)
	}
	mb, err := b.ReadMemory(0, b.MemSize())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ma, mb) {
		t.Fatalf("final memory differs (first at %#x)", firstDiff(ma, mb))
	}
	va, _ := a.VCPUState()
	vb, _ := b.VCPUState()
	if va.Regs != vb.Regs || va.Sregs != vb.Sregs {
		t.Fatalf("final registers differ:\nlive   %+v\nreplay %+v", va.Regs, vb.Regs)
	}
}

func checkFaithfulReplay(t *testing.T, r replayRun) {
	t.Helper()
	if r.replayErr != nil {
		t.Fatalf("replay: %v", r.replayErr)
	}
	if r.doneErr != nil {
		t.Fatalf("replay left records: %v", r.doneErr)
	}
	if len(r.live) == 0 {
		t.Fatal("the guest made no outputs")
	}
	sameOutputs(t, r.live, r.replay)
	sameFinalState(t, r.liveVM, r.replayVM)
	if st := r.replayVM.Status(); st.ExitCode != r.liveSt.ExitCode || st.Exits != r.liveSt.Exits {
		t.Fatalf("replay ended %+v, live %+v", st, r.liveSt)
	}
	t.Logf("%d exits, %d outputs, log %d bytes", r.liveSt.Exits, len(r.live), len(r.log))
}

func TestKVMRecordReplayInputs(t *testing.T) {
	r := recordReplay(t, inputsProgram(50, false), Config{MemSizeBytes: 16 << 20}, nil)
	checkFaithfulReplay(t, r)
}

// TestKVMReplayDetectsTSC is the planted bug for the check above: the same
// program printing RDTSC must be caught diverging.
func TestKVMReplayDetectsTSC(t *testing.T) {
	r := recordReplay(t, inputsProgram(50, true), Config{MemSizeBytes: 16 << 20}, nil)
	var d *DivergenceError
	if !errors.As(r.replayErr, &d) {
		t.Fatalf("replay of an RDTSC-printing guest: err %v; want a DivergenceError", r.replayErr)
	}
	if d.Index != 2 {
		t.Fatalf("divergence at exit %d; want 2, the first console output", d.Index)
	}
}

func TestKVMRecordReplayMemstress(t *testing.T) {
	image := guestELF(t, "memstress")
	cfg := Config{MemSizeBytes: 32 << 20, Cmdline: "pages=512 iters=60 dirty=32 pattern=random seed=7"}
	r := recordReplay(t, image, cfg, nil)
	checkFaithfulReplay(t, r)
}

func TestKVMReplayNondetDiverges(t *testing.T) {
	image := guestELF(t, "nondet")
	r := recordReplay(t, image, Config{MemSizeBytes: 16 << 20, Cmdline: "count=8"}, nil)
	if !errors.Is(r.replayErr, ErrDivergence) {
		t.Fatalf("nondet replayed without divergence (err %v); its RDTSC values must differ", r.replayErr)
	}
	var d *DivergenceError
	errors.As(r.replayErr, &d)
	if d.Index >= r.liveSt.Exits || !strings.Contains(d.Got, "console") {
		t.Fatalf("divergence %v; want it at a console output inside the run", d)
	}
}

func TestKVMRecordReplayKVStore(t *testing.T) {
	image := guestELF(t, "kvstore")
	backend, peer := udpPeer(t)
	disk, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	disk.Truncate(1 << 20)
	const requests = 40
	cfg := Config{MemSizeBytes: 32 << 20, NIC: backend, Disk: disk, Cmdline: "maxreq=40"}
	var replies []string
	r := recordReplay(t, image, cfg, func(m *Machine) {
		c := newKVClient(t, peer, backend.LocalAddr())
		for i := 0; i < requests; i++ {
			req := kvRequest(i)
			replies = append(replies, c.do(t, req))
		}
	})
	if len(replies) != requests || !strings.Contains(replies[requests-1], "VAL") {
		t.Fatalf("replies %q", replies)
	}
	checkFaithfulReplay(t, r)
}

func kvRequest(i int) string {
	if i%2 == 0 {
		return strings.Join([]string{itoa(uint64(i)), "PUT", "key" + itoa(uint64(i%7)), "value" + itoa(uint64(i))}, " ")
	}
	return strings.Join([]string{itoa(uint64(i)), "GET", "key" + itoa(uint64((i-1)%7))}, " ")
}

// TestKVMMemstressCheckpointRestore runs memstress to exit 20, takes a full
// snapshot, runs on to exit 40, takes an increment, restores both into a
// fresh VM and runs the two VMs to the end: the outputs after exit 40 must
// be identical (memstress folds memory contents into what it prints).
func TestKVMMemstressCheckpointRestore(t *testing.T) {
	image := guestELF(t, "memstress")
	const mem = 32 << 20
	cmdline := "pages=1024 iters=80 dirty=48 pattern=stride stride=13 seed=3"
	capA, capB := &capture{inner: LiveHook{}}, &capture{inner: LiveHook{}}
	a := newTestVM(t, Config{MemSizeBytes: mem, Cmdline: cmdline, Hook: capA})
	b := newTestVM(t, Config{MemSizeBytes: mem, Cmdline: cmdline, Hook: capB})
	mustLoad(t, a, image)
	if _, err := a.Run(20); err != nil {
		t.Fatal(err)
	}
	full, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run(40); err != nil {
		t.Fatal(err)
	}
	inc, err := a.Snapshot(Incremental)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("full snapshot %d pages, increment %d pages", full.Pages(), inc.Pages())
	for _, s := range []*Snapshot{full, inc} {
		enc, _ := s.MarshalBinary()
		dec, err := UnmarshalSnapshot(enc)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Restore(dec); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*Machine{a, b} {
		if st, err := m.Run(0); err != nil || st.State != Halted {
			t.Fatalf("run to the end: %+v %v", st, err)
		}
	}
	var after []capturedOutput
	for _, o := range capA.outputs() {
		if o.Index >= 40 {
			after = append(after, o)
		}
	}
	if len(after) < 10 {
		t.Fatalf("only %d outputs after the snapshot", len(after))
	}
	sameOutputs(t, after, capB.outputs())
	sameFinalState(t, a, b)
}

// TestKVMKVStoreSnapshotServes pauses a serving kvstore (it sits in a NIC
// WAIT, which the pause must interrupt), snapshots it, restores it into a
// VM with its own NIC and a copy of the disk, and asks both for data
// written before the snapshot.
func TestKVMKVStoreSnapshotServes(t *testing.T) {
	image := guestELF(t, "kvstore")
	dir := t.TempDir()
	backendA, peerA := udpPeer(t)
	diskA, err := os.Create(filepath.Join(dir, "diskA"))
	if err != nil {
		t.Fatal(err)
	}
	defer diskA.Close()
	diskA.Truncate(1 << 20)
	a := newTestVM(t, Config{MemSizeBytes: 32 << 20, NIC: backendA, Disk: diskA})
	mustLoad(t, a, image)
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	ca := newKVClient(t, peerA, backendA.LocalAddr())
	for i := 1; i <= 10; i++ {
		if r := ca.do(t, itoa(uint64(i))+" PUT k"+itoa(uint64(i))+" v"+itoa(uint64(i))); !strings.Contains(r, "OK") {
			t.Fatalf("PUT %d answered %q", i, r)
		}
	}
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	snap, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(diskA.Name())
	if err != nil {
		t.Fatal(err)
	}
	diskPathB := filepath.Join(dir, "diskB")
	if err := os.WriteFile(diskPathB, img, 0o600); err != nil {
		t.Fatal(err)
	}
	diskB, err := os.OpenFile(diskPathB, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer diskB.Close()
	backendB, peerB := udpPeer(t)
	b := newTestVM(t, Config{MemSizeBytes: 32 << 20, NIC: backendB, Disk: diskB})
	if err := b.Restore(snap); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Machine{a, b} {
		if err := m.Resume(0); err != nil {
			t.Fatal(err)
		}
	}
	cb := newKVClient(t, peerB, backendB.LocalAddr())
	if r := cb.do(t, "20 GET k7"); !strings.Contains(r, "v7") {
		t.Fatalf("restored kvstore answered %q to GET k7", r)
	}
	if r := ca.do(t, "21 GET k9"); !strings.Contains(r, "v9") {
		t.Fatalf("original kvstore answered %q to GET k9 after the snapshot", r)
	}
}
