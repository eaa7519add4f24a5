package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/vmm/kvm"
)

func sampleSnapshot() *Snapshot {
	s := &Snapshot{
		Kind: Incremental, ChainID: 0xfeedface, Seq: 4, BaseSeq: 3,
		MemSize: 16 << 20, NextExit: 1234, Halted: true, ExitCode: 9,
		VCPUs: []VCPUState{{
			Regs:   Regs{RIP: 0x401000, RSP: 16 << 20, RFLAGS: 0x3002},
			Sregs:  initialSregs(),
			XSAVE:  bytes.Repeat([]byte{1}, kvm.XsaveSize),
			XCRs:   bytes.Repeat([]byte{2}, kvm.XcrsSize),
			Events: bytes.Repeat([]byte{3}, kvm.VcpuEventsSize),
			MSRs:   []MSR{{Index: 0x10, Value: 99}, {Index: 0xC0000100, Value: 7}},
		}},
		Devices:     []DeviceState{{Device: DeviceClock, State: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9}}, {Device: DeviceNIC, State: []byte{1, 2, 2, 2, 2, 2, 2}}},
		PageNumbers: []uint64{0, 5, 4095},
	}
	for i := range s.PageNumbers {
		s.PageData = append(s.PageData, bytes.Repeat([]byte{byte(i + 1)}, PageBytes)...)
	}
	// 42 sectors: 5 whole chunks and a last one of 1024 bytes, which is
	// saved.
	s.DiskBytes = sampleDiskBytes
	s.DiskChunks = []uint64{0, 3, 5}
	s.DiskData = append(bytes.Repeat([]byte{0xd0}, 2*DiskChunkBytes), bytes.Repeat([]byte{0xd5}, 1024)...)
	return s
}

const sampleDiskBytes = 5*DiskChunkBytes + 1024

// diskSectionOff is where the disk section of an encoded snapshot starts.
func diskSectionOff(s *Snapshot, enc []byte) int {
	return len(enc) - 4 - (snapshotDiskHeaderBytes + 8*len(s.DiskChunks) + len(s.DiskData))
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := sampleSnapshot()
	enc, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	d, err := UnmarshalSnapshot(enc)
	if err != nil {
		t.Fatal(err)
	}
	enc2, _ := d.MarshalBinary()
	if !bytes.Equal(enc, enc2) {
		t.Fatal("decode then encode changed the bytes")
	}
	if d.VCPUs[0].Regs != s.VCPUs[0].Regs || d.VCPUs[0].Sregs != s.VCPUs[0].Sregs || d.NextExit != 1234 || !d.Halted || d.Pages() != 3 {
		t.Fatalf("decoded %+v", d)
	}
	if d.DiskBytes != sampleDiskBytes || d.Chunks() != 3 || d.DiskOmitted {
		t.Fatalf("decoded disk of %d bytes, %d chunks, omitted %v", d.DiskBytes, d.Chunks(), d.DiskOmitted)
	}
	for i, want := range []struct {
		chunk uint64
		n     int
		b     byte
	}{{0, DiskChunkBytes, 0xd0}, {3, DiskChunkBytes, 0xd0}, {5, 1024, 0xd5}} {
		c, data := d.DiskChunk(i)
		if c != want.chunk || !bytes.Equal(data, bytes.Repeat([]byte{want.b}, want.n)) {
			t.Fatalf("disk chunk %d: number %d, %d bytes; want number %d, %d bytes of %#x", i, c, len(data), want.chunk, want.n, want.b)
		}
	}
	// A VM without a disk has an empty section, and an omitted disk
	// keeps its size and flag.
	for _, edit := range []func(*Snapshot){
		func(s *Snapshot) { s.DiskBytes, s.DiskChunks, s.DiskData = 0, nil, nil },
		func(s *Snapshot) { s.DiskOmitted, s.DiskChunks, s.DiskData = true, nil, nil },
	} {
		s := sampleSnapshot()
		edit(s)
		enc, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		d, err := UnmarshalSnapshot(enc)
		if err != nil {
			t.Fatal(err)
		}
		if d.DiskBytes != s.DiskBytes || d.DiskOmitted != s.DiskOmitted || d.Chunks() != 0 || len(d.DiskData) != 0 {
			t.Fatalf("decoded disk %d bytes omitted %v chunks %d; want %d bytes omitted %v, none", d.DiskBytes, d.DiskOmitted, d.Chunks(), s.DiskBytes, s.DiskOmitted)
		}
	}
}

