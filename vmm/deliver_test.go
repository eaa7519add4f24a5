package vmm

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
)

// TestMachineDeliver performs outputs that no exit stands for, as a new
// primary does with the held outputs a checkpoint carried: they reach
// their backends, and anything a guest request could not do is refused.
func TestMachineDeliver(t *testing.T) {
	var con syncBuffer
	disk := diskFile(t, "disk", testDiskBytes, nil)
	nic := shutGate(t)
	loan, err := nic.Lend()
	if err != nil {
		t.Fatal(err)
	}
	m := newScriptedMachineWith(t, newScriptedVcpu(), Config{Console: &con, Disk: disk, NIC: loan})

	if err := m.Deliver(DeviceConsole, OpConsoleWrite, 0, []byte("carried\n")); err != nil {
		t.Fatal(err)
	}
	if con.String() != "carried\n" {
		t.Fatalf("console %q after Deliver", con.String())
	}
	data := bytes.Repeat([]byte{0x5c}, 1024)
	if err := m.Deliver(DeviceBlock, OpBlockWrite, 40, data); err != nil {
		t.Fatal(err)
	}
	onDisk := make([]byte, 1024)
	disk.ReadAt(onDisk, 40*BlockSectorBytes)
	if !bytes.Equal(onDisk, data) {
		t.Fatal("the delivered block write is not in the file")
	}
	if err := m.Deliver(DeviceNIC, OpNICTX, 0, testFrame("out")); err != nil || nic.Dropped() != 1 {
		t.Fatalf("frame to a NIC behind a shut gate: %v, %d dropped; want it dropped without error", err, nic.Dropped())
	}
	if err := m.Deliver(DeviceHalt, OpHaltExit, 3, nil); err != nil || m.Status().State != Paused {
		t.Fatalf("halt EXIT: %v, VM %v; want nothing done", err, m.Status().State)
	}
	// The delivered write is in the next snapshot's disk.
	s, err := m.Snapshot(Full)
	if err != nil {
		t.Fatal(err)
	}
	if chunksOf(s) != "[5]" {
		t.Fatalf("full snapshot after a delivered write to sectors 40-41 holds chunks %s; want [5], the partial last one", chunksOf(s))
	}

	for _, c := range []struct {
		name string
		dev  Device
		op   uint32
		arg  uint64
		n    int
		want string
	}{
		{"unknown device", 9, 1, 0, 1, "unknown device 9"},
		{"unknown op", DeviceConsole, 7, 0, 1, "no op 7"},
		{"an input", DeviceBlock, OpBlockRead, 0, 512, "an input, not an output"},
		{"clock", DeviceClock, OpClockNow, 0, 0, "an input"},
		{"console too long", DeviceConsole, OpConsoleWrite, 0, ConsoleMaxBytes + 1, "len 4097 exceeds the limit of 4096"},
		{"huge", DeviceConsole, OpConsoleWrite, 0, 1 << 20, "len 1048576 exceeds"},
		{"runt frame", DeviceNIC, OpNICTX, 0, 10, "shorter than an Ethernet header"},
		{"jumbo frame", DeviceNIC, OpNICTX, 0, NICFrameMaxBytes + 1, "exceeds"},
		{"block unaligned", DeviceBlock, OpBlockWrite, 0, 100, "multiple of the 512-byte sector"},
		{"block empty", DeviceBlock, OpBlockWrite, 0, 0, "positive multiple"},
		{"block too long", DeviceBlock, OpBlockWrite, 0, BlockMaxBytes + 512, "exceeds"},
		{"block past the end", DeviceBlock, OpBlockWrite, 41, 1024, "past the end of the 42-sector disk"},
		{"block far past the end", DeviceBlock, OpBlockWrite, 1 << 62, 512, "past the end"},
	} {
		err := m.Deliver(c.dev, c.op, c.arg, bytes.Repeat([]byte{1}, c.n))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v; want one mentioning %q", c.name, err, c.want)
		}
	}
	if err := m.Deliver(DeviceBlock, OpBlockWrite, 41, make([]byte, 1024)); !errors.Is(err, ErrRefused) {
		t.Errorf("a block write past the end: %v does not wrap ErrRefused", err)
	}
	if con.String() != "carried\n" || nic.Dropped() != 1 {
		t.Fatal("a refused output was performed")
	}
	if inc, err := m.Snapshot(Incremental); err != nil || inc.Chunks() != 0 {
		t.Fatalf("a refused block write reached the disk: increment %s, %v", chunksOf(inc), err)
	}
}

