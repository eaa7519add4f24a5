package vmm

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// testDiskBytes is 42 sectors: 5 whole chunks and a partial last one of
// 1024 bytes, so that every test of the disk section meets it.
const testDiskBytes = 5*DiskChunkBytes + 1024

// diskFile creates a file of size bytes; fill, if set, writes its initial
// content (nil leaves it sparse and zero).
func diskFile(t testing.TB, name string, size int, fill func([]byte)) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if fill != nil {
		b := make([]byte, size)
		fill(b)
		if _, err := f.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	return f
}

// garbage fills b with bytes that are never all zero in a chunk.
func garbage(seed uint64) func([]byte) {
	return func(b []byte) {
		r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
		for i := range b {
			b[i] = byte(r.Uint32()) | 1
		}
	}
}

func fileBytes(t testing.TB, f *os.File) []byte {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameDisk fails unless the two files hold the same bytes.
func sameDisk(t testing.TB, what string, got, want *os.File) {
	t.Helper()
	g, w := fileBytes(t, got), fileBytes(t, want)
	if !bytes.Equal(g, w) {
		if len(g) != len(w) {
			t.Fatalf("%s: disk is %d bytes, want %d", what, len(g), len(w))
		}
		at := firstDiff(g, w)
		t.Fatalf("%s: disk differs from the source first at byte %d (chunk %d): %#x, want %#x", what, at, at/DiskChunkBytes, g[at], w[at])
	}
}

// switchHook delivers outputs, or holds them while hold is set.
type switchHook struct {
	hold bool
	held []*Output
}

func (h *switchHook) OnExit(e *Exit) (Result, error) {
	if e.Dir == DirInput {
		return e.Live()
	}
	if !h.hold {
		return e.Deliver(), nil
	}
	o, err := e.Hold()
	if err != nil {
		return Result{Status: StatusOf(err)}, nil
	}
	h.held = append(h.held, o)
	return Result{}, nil
}

// blockWrite has the guest write n bytes of value v at sector.
func (b *exitBench) blockWrite(sector uint64, n int, v byte) {
	b.t.Helper()
	b.mem.Write(0x4000, bytes.Repeat([]byte{v}, n))
	if st, _ := b.mustCall(PortBlock, OpBlockWrite, 0x4000, uint32(n), sector); st != StatusOK {
		b.t.Fatalf("block write at sector %d: status %d", sector, st)
	}
}

func chunksOf(s *Snapshot) string { return fmt.Sprint(s.DiskChunks) }

// TestBlockDiskSnapshot takes a full snapshot of a disk with a held write
// and an increment after more writes, and restores them on disks full of
// garbage: each must end up equal to the source file, without the write
// that was still held.
func TestBlockDiskSnapshot(t *testing.T) {
	h := &switchHook{}
	b := newExitBench(t, benchOpts{hook: h})
	// Durable content the guest never wrote: chunk 4.
	src := diskFile(t, "src", testDiskBytes, func(p []byte) { copy(p[4*DiskChunkBytes:], bytes.Repeat([]byte{0x44}, 100)) })
	blk, err := newBlock(src, false)
	if err != nil {
		t.Fatal(err)
	}
	b.disp.devs[DeviceBlock] = blk
	b.blockWrite(0, 1024, 0xa1) // chunk 0
	b.blockWrite(41, 512, 0xa2) // the last sector: partial chunk 5
	b.blockWrite(24, 512, 0x00) // zeros into chunk 3: not in a full snapshot
	h.hold = true
	b.blockWrite(16, 1024, 0xa3) // chunk 2, held
	h.hold = false

	var full Snapshot
	full.Kind = Full
	if err := blk.saveDisk(Full, &full, nil); err != nil {
		t.Fatal(err)
	}
	if chunksOf(&full) != "[0 4 5]" || full.DiskBytes != testDiskBytes {
		t.Fatalf("full snapshot of a %d-byte disk holds chunks %s; want [0 4 5] (chunk 2 is held, 3 is zero)", full.DiskBytes, chunksOf(&full))
	}
	if _, last := full.DiskChunk(2); len(last) != 1024 || last[512] != 0xa2 {
		t.Fatalf("the partial last chunk is %d bytes; want 1024 ending in the write", len(last))
	}

	restore := func(name string, snaps ...*Snapshot) *os.File {
		t.Helper()
		f := diskFile(t, name, testDiskBytes, garbage(uint64(len(name))))
		dst, err := newBlock(f, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snaps {
			if err := dst.checkRestoreDisk(s); err != nil {
				t.Fatal(err)
			}
			if err := dst.restoreDisk(s); err != nil {
				t.Fatal(err)
			}
		}
		return f
	}
	dst := restore("dst", &full)
	sameDisk(t, "after the full restore", dst, src)

	// More writes, the held one released, a chunk zeroed: the increment
	// holds just those chunks, the zeroed one too.
	b.blockWrite(2, 512, 0xa4) // chunk 0 again
	if err := h.held[0].Release(); err != nil {
		t.Fatal(err)
	}
	b.blockWrite(32, 512, 0x00) // zeros over chunk 4's durable bytes
	inc := Snapshot{Kind: Incremental}
	if err := blk.saveDisk(Incremental, &inc, nil); err != nil {
		t.Fatal(err)
	}
	if chunksOf(&inc) != "[0 2 4]" {
		t.Fatalf("increment holds chunks %s; want [0 2 4]", chunksOf(&inc))
	}
	sameDisk(t, "full then increment on a fresh disk", restore("full+inc", &full, &inc), src)
	// The increment on the disk restored before equals the source too.
	dstBlk, _ := newBlock(dst, false)
	if err := dstBlk.restoreDisk(&inc); err != nil {
		t.Fatal(err)
	}
	sameDisk(t, "increment on the restored disk", dst, src)

	// The next increment, with no writes since, is empty.
	var empty Snapshot
	if err := blk.saveDisk(Incremental, &empty, nil); err != nil || empty.Chunks() != 0 {
		t.Fatalf("increment with no writes: %s, %v", chunksOf(&empty), err)
	}
}

func TestBlockRestoreDiskRefusals(t *testing.T) {
	src := diskFile(t, "src", testDiskBytes, nil)
	own, _ := newBlock(src, false)
	shared, _ := newBlock(src, true)
	small, _ := newBlock(diskFile(t, "small", testDiskBytes-512, nil), false)
	none, _ := newBlock(nil, false)

	var withData, omitted, noDisk Snapshot
	if err := own.saveDisk(Full, &withData, nil); err != nil {
		t.Fatal(err)
	}
	if err := shared.saveDisk(Full, &omitted, nil); err != nil || !omitted.DiskOmitted || omitted.DiskBytes != testDiskBytes {
		t.Fatalf("shared-storage snapshot: omitted %v, %d bytes, %v", omitted.DiskOmitted, omitted.DiskBytes, err)
	}
	if err := none.saveDisk(Full, &noDisk, nil); err != nil || noDisk.DiskBytes != 0 || noDisk.Chunks() != 0 {
		t.Fatalf("no disk: %d bytes, %d chunks, %v; want an empty section", noDisk.DiskBytes, noDisk.Chunks(), err)
	}
	for _, c := range []struct {
		name string
		dev  *blockDevice
		s    *Snapshot
		want string
	}{
		{"size mismatch", small, &withData, "this VM's disk is 20992 bytes"},
		{"disk into no disk", none, &withData, "this VM's disk is 0 bytes"},
		{"no disk into a disk", own, &noDisk, "the snapshot's disk is 0 bytes"},
		{"omitted into own", own, &omitted, "holds no disk contents"},
		{"contents into shared", shared, &withData, "must not be rewritten"},
	} {
		if err := c.dev.checkRestoreDisk(c.s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v; want one mentioning %q", c.name, err, c.want)
		}
	}
	for _, ok := range []struct {
		dev *blockDevice
		s   *Snapshot
	}{{own, &withData}, {shared, &omitted}, {none, &noDisk}} {
		if err := ok.dev.checkRestoreDisk(ok.s); err != nil {
			t.Errorf("a matching restore is refused: %v", err)
		}
	}
}

// TestZeroDisk checks both ways of clearing a disk before a full
// restore: the hole punch, and the fallback that overwrites non-zero
// chunks where the filesystem cannot punch.
func TestZeroDisk(t *testing.T) {
	for name, zero := range map[string]func(*os.File, uint64) error{"punch": zeroDisk, "write": zeroDiskByWriting} {
		t.Run(name, func(t *testing.T) {
			// 3 bytes past the last whole sector: not the guest's, left alone.
			f := diskFile(t, "d", testDiskBytes+3, garbage(7))
			tail := fileBytes(t, f)[testDiskBytes:]
			if err := zero(f, testDiskBytes); err != nil {
				t.Fatal(err)
			}
			got := fileBytes(t, f)
			if len(got) != testDiskBytes+3 {
				t.Fatalf("the file is %d bytes after zeroing; want its size kept, %d", len(got), testDiskBytes+3)
			}
			if !bytes.Equal(got[:testDiskBytes], make([]byte, testDiskBytes)) || !bytes.Equal(got[testDiskBytes:], tail) {
				t.Fatalf("after zeroing: first non-zero byte at %d, tail %x (was %x)", firstDiff(got, make([]byte, len(got))), got[testDiskBytes:], tail)
			}
		})
	}
}

// TestNonZeroChunksOfASparseFile scans a 1 GiB sparse file holding data in
// three places: the scan finds exactly those chunks (and, skipping the
// holes, finishes at once).
func TestNonZeroChunksOfASparseFile(t *testing.T) {
	const size = 1 << 30
	f := diskFile(t, "sparse", size, nil)
	for _, off := range []int64{5, 300 << 20, size - 1} {
		if _, err := f.WriteAt([]byte{0xee}, off); err != nil {
			t.Fatal(err)
		}
	}
	// A written chunk of zeros is data to SEEK_DATA but not a chunk to save.
	if _, err := f.WriteAt(make([]byte, DiskChunkBytes), 600<<20); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	err := forEachNonZeroChunk(f, size, nil, func(c uint64, chunk []byte) error {
		if len(chunk) != DiskChunkBytes {
			t.Errorf("chunk %d is %d bytes", c, len(chunk))
		}
		got = append(got, c)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint([]uint64{0, (300 << 20) / DiskChunkBytes, size/DiskChunkBytes - 1}); fmt.Sprint(got) != want {
		t.Fatalf("non-zero chunks %v, want %s", got, want)
	}
}

// Zeroing the disk for a full restore keeps it backed: a hole punched to
// zero it is allocated again, so that the guest's later writes cannot
// fail for space the restore gave back.
func TestZeroDiskKeepsTheDiskAllocated(t *testing.T) {
	const size = 1 << 20
	// zeroDisk zeroes all of it (a restore that rewrites all); zeroRange
	// the chunks a snapshot lacks (a restore that writes the difference).
	zeroers := map[string]func(*os.File) error{
		"zeroDisk":  func(f *os.File) error { return zeroDisk(f, size) },
		"zeroRange": func(f *os.File) error { return zeroRange(f, 0, size) },
	}
	for name, zero := range zeroers {
		f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		if err := PreallocateDisk(f); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("data"), 4096); err != nil {
			t.Fatal(err)
		}
		if err := zero(f); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 < size {
			t.Fatalf("%s: after zeroing, %d of the disk's %d bytes are allocated", name, st.Blocks*512, size)
		}
		b := make([]byte, 4)
		if _, err := f.ReadAt(b, 4096); err != nil || string(b) != "\x00\x00\x00\x00" {
			t.Fatalf("%s: zeroed disk reads %q (%v)", name, b, err)
		}
	}
}

// TestBlockFullRestoreWritesTheDifference restores a full snapshot on a
// disk that holds almost the same thing, as a joining secondary's disk
// does: the result equals the source, and only the chunks that differ are
// written (one changed, one missing; one the source lacks is zeroed). The
// old way, zeroing the disk and rewriting it all, writes every chunk.
func TestBlockFullRestoreWritesTheDifference(t *testing.T) {
	const size = 16*DiskChunkBytes + 512 // a partial last chunk
	fill := func(p []byte) {
		for c := range 10 {
			copy(p[c*DiskChunkBytes:], bytes.Repeat([]byte{byte(0x10 + c)}, 300))
		}
		copy(p[16*DiskChunkBytes:], []byte("tail"))
	}
	src := diskFile(t, "src", size, fill)
	srcBlk, err := newBlock(src, false)
	if err != nil {
		t.Fatal(err)
	}
	var full Snapshot
	full.Kind = Full
	if err := srcBlk.saveDisk(Full, &full, nil); err != nil {
		t.Fatal(err)
	}
	if full.Chunks() != 11 {
		t.Fatalf("full snapshot holds %d chunks, want 11", full.Chunks())
	}
	for _, rewriteAll := range []bool{false, true} {
		dst := diskFile(t, fmt.Sprint("dst-", rewriteAll), size, func(p []byte) {
			fill(p)
			p[3*DiskChunkBytes+7] ^= 0xff                                  // chunk 3 differs
			clear(p[7*DiskChunkBytes : 8*DiskChunkBytes])                  // chunk 7 missing
			copy(p[12*DiskChunkBytes+100:], []byte("not in the snapshot")) // chunk 12 extra
		})
		blk, err := newBlock(dst, false)
		if err != nil {
			t.Fatal(err)
		}
		restoreRewritesAll = rewriteAll
		err = blk.restoreDisk(&full)
		restoreRewritesAll = false
		if err != nil {
			t.Fatal(err)
		}
		sameDisk(t, fmt.Sprintf("full restore (rewrite all %v)", rewriteAll), dst, src)
		want := uint64(2)
		if rewriteAll {
			want = 11
		}
		if blk.restoredChunks != want {
			t.Errorf("rewrite all %v: the restore wrote %d chunks, want %d", rewriteAll, blk.restoredChunks, want)
		}
	}
}

// restoreSyncsWrong restores, on a disk that holds the source's content,
// an increment with no chunks, one with a chunk, a Full snapshot of the
// same content and one with a chunk the disk must lose, and says what is
// wrong with the fdatasyncs they made, or "": a restore that changes the
// file makes it durable, one that changes nothing need not (the file is
// as durable as before).
func restoreSyncsWrong(t *testing.T) string {
	t.Helper()
	fill := func(p []byte) { copy(p[DiskChunkBytes:], []byte("chunk one")) }
	src := diskFile(t, "src", testDiskBytes, fill)
	srcBlk, err := newBlock(src, false)
	if err != nil {
		t.Fatal(err)
	}
	full := Snapshot{Kind: Full}
	if err := srcBlk.saveDisk(Full, &full, nil); err != nil {
		t.Fatal(err)
	}
	dst := diskFile(t, "dst", testDiskBytes, fill)
	blk, err := newBlock(dst, false)
	if err != nil {
		t.Fatal(err)
	}
	chunk := Snapshot{Kind: Incremental, DiskBytes: testDiskBytes, DiskChunks: []uint64{2}, DiskData: bytes.Repeat([]byte{0x22}, DiskChunkBytes)}
	extra := Snapshot{Kind: Full, DiskBytes: testDiskBytes} // the disk loses chunks 1 and 2
	for _, c := range []struct {
		what string
		s    *Snapshot
		sync bool
	}{
		{"an increment with no chunks", &Snapshot{Kind: Incremental, DiskBytes: testDiskBytes}, false},
		{"a full snapshot of what the disk holds", &full, false},
		{"an increment with a chunk", &chunk, true},
		{"a full snapshot of an empty disk", &extra, true},
	} {
		was := blk.restoreSyncs
		if err := blk.restoreDisk(c.s); err != nil {
			t.Fatal(err)
		}
		if synced := blk.restoreSyncs > was; synced != c.sync {
			return fmt.Sprintf("restoring %s: fdatasync made %v, want %v", c.what, synced, c.sync)
		}
	}
	sameDisk(t, "after the restores", dst, diskFile(t, "zero", testDiskBytes, nil))
	return ""
}

// TestBlockRestoreSyncsWhatItChanged: a restore makes what it wrote
// durable, and a restore that wrote nothing (a resync's increment with no
// disk chunks) makes no fdatasync, which would flush the device's cache
// in the pause.
func TestBlockRestoreSyncsWhatItChanged(t *testing.T) { passes(t, restoreSyncsWrong) }

// TestBlockRestoreSkippingSyncIsCaught plants a restore that writes
// chunks without an fdatasync: the check must catch it.
func TestBlockRestoreSkippingSyncIsCaught(t *testing.T) {
	caughtWhenPlanted(t, &restoreSkipsSync, restoreSyncsWrong, "restores that skip their fdatasync")
}

// TestBlockDiskSnapshotOverReleasedWrites: held writes named as released
// are saved as if performed, in order (a later one over an earlier one,
// into chunks the file has as zeros, and into chunks also written
// before); a held write not named stays out. Restored, the snapshot gives
// the source's file once the named writes are performed.
func TestBlockDiskSnapshotOverReleasedWrites(t *testing.T) {
	for _, kind := range []SnapshotKind{Full, Incremental} {
		t.Run(kind.String(), func(t *testing.T) {
			h := &switchHook{}
			b := newExitBench(t, benchOpts{hook: h})
			src := diskFile(t, "src", testDiskBytes, nil)
			blk, err := newBlock(src, false)
			if err != nil {
				t.Fatal(err)
			}
			b.disp.devs[DeviceBlock] = blk
			b.blockWrite(0, 1024, 0xa1) // chunk 0, performed
			base := Snapshot{Kind: Full}
			if err := blk.saveDisk(Full, &base, nil); err != nil {
				t.Fatal(err)
			}
			b.blockWrite(8, 512, 0xa5) // chunk 1, performed after the base
			h.hold = true
			b.blockWrite(16, 1024, 0xa3) // held: chunk 2 (zeros on the file)
			b.blockWrite(17, 512, 0xb3)  // held, over part of the one before
			b.blockWrite(1, 512, 0xc1)   // held, into chunk 0
			b.blockWrite(32, 512, 0xd4)  // held and not released: out
			h.hold = false
			released := h.held[:3]

			s := Snapshot{Kind: kind}
			if err := blk.saveDisk(kind, &s, released); err != nil {
				t.Fatal(err)
			}
			// Chunk 1 is in both: non-zero, and written since the base.
			if want := "[0 1 2]"; chunksOf(&s) != want {
				t.Fatalf("%s snapshot holds chunks %s; want %s (the released writes' chunks, not the held one's)", kind, chunksOf(&s), want)
			}
			for _, o := range released {
				if err := o.Release(); err != nil {
					t.Fatal(err)
				}
			}
			f := diskFile(t, "dst", testDiskBytes, garbage(7))
			dst, err := newBlock(f, false)
			if err != nil {
				t.Fatal(err)
			}
			chain := []*Snapshot{&s}
			if kind == Incremental {
				chain = []*Snapshot{&base, &s}
			}
			for _, c := range chain {
				if err := dst.restoreDisk(c); err != nil {
					t.Fatal(err)
				}
			}
			sameDisk(t, "restored, against the source with the released writes performed", f, src)
		})
	}
}
