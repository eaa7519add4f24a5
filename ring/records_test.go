package ring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// placeAt empties r and puts both cursors at pos, as if pos bytes had
// already passed through it, so that tests can start at any offset and near
// the 2^64 wrap of the counters.
func (r *Records) placeAt(pos uint64) {
	r.tail.Store(pos)
	r.head.Store(pos)
	r.prodTail, r.reserveEnd, r.headSeen = pos, pos, pos
	r.consHead, r.tailSeen = pos, pos
	r.peekLen, r.peekEnd, r.peekAtMarker, r.canTrim = 0, 0, false, false
	r.wrapAt[0].Store(0)
	r.wrapAt[1].Store(0)
}

func newRecords(t testing.TB, capacityBytes int) *Records {
	t.Helper()
	r, err := NewRecords(capacityBytes, Park)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// payloadFor is the content of record seq with n bytes: its sequence number
// first (when it fits), then bytes derived from it.
func payloadFor(seq uint64, n int) []byte {
	p := make([]byte, n)
	fillPayload(p, seq)
	return p
}

func fillPayload(p []byte, seq uint64) {
	for i := range p {
		p[i] = byte(seq*31 + uint64(i)*7 + 1)
	}
	if len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, seq)
	}
}

// drain takes every committed record out of r, checking r's own view of the
// span with ForEachRecord.
func drain(t *testing.T, r *Records) [][]byte {
	t.Helper()
	var got [][]byte
	for {
		span, err := r.TryPeek()
		if err == ErrEmpty {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := ForEachRecord(span, func(p []byte) error {
			got = append(got, bytes.Clone(p))
			return nil
		}); err != nil {
			t.Fatalf("a span from Peek does not parse: %v", err)
		}
		if err := r.Release(len(span)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewRecordsRejectsBadInput(t *testing.T) {
	for _, c := range []int{0, 32, 100, 3 << 10, MaxRecordsBytes * 2} {
		if _, err := NewRecords(c, Park); err == nil || !strings.Contains(err.Error(), "power of two") {
			t.Errorf("NewRecords(%d) = %v, want an error asking for a power of two", c, err)
		}
	}
}

// TestRecordsLayoutBytes pins the layout of doc.go byte by byte, including
// a wrap marker: other code (transports, the RDMA ring) depends on it.
func TestRecordsLayoutBytes(t *testing.T) {
	r := newRecords(t, 64)
	p, err := r.Reserve(5)
	if err != nil {
		t.Fatal(err)
	}
	copy(p, "hello")
	q, err := r.Reserve(0)
	if err != nil || len(q) != 0 {
		t.Fatalf("Reserve(0) = %d bytes, %v", len(q), err)
	}
	r.Commit()
	span, err := r.TryPeek()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		5, 0, 0, 0, 'h', 'e', 'l', 'l', 'o', 0, 0, 0, 0, 0, 0, 0, // L=5, 7 zero bytes
		0, 0, 0, 0, 0, 0, 0, 0, // L=0, 4 zero bytes
	}
	if !bytes.Equal(span, want) {
		t.Fatalf("span bytes\n got %v\nwant %v", span, want)
	}
	if err := r.Release(len(span)); err != nil {
		t.Fatal(err)
	}

	// With the cursors at offset 48 only 16 bytes are left before the
	// end; a 24-byte record goes to offset 0 behind a wrap marker.
	r.placeAt(48)
	for i := range r.buf {
		r.buf[i] = 0xAA // stale bytes, to see what gets written
	}
	p, err = r.Reserve(20)
	if err != nil {
		t.Fatal(err)
	}
	copy(p, "0123456789abcdefghij")
	r.Commit()
	if got := r.buf[48:52]; !bytes.Equal(got, []byte{0xFF, 0xFF, 0xFF, 0xFF}) {
		t.Fatalf("wrap marker at offset 48 = % x, want ff ff ff ff", got)
	}
	wantRec := append([]byte{20, 0, 0, 0}, "0123456789abcdefghij"...)
	if got := r.buf[:24]; !bytes.Equal(got, wantRec) {
		t.Fatalf("record after the wrap\n got % x\nwant % x", got, wantRec)
	}
	if r.Len() != 16+24 {
		t.Fatalf("Len = %d, want 40 (16 bytes of marker padding plus a 24-byte record)", r.Len())
	}
	span, err = r.TryPeek()
	if err != nil || !bytes.Equal(span, wantRec) {
		t.Fatalf("span after the wrap = % x, %v; want the record alone, without the marker", span, err)
	}
}

// TestRecordsWrapAtEveryOffset starts an empty ring at every 8-byte offset,
// with the byte counters both near zero and just short of 2^64, and pushes
// records of every payload size from 0 to MaxPayload through it, so that
// every size meets the end of the buffer at every offset.
func TestRecordsWrapAtEveryOffset(t *testing.T) {
	const ringBytes = 128
	r := newRecords(t, ringBytes)
	maxPayload := r.MaxPayload()
	for _, base := range []uint64{0, ringBytes * 5, ^uint64(0) - 3*ringBytes + 1} {
		for off := uint64(0); off < ringBytes; off += RecordAlignBytes {
			for size := 0; size <= maxPayload; size++ {
				r.placeAt(base + off)
				sizes := []int{size, (size*7 + 3) % (maxPayload + 1), maxPayload - size}
				var want [][]byte
				for i, n := range sizes {
					p, err := r.TryReserve(n)
					if err == ErrFull {
						// The first record always fits an empty ring; a
						// later one may not: commit, drain, retry.
						if i == 0 {
							t.Fatalf("base %d offset %d: a %d-byte record does not fit an empty ring", base, off, n)
						}
						r.Commit()
						got := drain(t, r)
						checkRecords(t, got, want, fmt.Sprintf("base %d offset %d sizes %v", base, off, sizes))
						want = want[:0]
						if p, err = r.TryReserve(n); err != nil {
							t.Fatalf("base %d offset %d: Reserve(%d) on a drained ring: %v", base, off, n, err)
						}
					} else if err != nil {
						t.Fatal(err)
					}
					fillPayload(p, uint64(i))
					want = append(want, payloadFor(uint64(i), n))
				}
				r.Commit()
				got := drain(t, r)
				checkRecords(t, got, want, fmt.Sprintf("base %d offset %d sizes %v", base, off, sizes))
				if r.Len() != 0 || r.wrapAt[0].Load() != 0 || r.wrapAt[1].Load() != 0 {
					t.Fatalf("base %d offset %d sizes %v: drained ring has Len %d, wrapAt %d %d",
						base, off, sizes, r.Len(), r.wrapAt[0].Load(), r.wrapAt[1].Load())
				}
			}
		}
	}
}

func checkRecords(t *testing.T, got, want [][]byte, where string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d records, want %d", where, len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: record %d\n got % x\nwant % x", where, i, got[i], want[i])
		}
	}
}

