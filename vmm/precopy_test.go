package vmm

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
)

// liveSampleSnapshot is sampleSnapshot as SnapshotLive makes it: no vCPU,
// no devices, no exit state.
func liveSampleSnapshot() *Snapshot {
	s := sampleSnapshot()
	s.Live, s.Halted, s.NextExit, s.ExitCode, s.VCPUs, s.Devices = true, false, 0, 0, nil, nil
	return s
}

func TestSnapshotLiveFlag(t *testing.T) {
	s := liveSampleSnapshot()
	enc, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if enc[11] != snapshotFlagLive || le.Uint16(enc[8:]) != snapshotVersion || le.Uint32(enc[64:]) != 0 || le.Uint32(enc[68:]) != 0 {
		t.Fatalf("live snapshot header: flags %#x, version %d, %d vCPUs, %d devices; want flags 0x4 (bit 2), version %d, none", enc[11], le.Uint16(enc[8:]), le.Uint32(enc[64:]), le.Uint32(enc[68:]), snapshotVersion)
	}
	d, err := UnmarshalSnapshot(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Live || len(d.VCPUs) != 0 || len(d.Devices) != 0 || d.Pages() != 3 || d.Chunks() != 3 || d.Seq != 4 {
		t.Fatalf("decoded live %v, %d vCPUs, %d devices, %d pages, %d chunks, seq %d", d.Live, len(d.VCPUs), len(d.Devices), d.Pages(), d.Chunks(), d.Seq)
	}
	if again, _ := d.MarshalBinary(); !bytes.Equal(again, enc) {
		t.Fatal("decode then encode changed a live snapshot's bytes")
	}
	// The checksum covers the flag: dropping it is caught before the
	// field checks.
	bad := bytes.Clone(enc)
	bad[11] &^= snapshotFlagLive
	if _, err := UnmarshalSnapshot(bad); !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("live flag cleared: %v; want a checksum mismatch", err)
	}

	paused, _ := sampleSnapshot().MarshalBinary()
	for _, c := range []struct {
		name string
		enc  []byte
		edit func(b []byte)
		want string
	}{
		{"live with a vCPU", paused, func(b []byte) { b[11] = snapshotFlagLive }, "live snapshot has 1 vCPUs, 2 devices"},
		{"live and halted", enc, func(b []byte) { b[11] |= snapshotFlagHalted }, "halted true"},
		{"live with an exit index", enc, func(b []byte) { le.PutUint64(b[48:], 7) }, "next exit 7"},
		{"live with an exit code", enc, func(b []byte) { le.PutUint64(b[56:], 1) }, "exit code 1"},
		{"no vCPU but not live", enc, func(b []byte) { b[11] = 0 }, "vCPU count 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(c.enc)
			c.edit(b)
			if _, err := UnmarshalSnapshot(reseal(b)); !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v; want ErrBadSnapshot mentioning %q", err, c.want)
			}
		})
	}

	// The encoder refuses what the decoder would.
	withVCPU := liveSampleSnapshot()
	withVCPU.VCPUs = sampleSnapshot().VCPUs
	if _, err := withVCPU.MarshalBinary(); err == nil || !strings.Contains(err.Error(), "carries no vCPU or device state") {
		t.Fatalf("encoding a live snapshot with a vCPU: %v", err)
	}
	noVCPU := sampleSnapshot()
	noVCPU.VCPUs = nil
	if _, err := noVCPU.MarshalBinary(); err == nil || !strings.Contains(err.Error(), "not live") {
		t.Fatalf("encoding a paused snapshot without a vCPU: %v", err)
	}
}