func TestSnapshotMarshalChecksTheDisk(t *testing.T) {
	cases := []struct {
		name string
		edit func(s *Snapshot)
		want string
	}{
		{"data too short", func(s *Snapshot) { s.DiskData = s.DiskData[:len(s.DiskData)-1] }, "bytes of disk data"},
		{"last chunk padded", func(s *Snapshot) { s.DiskData = append(s.DiskData, make([]byte, 3072)...) }, "bytes of disk data"},
		{"chunk past the disk", func(s *Snapshot) { s.DiskChunks[2] = 6 }, "beyond"},
		{"chunks out of order", func(s *Snapshot) { s.DiskChunks[1] = 0 }, "strictly increasing"},
		{"size not in sectors", func(s *Snapshot) { s.DiskBytes++ }, "multiple of the 512-byte sector"},
		{"omitted with chunks", func(s *Snapshot) { s.DiskOmitted = true }, "omitted"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := sampleSnapshot()
			c.edit(s)
			if _, err := s.MarshalBinary(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v; want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestDiskChunkArithmetic(t *testing.T) {
	for _, c := range []struct {
		size, chunks, lastLen uint64
	}{
		{0, 0, 0},
		{512, 1, 512},
		{DiskChunkBytes, 1, DiskChunkBytes},
		{DiskChunkBytes + 512, 2, 512},
		{sampleDiskBytes, 6, 1024},
		{1 << 30, 1 << 18, DiskChunkBytes},
	} {
		if n := diskChunks(c.size); n != c.chunks {
			t.Errorf("diskChunks(%d) = %d, want %d", c.size, n, c.chunks)
			continue
		}
		if c.chunks > 0 {
			if l := diskChunkLen(c.size, c.chunks-1); l != c.lastLen {
				t.Errorf("last chunk of a %d-byte disk is %d bytes, want %d", c.size, l, c.lastLen)
			}
			if l := diskDataBytes(c.size, []uint64{0, c.chunks - 1}); c.chunks > 1 && l != DiskChunkBytes+c.lastLen {
				t.Errorf("data of the first and last chunks of a %d-byte disk: %d bytes, want %d", c.size, l, DiskChunkBytes+c.lastLen)
			}
		}
	}
}

// TestChunkBitmap checks the written-chunk bitmap that increments are
// built from: a write marks every chunk it touches, and only those.
func TestChunkBitmap(t *testing.T) {
	const size = 130*DiskChunkBytes + 1024 // 131 chunks, over 3 words
	bm := make([]uint64, (diskChunks(size)+63)/64)
	for _, w := range []struct{ off, n uint64 }{
		{0, 512},                             // chunk 0
		{DiskChunkBytes - 512, 1024},         // chunks 0 and 1
		{63 * DiskChunkBytes, 65536},         // chunks 63-78, across a word
		{130 * DiskChunkBytes, 1024},         // the partial last chunk
		{100*DiskChunkBytes + 512, 0},        // nothing
		{127*DiskChunkBytes + 3584, 512 * 2}, // chunks 127 and 128
	} {
		markChunks(bm, w.off, w.n)
	}
	want := []uint64{0, 1}
	for c := uint64(63); c <= 78; c++ {
		want = append(want, c)
	}
	want = append(want, 127, 128, 130)
	got := dirtyPages(bm, diskChunks(size))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("marked chunks %v\nwant %v", got, want)
	}
	clear(bm)
	if got := dirtyPages(bm, diskChunks(size)); len(got) != 0 {
		t.Fatalf("after clear: %v", got)
	}
}

func TestSnapshotRefusesCorruption(t *testing.T) {
	enc, _ := sampleSnapshot().MarshalBinary()
	// Header, vCPU state and the first page: every flipped byte is caught.
	for i := 0; i < 2000; i++ {
		bad := bytes.Clone(enc)
		bad[i] ^= 0x01
		if _, err := UnmarshalSnapshot(bad); !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("flipping byte %d: err %v, want ErrBadSnapshot", i, err)
		}
	}
	// And every byte of the disk section and the checksum.
	for i := diskSectionOff(sampleSnapshot(), enc); i < len(enc); i++ {
		bad := bytes.Clone(enc)
		bad[i] ^= 0x40
		if _, err := UnmarshalSnapshot(bad); !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("flipping byte %d (disk section): err %v, want ErrBadSnapshot", i, err)
		}
	}
	disk := diskSectionOff(sampleSnapshot(), enc)
	for _, n := range []int{0, 10, 83, 84, 500, disk, disk + 8, disk + 20, len(enc) - 1025, len(enc) - 5, len(enc) - 1} {
		if _, err := UnmarshalSnapshot(enc[:n]); !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("truncated to %d: err %v", n, err)
		}
		// Truncated and resealed, the field checks must catch it.
		if n >= 4 {
			if _, err := UnmarshalSnapshot(reseal(bytes.Clone(enc[:n]))); !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("truncated to %d and resealed: err %v", n, err)
			}
		}
	}
}

