package vmm

import (
	"bytes"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
	"time"
)

func sampleSnapshot() *Snapshot {
	s := &Snapshot{
		Kind: Incremental, ChainID: 0xfeedface, Seq: 4, BaseSeq: 3,
		MemSize: 16 << 20, NextExit: 1234, Halted: true, ExitCode: 9,
		VCPUs: []VCPUState{{
			Regs:   Regs{RIP: 0x401000, RSP: 16 << 20, RFLAGS: 0x3002},
			Sregs:  initialSregs(),
			XSAVE:  bytes.Repeat([]byte{1}, kvmXsaveSize),
			XCRs:   bytes.Repeat([]byte{2}, kvmXcrsSize),
			Events: bytes.Repeat([]byte{3}, kvmVcpuEventsSize),
			MSRs:   []MSR{{Index: 0x10, Value: 99}, {Index: 0xC0000100, Value: 7}},
		}},
		Devices:     []DeviceState{{Device: DeviceClock, State: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9}}, {Device: DeviceNIC, State: []byte{1, 2, 2, 2, 2, 2, 2}}},
		PageNumbers: []uint64{0, 5, 4095},
	}
	for i := range s.PageNumbers {
		s.PageData = append(s.PageData, bytes.Repeat([]byte{byte(i + 1)}, PageBytes)...)
	}
	return s
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
	for _, n := range []int{0, 10, 83, 84, 500, len(enc) - 5, len(enc) - 1} {
		if _, err := UnmarshalSnapshot(enc[:n]); !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("truncated to %d: err %v", n, err)
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
		{"version", func(b []byte) { le.PutUint16(b[8:], 2) }, "format version 2"},
		{"kind", func(b []byte) { b[10] = 3 }, "kind is 3"},
		{"flags", func(b []byte) { b[11] = 0x80 }, "unknown flags"},
		{"seq chain", func(b []byte) { le.PutUint64(b[32:], 1) }, "seq 4 on base 1"},
		{"memory size", func(b []byte) { le.PutUint64(b[40:], 12345) }, "memory size"},
		{"vcpus", func(b []byte) { le.PutUint32(b[64:], 0) }, "vCPU count 0"},
		{"too many pages", func(b []byte) { le.PutUint64(b[72:], 1<<40) }, "page count"},
		{"page count vs bytes", func(b []byte) { le.PutUint64(b[72:], 4) }, "truncated"},
		{"fpu length", func(b []byte) { le.PutUint32(b[80+kvmRegsSize+kvmSregsSize:], 7) }, "kvm_fpu is 7 bytes"},
	}
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