// TestMachineLiveRestoreRefusals restores a live snapshot (a scripted VM,
// no KVM): the VM is paused but refuses to run or be snapshotted until
// the paused increment that follows is applied.
func TestMachineLiveRestoreRefusals(t *testing.T) {
	a := newScriptedMachine(t, newScriptedVcpu(clockSteps(20)...))
	if _, err := a.SnapshotLive(Incremental); err == nil || !strings.Contains(err.Error(), "full snapshot first") {
		t.Fatalf("live increment without a base: %v", err)
	}
	if _, err := a.SnapshotLive(7); err == nil || !strings.Contains(err.Error(), "unknown snapshot kind 7") {
		t.Fatalf("live snapshot of kind 7: %v", err)
	}
	if _, err := a.Run(2); err != nil {
		t.Fatal(err)
	}
	full, err := a.SnapshotLive(Full)
	if err != nil {
		t.Fatal(err)
	}
	if !full.Live || len(full.VCPUs) != 0 || full.NextExit != 0 {
		t.Fatalf("live full snapshot: live %v, %d vCPUs, next exit %d", full.Live, len(full.VCPUs), full.NextExit)
	}
	if _, err := a.Run(4); err != nil {
		t.Fatal(err)
	}
	inc, err := a.SnapshotLive(Incremental)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run(5); err != nil {
		t.Fatal(err)
	}
	last, err := a.Snapshot(Incremental)
	if err != nil {
		t.Fatalf("paused increment after a live one: %v", err)
	}
	if inc.Seq != 1 || last.Seq != 2 || last.BaseSeq != 1 || last.ChainID != full.ChainID || last.Live || last.NextExit != 5 {
		t.Fatalf("chain: live increment seq %d, paused seq %d base %d live %v next exit %d", inc.Seq, last.Seq, last.BaseSeq, last.Live, last.NextExit)
	}

	b := newScriptedMachine(t, newScriptedVcpu(clockSteps(20)...))
	if err := b.Restore(inc); err == nil || !strings.Contains(err.Error(), "applies on snapshot 0") {
		t.Fatalf("live increment on a VM at no snapshot: %v", err)
	}
	for i, s := range []*Snapshot{full, inc} {
		if err := b.Restore(encodeDecode(t, s)); err != nil {
			t.Fatal(err)
		}
		if st := b.Status(); st.State != Paused {
			t.Fatalf("after restoring live snapshot %d: %+v; want paused", i, st)
		}
		err := b.Resume(0)
		if !errors.Is(err, ErrLiveRestored) || err.Error() != "restored a live snapshot: apply the paused increment that follows it before running" {
			t.Fatalf("Resume after restoring live snapshot %d: %v", i, err)
		}
		for _, kind := range []SnapshotKind{Full, Incremental} {
			if _, err := b.Snapshot(kind); !errors.Is(err, ErrLiveRestored) || !strings.Contains(err.Error(), "apply the paused increment") {
				t.Fatalf("%s snapshot after restoring live snapshot %d: %v", kind, i, err)
			}
			if _, err := b.SnapshotLive(kind); !errors.Is(err, ErrLiveRestored) {
				t.Fatalf("live %s snapshot after restoring live snapshot %d: %v", kind, i, err)
			}
		}
	}
	if err := b.Restore(last); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(); st.State != Paused || st.Exits != 5 {
		t.Fatalf("after the paused increment: %+v; want paused at exit 5", st)
	}
	ma, _ := a.ReadMemory(0, memSizeMinBytes)
	mb, _ := b.ReadMemory(0, memSizeMinBytes)
	if !bytes.Equal(ma, mb) {
		t.Fatalf("restored memory differs at %#x", firstDiff(ma, mb))
	}
	if _, err := b.Run(7); err != nil {
		t.Fatalf("run after the paused increment: %v", err)
	}

	// A paused full snapshot makes a VM at a live snapshot whole too.
	c := newScriptedMachine(t, newScriptedVcpu(clockSteps(20)...))
	if err := c.Restore(full); err != nil {
		t.Fatal(err)
	}
	paused, err := a.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Restore(paused); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(6); err != nil {
		t.Fatalf("run after a paused full snapshot on a live one: %v", err)
	}

	// A failed or closed VM has nothing to copy.
	f := newScriptedMachine(t, newScriptedVcpu(scriptStep{port: 0x42, value: scriptClockReq}))
	if st, _ := f.Run(0); st.State != Failed {
		t.Fatalf("the scripted VM did not fail: %+v", st)
	}
	if _, err := f.SnapshotLive(Full); err == nil || !strings.Contains(err.Error(), "failed VM") {
		t.Fatalf("live snapshot of a failed VM: %v", err)
	}
	f.Close()
	if _, err := f.SnapshotLive(Full); !errors.Is(err, ErrClosed) {
		t.Fatalf("live snapshot of a closed VM: %v", err)
	}
}

// TestMachineSnapshotLiveWhileRunning takes live snapshots of a scripted
// VM (no KVM) while its vCPU thread writes clock answers into memory and
// other goroutines write the disk: under the race detector this checks
// that the VMM's own writes and the written-chunk bitmap are shared
// safely with the copy, and the chain restored must give the source's
// memory and disk at the pause. (Here every write to memory is the VMM's:
// the scripted vCPU writes none, and has no dirty log.)
func TestMachineSnapshotLiveWhileRunning(t *testing.T) {
	src := diskFile(t, "src", testDiskBytes, garbage(5))
	steps := append(clockSteps(100000), scriptStep{spin: true})
	a := newScriptedMachineWith(t, newScriptedVcpu(steps...), Config{Disk: src})
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Goroutine g writes sectors 8g+i%16, across chunks.
				if err := a.Deliver(DeviceBlock, OpBlockWrite, uint64(8*g+i%16), bytes.Repeat([]byte{byte(i)}, 1024)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var chain []*Snapshot
	for i := range 4 {
		kind := Incremental
		if i == 0 {
			kind = Full
		}
		s, err := a.SnapshotLive(kind)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, s)
	}
	close(stop)
	wg.Wait()
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	last, err := a.Snapshot(Incremental)
	if err != nil {
		t.Fatal(err)
	}
	chain = append(chain, last)

	dst := diskFile(t, "dst", testDiskBytes, garbage(6))
	b := newScriptedMachineWith(t, newScriptedVcpu(), Config{Disk: dst})
	for _, s := range chain {
		if err := b.Restore(encodeDecode(t, s)); err != nil {
			t.Fatal(err)
		}
	}
	ma, _ := a.ReadMemory(0, memSizeMinBytes)
	mb, _ := b.ReadMemory(0, memSizeMinBytes)
	if !bytes.Equal(ma, mb) {
		t.Fatalf("restored memory differs at %#x", firstDiff(ma, mb))
	}
	sameDisk(t, "after the chain", dst, src)
	if ea, eb := a.Status().Exits, b.Status().Exits; ea != eb || ea == 0 {
		t.Fatalf("source at exit %d, restored at %d", ea, eb)
	}
	t.Logf("%d exits; pages per snapshot %d %d %d %d, paused %d", a.Status().Exits, chain[0].Pages(), chain[1].Pages(), chain[2].Pages(), chain[3].Pages(), last.Pages())
}
