package vmm

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"testing"
	"time"
)

// spareEncodingWrong places the pages of two increments, one after the
// other, through one spareBuffer (as two resyncs' SnapshotCovering do),
// the first into a spare full of stale bytes (the worst a reused buffer
// could hold), and says what is wrong with the encodings, or "": each
// must be the bytes a snapshot encodes by copying, and the first must not
// change when the second is placed (the caller still ships it).
func spareEncodingWrong(t *testing.T) string {
	t.Helper()
	var sp spareBuffer
	stale := bytes.Repeat([]byte{0xa5}, spareMinBytes)
	sp.buf = stale
	mem := newMemory(make([]byte, sampleSnapshot().MemSize))
	var firstEnc, firstKept []byte
	// Pages enough for an encoding the spare serves (spareSmallBytes).
	sample := func() *Snapshot {
		s := sampleSnapshot()
		s.PageNumbers, s.PageData = nil, nil
		for p := uint64(0); p < 2*spareSmallBytes/PageBytes; p++ {
			s.PageNumbers = append(s.PageNumbers, 3*p)
			s.PageData = append(s.PageData, bytes.Repeat([]byte{byte(p + 1)}, PageBytes)...)
		}
		return s
	}
	for round := range 2 {
		want := sample()
		want.Seq, want.BaseSeq = want.Seq+uint64(round), want.BaseSeq+uint64(round)
		for i := range want.PageData {
			want.PageData[i] ^= byte(0x40 * (round + 1))
		}
		for i, p := range want.PageNumbers {
			copy(mem.buf[p*PageBytes:], want.PageData[i*PageBytes:(i+1)*PageBytes])
		}
		w, err := want.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		placed := sample()
		placed.Seq, placed.BaseSeq = want.Seq, want.BaseSeq
		placed.PageData = nil
		placed.placePages(mem, &sp)
		got, err := placed.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 && &got[0] != &stale[0] {
			return "the first increment was not encoded in the spare"
		}
		if !bytes.Equal(got, w) {
			return fmt.Sprintf("increment %d encoded in the spare differs from the same one encoded by copying, from byte %d", round, firstDiff(got, w))
		}
		if round == 0 {
			firstEnc, firstKept = got, bytes.Clone(got)
		}
	}
	if !bytes.Equal(firstEnc, firstKept) {
		return "the first increment's encoding changed when the second was placed: the spare was handed out twice"
	}
	return ""
}

// TestSpareEncodesAsCopied: an increment encoded in the spare, stale
// bytes and all, is the one encoded by copying, and the spare is handed
// to one snapshot only.
func TestSpareEncodesAsCopied(t *testing.T) { passes(t, spareEncodingWrong) }

// TestSpareHandedTwiceIsCaught plants a spare that stays after it is
// handed out: the check must see the first increment overwritten.
func TestSpareHandedTwiceIsCaught(t *testing.T) {
	caughtWhenPlanted(t, &spareHandedTwice, spareEncodingWrong, "the spare handed out twice")
}

// waitSpare waits for sp's spare to be at least n bytes.
func waitSpare(t *testing.T, sp *spareBuffer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		sp.mu.Lock()
		got, busy := cap(sp.buf), sp.preparing
		sp.mu.Unlock()
		if got >= n && !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no spare of %d bytes made (have %d)", n, got)
		}
	}
}

// TestSparePrepare: a spare is made in the background, of spareMinBytes
// at least; an encoding larger than it gets a buffer of its own and the
// next spare its size; a smaller one after takes the spare and the next
// spare shrinks back; none is made once closed.
func TestSparePrepare(t *testing.T) {
	var sp spareBuffer
	sp.prepare(0)
	waitSpare(t, &sp, spareMinBytes)
	spare := sp.buf
	big := sp.take(spareMinBytes + 1)
	if &big[0] == &spare[0] || len(big) != spareMinBytes+1 {
		t.Fatal("an encoding larger than the spare was given the spare")
	}
	sp.prepare(len(big))
	waitSpare(t, &sp, len(big))
	if tiny := sp.take(100); len(tiny) != 100 || cap(sp.buf) != len(big) {
		t.Fatalf("a tiny encoding took the spare (len %d, spare left %d)", len(tiny), cap(sp.buf))
	}
	small := sp.take(spareSmallBytes)
	if len(small) != spareSmallBytes || cap(small) != spareSmallBytes || sp.buf != nil {
		t.Fatalf("a small encoding did not take the spare whole (len %d cap %d, spare left %d)", len(small), cap(small), cap(sp.buf))
	}
	sp.prepare(len(small))
	waitSpare(t, &sp, spareMinBytes)
	if cap(sp.buf) != spareMinBytes {
		t.Fatalf("after a small encoding the next spare is %d bytes, want %d", cap(sp.buf), spareMinBytes)
	}
	sp.close()
	if sp.buf != nil {
		t.Fatal("close kept the spare")
	}
	sp.prepare(0)
	if sp.preparing || sp.buf != nil {
		t.Fatal("a closed VM's spare is made again")
	}
}

// TestCRC32CCombine: the combined checksum of two parts is the checksum
// of the whole, for every split of a few lengths.
func TestCRC32CCombine(t *testing.T) {
	b := make([]byte, 9000)
	garbage(7)(b)
	for _, n := range []int{0, 1, 7, 64, 4097, 9000} {
		whole := crc32.Checksum(b[:n], castagnoli)
		for cut := 0; cut <= n; cut += max(1, n/13) {
			got := crc32cCombine(crc32.Checksum(b[:cut], castagnoli), crc32.Checksum(b[cut:n], castagnoli), n-cut)
			if got != whole {
				t.Fatalf("%d bytes cut at %d: combined %#08x, whole %#08x", n, cut, got, whole)
			}
		}
	}
}