func TestRecordsFullAndEmptyEdges(t *testing.T) {
	r := newRecords(t, 256)
	if _, err := r.TryPeek(); err != ErrEmpty {
		t.Fatalf("TryPeek on a new ring: %v, want ErrEmpty", err)
	}
	// 4-byte payloads take 8 bytes each: exactly 32 fill the ring.
	for i := range 32 {
		if _, err := r.TryReserve(4); err != nil {
			t.Fatalf("record %d of 32: %v", i, err)
		}
	}
	if _, err := r.TryReserve(0); err != ErrFull {
		t.Fatalf("TryReserve on a ring of reserved records: %v, want ErrFull", err)
	}
	if _, err := r.TryPeek(); err != ErrEmpty {
		t.Fatalf("uncommitted records are visible: %v", err)
	}
	r.Commit()
	span, err := r.TryPeek()
	if err != nil || len(span) != 256 {
		t.Fatalf("TryPeek of a full ring = %d bytes, %v; want all 256", len(span), err)
	}
	if r.Len() != 256 {
		t.Fatalf("Len = %d, want 256", r.Len())
	}
	// Release the first 3 records: 24 bytes free, all at the start of
	// the buffer while the producer stands at the end. A 12-byte payload
	// (16 bytes) fits; then 8 bytes are left, too few for another.
	if err := r.Release(24); err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryReserve(12); err != nil {
		t.Fatalf("a 16-byte record in 24 free bytes: %v", err)
	}
	if _, err := r.TryReserve(5); err != ErrFull {
		t.Fatalf("a 16-byte record in 8 free bytes: %v, want ErrFull", err)
	}
	r.Commit()
	if err := r.Release(len(span) - 24); err != nil {
		t.Fatal(err)
	}
	got := drain(t, r)
	if len(got) != 1 || len(got[0]) != 12 {
		t.Fatalf("after the wrap got %d records, want one of 12 bytes", len(got))
	}
	// Free space that is split by the buffer's end does not hold a record
	// larger than either piece: 96 bytes from offset 160 to the end, plus
	// 64 free at the start after a partial release.
	r.placeAt(0)
	for range 20 {
		r.TryReserve(4)
	}
	r.Commit()
	span, _ = r.TryPeek()
	if err := r.Release(64); err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryReserve(100); err != ErrFull {
		t.Fatalf("a 104-byte record with 96 bytes left before the end and 64 at the start: %v, want ErrFull", err)
	}
	if _, err := r.TryReserve(60); err != nil {
		t.Fatalf("a 64-byte record with 96 bytes before the end: %v", err)
	}
}

