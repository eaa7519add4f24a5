package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"slices"
	"strings"
	"testing"
)

func sampleDirtySet() *DirtySet {
	return &DirtySet{
		ChainID: 0x1122334455667788, Seq: 7,
		MemSize: 64 << 20, DiskBytes: 1 << 20,
		Pages:  []uint64{0, 1, 2, 9, 100, 101, 16383},
		Chunks: []uint64{3, 4, 255},
	}
}

// resealDirtySet recomputes the checksum of an encoded set, so that a
// test (or the fuzzer) that edits a field reaches its check.
func resealDirtySet(b []byte) []byte {
	n := len(b) - dirtySetCRCBytes
	le.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b
}

func TestDirtySetRoundTrip(t *testing.T) {
	every := func(n uint64, step uint64) []uint64 {
		var out []uint64
		for v := uint64(0); v < n; v += step {
			out = append(out, v)
		}
		return out
	}
	for _, d := range []*DirtySet{
		sampleDirtySet(),
		{MemSize: 8 << 20},                        // empty, no disk
		{MemSize: 8 << 20, DiskBytes: 512},        // a one-sector disk (one partial chunk)
		{MemSize: 8 << 20, Pages: every(2048, 1)}, // all of memory: one range
		{MemSize: 8 << 20, Pages: every(2048, 2)}, // scattered: the bitmap is shorter
		{MemSize: 2 << 30, DiskBytes: 2 << 30, Pages: every(2<<30/PageBytes, 2), Chunks: every(2<<30/DiskChunkBytes, 2)}, // the worst case
	} {
		enc, err := d.MarshalBinary()
		if err != nil {
			t.Fatalf("encode %d pages %d chunks: %v", len(d.Pages), len(d.Chunks), err)
		}
		if len(enc) > MaxDirtySetBytes {
			t.Fatalf("%d pages %d chunks encode in %d bytes, more than MaxDirtySetBytes %d", len(d.Pages), len(d.Chunks), len(enc), MaxDirtySetBytes)
		}
		got, err := UnmarshalDirtySet(enc)
		if err != nil {
			t.Fatalf("decode %d pages %d chunks: %v", len(d.Pages), len(d.Chunks), err)
		}
		if got.ChainID != d.ChainID || got.Seq != d.Seq || got.MemSize != d.MemSize || got.DiskBytes != d.DiskBytes ||
			!slices.Equal(got.Pages, d.Pages) || !slices.Equal(got.Chunks, d.Chunks) {
			t.Fatalf("round trip changed the set: %+v", got)
		}
	}
}

// TestDirtySetLayout pins the documented layout byte by byte.
func TestDirtySetLayout(t *testing.T) {
	d := &DirtySet{ChainID: 1, Seq: 2, MemSize: 8 << 20, DiskBytes: 4096, Pages: []uint64{3, 4, 5, 300}, Chunks: nil}
	enc, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("FTVMDIRT")
	want = append(want, 1, 0, 0, 0, 0, 0, 0, 0)
	for _, v := range []uint64{1, 2, 8 << 20, 4096} {
		want = le.AppendUint64(want, v)
	}
	// pages: ranges (gap 3, run 3), (gap 294, run 1): 294 takes 2 bytes.
	want = append(want, 0, 0, 0, 0, 5, 0, 0, 0, 3, 3, 0xa6, 0x02, 1)
	// chunks: empty ranges.
	want = append(want, 0, 0, 0, 0, 0, 0, 0, 0)
	want = le.AppendUint32(want, crc32.Checksum(want, castagnoli))
	if !bytes.Equal(enc, want) {
		t.Fatalf("encoding\n got %x\nwant %x", enc, want)
	}
}

func TestDirtySetRefusesBadInput(t *testing.T) {
	good, err := sampleDirtySet().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	pagesAt := dirtySetHeaderBytes
	for _, c := range []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"short", func(b []byte) []byte { return b[:20] }, "truncated"},
		{"too long", func(b []byte) []byte { return make([]byte, MaxDirtySetBytes+1) }, "more than MaxDirtySetBytes"},
		{"magic", func(b []byte) []byte { b[0] = 'X'; return resealDirtySet(b) }, "magic"},
		{"version", func(b []byte) []byte { b[8] = 2; return resealDirtySet(b) }, "version"},
		{"crc", func(b []byte) []byte { b[20] ^= 1; return b }, "checksum"},
		{"reserved", func(b []byte) []byte { b[12] = 1; return resealDirtySet(b) }, "reserved"},
		{"mem size", func(b []byte) []byte { le.PutUint64(b[32:], 3<<20); return resealDirtySet(b) }, "memory size"},
		{"disk size", func(b []byte) []byte { le.PutUint64(b[40:], 1000); return resealDirtySet(b) }, "sector"},
		{"form", func(b []byte) []byte { b[pagesAt] = 2; return resealDirtySet(b) }, "form"},
		{"section reserved", func(b []byte) []byte { b[pagesAt+1] = 1; return resealDirtySet(b) }, "reserved"},
		{"section length", func(b []byte) []byte { le.PutUint32(b[pagesAt+4:], 1<<30); return resealDirtySet(b) }, "truncated"},
		{"empty run", func(b []byte) []byte { b[pagesAt+9] = 0; return resealDirtySet(b) }, "empty or adjacent"},
		{"adjacent", func(b []byte) []byte { b[pagesAt+10] = 0; return resealDirtySet(b) }, "empty or adjacent"},
		{"past the end", func(b []byte) []byte {
			d := sampleDirtySet()
			d.MemSize = 8 << 20 // page 16383 is past 2048 pages
			b = bytes.Clone(good)
			le.PutUint64(b[32:], d.MemSize)
			return resealDirtySet(b)
		}, "past the last"},
		{"trailing", func(b []byte) []byte { return resealDirtySet(append(b[:len(b)-4:len(b)-4], 0, 0, 0, 0, 0)) }, "trailing"},
		{"overlong varint", func(b []byte) []byte {
			d := &DirtySet{MemSize: 8 << 20, Pages: []uint64{1}}
			e, _ := d.MarshalBinary()
			// (gap 1, run 1) as (0x81 0x00, 0x01): 1 in two bytes.
			e = append(e[:pagesAt:pagesAt], 0, 0, 0, 0, 3, 0, 0, 0, 0x81, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
			return resealDirtySet(e)
		}, "varint of 2 bytes"},
		{"longer form", func(b []byte) []byte {
			// One page as a bitmap (256 bytes) where the ranges take 2.
			e := []byte("FTVMDIRT")
			e = append(e, 1, 0, 0, 0, 0, 0, 0, 0)
			for _, v := range []uint64{0, 0, 8 << 20, 0} {
				e = le.AppendUint64(e, v)
			}
			e = append(e, 1, 0, 0, 0, 0, 1, 0, 0)
			bm := make([]byte, 256)
			bm[0] = 2
			e = append(e, bm...)
			e = append(e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
			return resealDirtySet(e)
		}, "canonical"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := UnmarshalDirtySet(c.edit(bytes.Clone(good)))
			if err == nil || !errors.Is(err, ErrBadDirtySet) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an ErrBadDirtySet saying %q", err, c.want)
			}
		})
	}
}