// reseal recomputes the checksum, so that the field checks behind it are
// reached.
func reseal(b []byte) []byte {
	body := b[:len(b)-4]
	le.PutUint32(b[len(b)-4:], crc32.Checksum(body, castagnoli))
	return b
}

func TestSnapshotFieldChecks(t *testing.T) {
	enc, _ := sampleSnapshot().MarshalBinary()
	cases := []struct {
		name string
		edit func(b []byte)
		want string
	}{
		{"magic", func(b []byte) { copy(b, "NOTSNAP!") }, "not an ftvm snapshot"},
		{"old version", func(b []byte) { le.PutUint16(b[8:], 1) }, "format version 1; this VMM reads version 2"},
		{"kind", func(b []byte) { b[10] = 3 }, "kind is 3"},
		{"flags", func(b []byte) { b[11] = 0x80 }, "unknown flags"},
		{"seq chain", func(b []byte) { le.PutUint64(b[32:], 1) }, "seq 4 on base 1"},
		{"memory size", func(b []byte) { le.PutUint64(b[40:], 12345) }, "memory size"},
		{"vcpus", func(b []byte) { le.PutUint32(b[64:], 0) }, "vCPU count 0"},
		{"too many pages", func(b []byte) { le.PutUint64(b[72:], 1<<40) }, "page count"},
		{"page count vs bytes", func(b []byte) { le.PutUint64(b[72:], 6) }, "truncated"},
		{"fpu length", func(b []byte) { le.PutUint32(b[80+kvm.RegsSize+kvm.SregsSize:], 7) }, "kvm_fpu is 7 bytes"},
	}
	// The disk section: size, count, the 3 chunk numbers, then data.
	disk := diskSectionOff(sampleSnapshot(), enc)
	num := func(i int) int { return disk + 16 + 8*i }
	cases = append(cases, []struct {
		name string
		edit func(b []byte)
		want string
	}{
		{"disk size not in sectors", func(b []byte) { le.PutUint64(b[disk:], sampleDiskBytes+1) }, "not a multiple of the 512-byte sector"},
		{"disk chunk count over the disk", func(b []byte) { le.PutUint64(b[disk+8:], 7) }, "exceeds the 6 chunks"},
		{"disk chunk count that would overflow", func(b []byte) {
			le.PutUint64(b[disk:], 1<<63)
			le.PutUint64(b[disk+8:], 1<<51)
		}, "truncated"},
		{"disk chunk count vs bytes", func(b []byte) { le.PutUint64(b[disk+8:], 2) }, "trailing garbage"},
		{"disk chunk past the disk", func(b []byte) { le.PutUint64(b[num(2):], 6) }, "disk chunk 6 lies beyond"},
		{"disk chunks repeated", func(b []byte) { le.PutUint64(b[num(1):], 0) }, "not strictly increasing"},
		{"disk chunks reversed", func(b []byte) { le.PutUint64(b[num(0):], 4) }, "not strictly increasing"},
		{"disk data short", func(b []byte) { le.PutUint64(b[disk:], 6*DiskChunkBytes) }, "truncated: disk chunk data"},
		{"disk data long", func(b []byte) { le.PutUint64(b[disk:], 5*DiskChunkBytes+512) }, "trailing garbage"},
		{"disk omitted with chunks", func(b []byte) { b[11] |= snapshotFlagDiskOmitted }, "flagged omitted"},
	}...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(enc)
			c.edit(b)
			_, err := UnmarshalSnapshot(reseal(b))
			if !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v; want ErrBadSnapshot mentioning %q", err, c.want)
			}
		})
	}
	// Page numbers out of order or out of range.
	s := sampleSnapshot()
	s.PageNumbers = []uint64{5, 5, 6}
	b, _ := s.MarshalBinary()
	if _, err := UnmarshalSnapshot(b); err == nil || !strings.Contains(err.Error(), "strictly increasing") {
		t.Fatalf("repeated page: %v", err)
	}
	s.PageNumbers = []uint64{1, 2, 4096}
	b, _ = s.MarshalBinary()
	if _, err := UnmarshalSnapshot(b); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("page past memory: %v", err)
	}
}

