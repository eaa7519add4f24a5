package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// heldWrite holds a block write of n bytes of v at sector on blk, as Hold
// does for the guest's.
func heldWrite(blk *blockDevice, sector uint64, n int, v byte) *Output {
	o := &Output{Device: DeviceBlock, Op: OpBlockWrite, Arg: sector, Data: bytes.Repeat([]byte{v}, n), dev: blk}
	blk.hold(o)
	return o
}

// A write made by WriteUnsynced is in the file and stays held (a Release
// would write it again) until MarkDurable, which ends it like a Release.
func TestOutputWriteUnsyncedStaysHeldUntilMarkedDurable(t *testing.T) {
	f := diskFile(t, "disk", testDiskBytes, nil)
	blk, err := newBlock(f, false)
	if err != nil {
		t.Fatal(err)
	}
	o := heldWrite(blk, 8, 1024, 0xb1)
	if err := o.WriteUnsynced(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1024)
	if _, err := f.ReadAt(got, 8*BlockSectorBytes); err != nil || !bytes.Equal(got, o.Data) {
		t.Fatalf("after WriteUnsynced the file holds %x... (err %v), want the write", got[:4], err)
	}
	if w := blk.takeWritten(); len(blk.pending) != 1 || !slices.Equal(w, []uint64{8 * BlockSectorBytes / DiskChunkBytes}) {
		t.Fatalf("after WriteUnsynced: %d held, chunks written %v; want it still held and its chunk in the next increment", len(blk.pending), w)
	}
	if err := o.SyncDisk(); err != nil {
		t.Fatal(err)
	}
	o.MarkDurable()
	if len(blk.pending) != 0 {
		t.Fatalf("after MarkDurable %d writes are held, want none", len(blk.pending))
	}
	// Done: a Release now writes nothing.
	copy(o.Data, bytes.Repeat([]byte{0xee}, 1024))
	if err := o.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got, 8*BlockSectorBytes); err != nil || got[0] != 0xb1 {
		t.Fatalf("a Release after MarkDurable wrote again: %x", got[:4])
	}
	// Not a block write: refused.
	if err := (&Output{Device: DeviceConsole, dev: &consoleDevice{}}).WriteUnsynced(); !errors.Is(err, errNotBlockWrite) {
		t.Fatalf("WriteUnsynced of a console write: %v, want errNotBlockWrite", err)
	}
}

// BenchmarkBlockDrain drains a queue of writes (what a secondary that
// rejoined is behind by) on a disk file: each written and made durable
// by Release, as a primary does, against written by WriteUnsynced and
// made durable by one SyncDisk, as a secondary's batch does. The figure
// is ns/op for the whole drain.
func BenchmarkBlockDrain(b *testing.B) {
	const writes, n = 300, 4096
	for _, batch := range []bool{false, true} {
		b.Run(fmt.Sprintf("writes=%d/batch=%v", writes, batch), func(b *testing.B) {
			f := diskFile(b, "disk", writes*n, func(p []byte) {
				for i := range p {
					p[i] = 1
				}
			})
			blk, err := newBlock(f, false)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				outs := make([]*Output, writes)
				for k := range outs {
					outs[k] = heldWrite(blk, uint64(k*n/BlockSectorBytes), n, byte(i+k))
				}
				b.StartTimer()
				if !batch {
					for _, o := range outs {
						if err := o.Release(); err != nil {
							b.Fatal(err)
						}
					}
					continue
				}
				for _, o := range outs {
					if err := o.WriteUnsynced(); err != nil {
						b.Fatal(err)
					}
				}
				if err := outs[0].SyncDisk(); err != nil {
					b.Fatal(err)
				}
				for _, o := range outs {
					o.MarkDurable()
				}
			}
		})
	}
}