func TestDirtySetMarshalRefusesInvalidSets(t *testing.T) {
	for name, d := range map[string]*DirtySet{
		"mem size":     {MemSize: 1 << 20},
		"disk size":    {MemSize: 8 << 20, DiskBytes: 100},
		"page order":   {MemSize: 8 << 20, Pages: []uint64{5, 5}},
		"page range":   {MemSize: 8 << 20, Pages: []uint64{2048}},
		"chunk range":  {MemSize: 8 << 20, DiskBytes: 4096, Chunks: []uint64{1}},
		"too many":     {MemSize: 8 << 20, DiskBytes: 1 << 40, Chunks: make([]uint64, dirtySetMaxItems+1)},
		"does not fit": {MemSize: 8 << 20, DiskBytes: 1 << 40, Chunks: spread(dirtySetMaxItems, 1<<20)},
	} {
		if _, err := d.MarshalBinary(); err == nil {
			t.Errorf("%s: MarshalBinary accepted %d pages, %d chunks", name, len(d.Pages), len(d.Chunks))
		}
	}
}

// spread lists n numbers step apart.
func spread(n int, step uint64) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i) * step
	}
	return out
}

func FuzzDirtySet(f *testing.F) {
	for _, d := range []*DirtySet{sampleDirtySet(), {MemSize: 8 << 20}, {MemSize: 8 << 20, DiskBytes: 1 << 20, Pages: spread(1024, 2), Chunks: spread(100, 2)}} {
		enc, err := d.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 4 {
			b = resealDirtySet(bytes.Clone(b))
		}
		d, err := UnmarshalDirtySet(b)
		if err != nil {
			if !errors.Is(err, ErrBadDirtySet) {
				t.Fatalf("error %v does not wrap ErrBadDirtySet", err)
			}
			return
		}
		again, err := d.MarshalBinary()
		if err != nil {
			t.Fatalf("a decoded set does not encode: %v", err)
		}
		// One encoding per set: whatever decodes is that encoding.
		if !bytes.Equal(again, b) {
			t.Fatalf("decode then encode changed the bytes:\n in %x\nout %x", b, again)
		}
		if binary.Size(d.Pages) > 8*dirtySetMaxItems {
			t.Fatalf("decoded %d pages", len(d.Pages))
		}
	})
}

// TestSnapshotPlacedPagesEncodeAlike: a snapshot whose pages were copied
// straight into its encoding's buffer (placePages, as SnapshotCovering
// does) encodes to the same bytes as one that copies them, also after a
// field before the pages changed (SetClockNs), and twice in a row.
func TestSnapshotPlacedPagesEncodeAlike(t *testing.T) {
	want := sampleSnapshot()
	mem := newMemory(make([]byte, want.MemSize))
	for i, p := range want.PageNumbers {
		copy(mem.buf[p*PageBytes:], want.PageData[i*PageBytes:(i+1)*PageBytes])
	}
	placed := sampleSnapshot()
	placed.PageData = nil
	placed.placePages(mem, nil)
	for step := 0; step < 3; step++ {
		if step == 2 {
			want.SetClockNs(12345)
			placed.SetClockNs(12345)
		}
		w, err := want.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		got, err := placed.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("step %d: the placed snapshot encodes differently from byte %d", step, firstDiff(got, w))
		}
		if &got[0] != &placed.encoded[0] {
			t.Fatalf("step %d: the placed snapshot was copied, not encoded in place", step)
		}
	}
	// A different length before the pages: encoded by copying, still right.
	want.Devices = want.Devices[:1]
	placed.Devices = placed.Devices[:1]
	w, _ := want.MarshalBinary()
	got, err := placed.MarshalBinary()
	if err != nil || !bytes.Equal(got, w) {
		t.Fatalf("after a change of length the placed snapshot encodes wrong (%v)", err)
	}
}