// TestMachineDeliverWhileRunning delivers from several goroutines while the
// vCPU runs, then pauses and checks that every write is in the file and
// in the increment.
func TestMachineDeliverWhileRunning(t *testing.T) {
	var con syncBuffer
	disk := diskFile(t, "disk", testDiskBytes, nil)
	m := newScriptedMachineWith(t, newScriptedVcpu(scriptStep{port: PortClock, value: scriptClockReq}, scriptStep{spin: true}), Config{Console: &con, Disk: disk})
	if _, err := m.Snapshot(Full); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Goroutine g writes sector 8g (chunk g) and a line.
			if err := m.Deliver(DeviceBlock, OpBlockWrite, uint64(8*g), bytes.Repeat([]byte{byte(g + 1)}, 512)); err != nil {
				t.Error(err)
			}
			if err := m.Deliver(DeviceConsole, OpConsoleWrite, 0, []byte("line\n")); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if st := m.Status().State; st != Running {
		t.Fatalf("the VM is %v; the deliveries were to happen while it ran", st)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	inc, err := m.Snapshot(Incremental)
	if err != nil {
		t.Fatal(err)
	}
	if chunksOf(inc) != "[0 1 2 3]" || strings.Count(con.String(), "line\n") != 4 {
		t.Fatalf("increment holds chunks %s, console %q; want chunks [0 1 2 3] and 4 lines", chunksOf(inc), con.String())
	}
	for i := range 4 {
		_, data := inc.DiskChunk(i)
		if data[0] != byte(i+1) || data[512] != 0 {
			t.Fatalf("chunk %d holds %#x...; want the goroutine's sector", i, data[0])
		}
	}
}

// TestMachineSnapshotDiskModes restores a machine's snapshot into another
// through the encoding, for a disk of its own (the contents travel) and a
// shared one (they do not, and the disk is left alone).
func TestMachineSnapshotDiskModes(t *testing.T) {
	for _, shared := range []bool{false, true} {
		src := diskFile(t, "src", testDiskBytes, func(p []byte) { p[3*DiskChunkBytes+9] = 0x33 })
		a := newScriptedMachineWith(t, newScriptedVcpu(), Config{Disk: src, DiskSharedStorage: shared})
		s, err := a.Snapshot(Full)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		dec, err := UnmarshalSnapshot(enc)
		if err != nil {
			t.Fatal(err)
		}
		dst := diskFile(t, "dst", testDiskBytes, garbage(3))
		before := fileBytes(t, dst)
		b := newScriptedMachineWith(t, newScriptedVcpu(), Config{Disk: dst, DiskSharedStorage: shared})
		if err := b.Restore(dec); err != nil {
			t.Fatal(err)
		}
		if shared {
			if !dec.DiskOmitted || dec.Chunks() != 0 || !bytes.Equal(fileBytes(t, dst), before) {
				t.Fatalf("shared storage: omitted %v, %d chunks, disk changed %v; want the disk left alone", dec.DiskOmitted, dec.Chunks(), !bytes.Equal(fileBytes(t, dst), before))
			}
		} else {
			sameDisk(t, "restored disk", dst, src)
		}
		// A VM configured the other way refuses it, and its disk is
		// untouched.
		other := diskFile(t, "other", testDiskBytes, garbage(4))
		otherBefore := fileBytes(t, other)
		c := newScriptedMachineWith(t, newScriptedVcpu(), Config{Disk: other, DiskSharedStorage: !shared})
		if err := c.Restore(dec); err == nil || !strings.Contains(err.Error(), "configure both VMs alike") {
			t.Fatalf("shared=%v snapshot into shared=%v VM: %v; want a refusal", shared, !shared, err)
		}
		if !bytes.Equal(fileBytes(t, other), otherBefore) || c.Status().State != Paused {
			t.Fatal("a refused restore changed the disk or the VM")
		}
		// A disk of another size is refused before anything changes.
		small := diskFile(t, "small", testDiskBytes-DiskChunkBytes, nil)
		d := newScriptedMachineWith(t, newScriptedVcpu(), Config{Disk: small, DiskSharedStorage: shared})
		if err := d.Restore(dec); err == nil || !strings.Contains(err.Error(), "disk file of the snapshot's size") {
			t.Fatalf("restore onto a smaller disk: %v", err)
		}
	}
}