func TestRecordsTooLargeIsAClearError(t *testing.T) {
	r := newRecords(t, 1024)
	if r.MaxPayload() != 508 {
		t.Fatalf("MaxPayload of a 1 KiB ring = %d, want 508 (512 bytes less the header)", r.MaxPayload())
	}
	_, err := r.Reserve(509)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Reserve(509) = %v, want ErrTooLarge", err)
	}
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.PayloadBytes != 509 || tl.MaxPayloadBytes != 508 || tl.RingBytes != 1024 {
		t.Fatalf("error %#v does not carry the sizes", err)
	}
	for _, s := range []string{"509", "508", "1024", "2048"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("message %q does not mention %s", err, s)
		}
	}
	if _, err := r.Reserve(1 << 40); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "even the largest ring") {
		t.Fatalf("Reserve(1 TiB) = %v, want ErrTooLarge saying no ring takes it", err)
	}
	if _, err := r.Reserve(-1); err == nil || errors.Is(err, ErrTooLarge) {
		t.Fatalf("Reserve(-1) = %v, want a negative-length error", err)
	}
}

func TestRecordsTrim(t *testing.T) {
	r := newRecords(t, 256)
	p, _ := r.Reserve(100)
	copy(p, "abcdefghijk")
	if err := r.Trim(5); err != nil {
		t.Fatal(err)
	}
	q, _ := r.Reserve(3)
	copy(q, "xyz")
	if err := r.Trim(4); err == nil {
		t.Error("Trim grew a record")
	}
	r.Commit()
	if err := r.Trim(1); err == nil {
		t.Error("Trim after Commit succeeded")
	}
	span, _ := r.TryPeek()
	if len(span) != 16+8 {
		t.Fatalf("span of a record trimmed to 5 bytes and one of 3 = %d bytes, want 24", len(span))
	}
	got := drain(t, r)
	checkRecords(t, got, [][]byte{[]byte("abcde"), []byte("xyz")}, "trim")
}

func TestRecordsMisuseGetsClearErrors(t *testing.T) {
	r := newRecords(t, 256)
	if err := r.Release(8); err == nil {
		t.Error("Release without Peek succeeded")
	}
	r.Reserve(4)
	r.Reserve(4)
	r.Commit()
	span, _ := r.TryPeek()
	for _, n := range []int{-8, 3, len(span) + 8} {
		if err := r.Release(n); err == nil {
			t.Errorf("Release(%d) of a %d-byte span succeeded", n, len(span))
		}
	}
	if err := r.Release(8); err != nil {
		t.Fatal(err)
	}
	if err := r.Release(8); err != nil {
		t.Fatalf("releasing the rest of a span in a second call: %v", err)
	}
	if err := r.Trim(0); err == nil {
		t.Error("Trim with nothing reserved succeeded")
	}
}

func TestRecordsCloseDrainsThenFails(t *testing.T) {
	r := newRecords(t, 256)
	p, _ := r.Reserve(3)
	copy(p, "one")
	r.Commit()
	r.Reserve(3) // never committed: dropped by Close
	r.Close()
	if _, err := r.Reserve(1); err != ErrClosed {
		t.Fatalf("Reserve after Close: %v, want ErrClosed", err)
	}
	span, err := r.Peek()
	if err != nil || len(span) != 8 {
		t.Fatalf("Peek after Close = %d bytes, %v; want the committed record", len(span), err)
	}
	r.Release(len(span))
	if _, err := r.Peek(); err != ErrClosed {
		t.Fatalf("Peek on a closed, drained ring: %v, want ErrClosed", err)
	}
}

func TestRecordsCloseWakesBlockedSide(t *testing.T) {
	for _, s := range strategies {
		calls := map[string]func(r *Records) error{
			"Peek": func(r *Records) error { _, err := r.Peek(); return err },
			"Reserve": func(r *Records) error {
				for {
					if _, err := r.Reserve(20); err != nil {
						return err
					}
				}
			},
		}
		for name, call := range calls {
			t.Run(s.String()+"/"+name, func(t *testing.T) {
				r, _ := NewRecords(64, s)
				errc := make(chan error, 1)
				go func() { errc <- call(r) }()
				time.Sleep(20 * time.Millisecond)
				r.Close()
				finishes(t, name+" after Close", func() {
					if err := <-errc; err != ErrClosed {
						t.Errorf("%s woke with %v, want ErrClosed", name, err)
					}
				})
			})
		}
	}
}