func FuzzUnmarshalSnapshot(f *testing.F) {
	enc, _ := sampleSnapshot().MarshalBinary()
	f.Add(enc)
	full := sampleSnapshot()
	full.Kind, full.Seq, full.BaseSeq, full.PageNumbers, full.PageData = Full, 0, 0, nil, nil
	enc2, _ := full.MarshalBinary()
	f.Add(enc2)
	full.DiskChunks, full.DiskData = []uint64{5}, bytes.Repeat([]byte{9}, 1024)
	enc3, _ := full.MarshalBinary()
	f.Add(enc3)
	full.DiskBytes, full.DiskOmitted, full.DiskChunks, full.DiskData = 1<<20, true, nil, nil
	enc4, _ := full.MarshalBinary()
	f.Add(enc4)
	enc5, _ := liveSampleSnapshot().MarshalBinary()
	f.Add(enc5)
	f.Fuzz(func(t *testing.T, b []byte) {
		// The checksum stops almost every random input at the door;
		// resealing lets the fuzzer reach the field checks.
		if len(b) >= 4 {
			b = reseal(bytes.Clone(b))
		}
		s, err := UnmarshalSnapshot(b)
		if err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("error %v does not wrap ErrBadSnapshot", err)
			}
			return
		}
		again, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("a decoded snapshot does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatal("decode then encode changed the bytes")
		}
	})
}

// BenchmarkSnapshotCodec encodes and decodes a snapshot of 10,000 pages
// (40 MB); the baseline in the same run is one copy of the page bytes.
func BenchmarkSnapshotCodec(b *testing.B) {
	s := sampleSnapshot()
	s.MemSize = 64 << 20
	s.PageNumbers = make([]uint64, 10000)
	for i := range s.PageNumbers {
		s.PageNumbers[i] = uint64(i)
	}
	s.PageData = bytes.Repeat([]byte{7}, 10000*PageBytes)
	dst := make([]byte, len(s.PageData))
	var copyNs int64
	b.SetBytes(int64(len(s.PageData)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		enc, err := s.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := UnmarshalSnapshot(enc); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		t0 := time.Now()
		copy(dst, s.PageData)
		copyNs += time.Since(t0).Nanoseconds()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(max(copyNs, 1)), "x-memcpy")
}

func TestSnapshotClockNs(t *testing.T) {
	s := &Snapshot{Devices: []DeviceState{{Device: DeviceNIC, State: []byte{1}}, {Device: DeviceClock, State: stateWithVersion(clockStateVersion, []byte{1, 0, 0, 0, 0, 0, 0, 0})}}}
	if ns, ok := s.ClockNs(); !ok || ns != 1 {
		t.Fatalf("ClockNs = %d, %v; want 1, true", ns, ok)
	}
	if !s.SetClockNs(1 << 40) {
		t.Fatal("SetClockNs refused a snapshot with a clock")
	}
	c := newClock()
	if err := c.restoreState(s.Devices[1].State); err != nil || c.now() < 1<<40 {
		t.Fatalf("a clock restored after SetClockNs(1<<40) reads %d (%v)", c.now(), err)
	}
	if _, ok := (&Snapshot{Live: true}).ClockNs(); ok {
		t.Fatal("a snapshot without devices has a clock")
	}
	if (&Snapshot{}).SetClockNs(5) {
		t.Fatal("SetClockNs set a clock on a snapshot without one")
	}
}