// TestRecordsBlockingReserveCommitsPending fills the ring with reserved but
// uncommitted records; the next blocking Reserve must commit them before it
// waits, or the consumer could never free room and both would hang.
func TestRecordsBlockingReserveCommitsPending(t *testing.T) {
	r := newRecords(t, 64)
	for range 8 {
		if _, err := r.TryReserve(4); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { _, err := r.Reserve(4); done <- err }()
	finishes(t, "consumer", func() {
		span, err := r.Peek()
		if err != nil {
			t.Error(err)
			return
		}
		r.Release(len(span))
	})
	finishes(t, "blocked Reserve", func() {
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// TestRecordsStress moves a million records of random sizes between two
// goroutines through a small ring, the producer committing after random
// numbers of records and sometimes trimming, the consumer releasing whole
// spans or a prefix of records, and checks the order, length and content of
// every record.
func TestRecordsStress(t *testing.T) {
	for _, s := range []WaitStrategy{Park, SpinThenYield} {
		// The full count under Park, the agent's strategy; a quarter
		// under SpinThenYield, which differs only in how it waits.
		n := uint64(stressItems(1_000_000))
		if s != Park {
			n /= 4
		}
		t.Run(s.String(), func(t *testing.T) {
			r, err := NewRecords(4096, s)
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { errc <- produceRecords(r, n, 5) }()
			lengths := rand.New(rand.NewPCG(5, 0)) // replays the producer's sizes
			choices := rand.New(rand.NewPCG(6, 7))
			var next uint64
			for next < n {
				span, err := r.Peek()
				if err != nil {
					t.Fatal(err)
				}
				released, stopAt := 0, len(span)
				if choices.IntN(3) == 0 {
					stopAt = choices.IntN(len(span)) + 1 // release a prefix only
				}
				err = ForEachRecord(span, func(p []byte) error {
					if released >= stopAt {
						return errStop
					}
					if err := checkStressRecord(p, next, lengths); err != nil {
						return err
					}
					next++
					released += RecordBytes(len(p))
					return nil
				})
				if err != nil && err != errStop {
					t.Fatal(err)
				}
				if err := r.Release(released); err != nil {
					t.Fatal(err)
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if _, err := r.TryPeek(); err != ErrEmpty {
				t.Fatalf("ring not empty after the stream: %v", err)
			}
		})
	}
}

var errStop = errors.New("stop")

// stressLength draws a record's payload length and whether it is trimmed:
// mostly small, sometimes up to the ring's largest.
func stressLength(rng *rand.Rand, maxPayload int) (reserve, keep int) {
	n := rng.IntN(64)
	if rng.IntN(16) == 0 {
		n = rng.IntN(maxPayload + 1)
	}
	keep = n
	if rng.IntN(8) == 0 {
		keep = rng.IntN(n + 1)
	}
	return n, keep
}

func produceRecords(r *Records, n uint64, seed uint64) error {
	lengths := rand.New(rand.NewPCG(seed, 0))
	batches := rand.New(rand.NewPCG(seed, 1))
	for seq := uint64(0); seq < n; seq++ {
		reserve, keep := stressLength(lengths, r.MaxPayload())
		p, err := r.Reserve(reserve)
		if err != nil {
			return err
		}
		fillPayload(p[:keep], seq)
		if keep != reserve {
			if err := r.Trim(keep); err != nil {
				return err
			}
		}
		if batches.IntN(8) == 0 {
			r.Commit()
		}
	}
	r.Commit()
	return nil
}

func checkStressRecord(p []byte, seq uint64, lengths *rand.Rand) error {
	_, keep := stressLength(lengths, 4096/2-RecordHeaderBytes)
	if len(p) != keep {
		return fmt.Errorf("record %d has %d bytes, want %d", seq, len(p), keep)
	}
	var want [2048]byte
	fillPayload(want[:keep], seq)
	if !bytes.Equal(p, want[:keep]) {
		return fmt.Errorf("record %d content\n got % x\nwant % x", seq, p, want[:keep])
	}
	return nil
}

func TestRecordsSteadyStateAllocatesNothing(t *testing.T) {
	r := newRecords(t, 1024)
	var sum int
	allocs := testing.AllocsPerRun(1000, func() {
		for i := range 5 {
			p, err := r.Reserve(40 + i)
			if err != nil {
				t.Fatal(err)
			}
			p[0] = byte(i)
		}
		r.Commit()
		for {
			// Two spans when the records wrap around the end.
			span, err := r.TryPeek()
			if err == ErrEmpty {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := ForEachRecord(span, func(p []byte) error { sum += int(p[0]); return nil }); err != nil {
				t.Fatal(err)
			}
			if err := r.Release(len(span)); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("a reserve/commit/peek/walk/release cycle allocates %v times, want 0", allocs)
	}
	if sum != 1001*10 {
		t.Fatalf("the walk saw payload sum %d, want %d", sum, 1001*10)
	}
}
