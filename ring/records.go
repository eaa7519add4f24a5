package ring

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"
)

// The record layout; doc.go describes it byte by byte.
const (
	// RecordHeaderBytes is the little-endian uint32 payload length in
	// front of every record.
	RecordHeaderBytes = 4
	// RecordAlignBytes is the alignment of every record header: a record
	// takes its header plus payload rounded up to a multiple of this.
	RecordAlignBytes = 8
	// WrapMarker in a header's length field means: the rest of the buffer
	// up to its end is padding, and the next record is at offset 0.
	WrapMarker = 0xFFFFFFFF
)

// Bounds on the byte capacity of a Records ring.
const (
	MinRecordsBytes = 64
	MaxRecordsBytes = 1 << 30
)

// RecordBytes returns how many bytes of ring a record of payloadBytes takes:
// header plus payload, rounded up to RecordAlignBytes.
func RecordBytes(payloadBytes int) int {
	return (RecordHeaderBytes + payloadBytes + RecordAlignBytes - 1) &^ (RecordAlignBytes - 1)
}

// minRingBytesFor is the smallest ring that takes a record of payloadBytes.
func minRingBytesFor(payloadBytes int) int {
	return nextPowerOfTwo(2*RecordBytes(payloadBytes), MinRecordsBytes, 1<<62)
}

// Records is a single-producer single-consumer byte ring of variable-length
// records in the layout described in the package documentation.
//
// Producer calls: TryReserve, Reserve, Trim, Commit.
// Consumer calls: TryPeek, Peek, Release.
// Either side: Close, Cap, MaxPayload, Len.
//
// The producer writes each record in place in the slice Reserve returns, and
// publishes every record reserved so far with one Commit. The consumer gets
// a span of many whole records, contiguous in memory, hands it to a
// transport as one write, and releases it. Neither side copies or allocates.
type Records struct {
	_ pad

	// Read-only after NewRecords, but for closed (written once, by Close).
	buf       []byte
	mask      uint64
	lapShift  uint // log2 of the capacity: cursor >> lapShift is the lap
	maxRecord uint64
	strategy  WaitStrategy
	closed    atomic.Bool

	_        pad
	notEmpty waiter // the consumer sleeps here; the producer wakes it
	_        pad
	notFull  waiter // the producer sleeps here; the consumer wakes it
	_        pad

	// wrapAt[lap&1] is 1 + the cursor of the wrap marker that ends lap
	// lap, or 0 if none is there. The producer sets it when it writes the
	// marker, before it commits the marker; the consumer reads it only
	// after it saw a tail beyond the lap's end, and clears it when it
	// steps over the marker, before it releases the lap. Markers of at
	// most two consecutive laps are ever in the ring at once, so two slots
	// indexed by the lap's parity suffice. Written once per lap.
	wrapAt [2]atomic.Uint64

	_ pad

	// Producer side: written only by the producer.
	tail       atomic.Uint64 // bytes ever committed; loaded by the consumer
	prodTail   uint64        // the producer's own copy of tail
	reserveEnd uint64        // end of the records reserved so far (>= prodTail)
	headSeen   uint64        // the consumer's head as last loaded
	lastOff    uint64        // buffer offset of the last reserved record
	lastLen    uint64        // its payload length
	canTrim    bool          // the last reserved record is not yet committed

	_ pad

	// Consumer side: written only by the consumer.
	consHead     uint64        // the consumer's own copy of head
	tailSeen     uint64        // the producer's tail as last loaded
	peekLen      uint64        // bytes of the last span not yet released
	peekEnd      uint64        // cursor where the last span ends
	peekAtMarker bool          // ... and a wrap marker sits there
	head         atomic.Uint64 // bytes ever released; loaded by the producer

	_ pad
}

// NewRecords returns a record ring of capacityBytes (a power of two between
// MinRecordsBytes and MaxRecordsBytes) whose blocking calls wait with
// strategy. A record may take at most half the ring (MaxPayload).
func NewRecords(capacityBytes int, strategy WaitStrategy) (*Records, error) {
	if !isPowerOfTwo(capacityBytes) || capacityBytes < MinRecordsBytes || capacityBytes > MaxRecordsBytes {
		return nil, capacityError("Records byte", capacityBytes, MinRecordsBytes, MaxRecordsBytes)
	}
	if err := strategy.valid(); err != nil {
		return nil, err
	}
	return &Records{
		buf:       make([]byte, capacityBytes),
		mask:      uint64(capacityBytes - 1),
		lapShift:  uint(bits.TrailingZeros(uint(capacityBytes))),
		maxRecord: uint64(capacityBytes / 2),
		strategy:  strategy,
	}, nil
}

// Cap returns the ring's size in bytes.
func (r *Records) Cap() int { return len(r.buf) }

// MaxPayload returns the largest payload one record may carry: a record
// (header, payload, padding) may take half the ring, because then it fits
// wherever the cursors stand once the ring has drained; a larger one could
// need more than the free space even of an empty ring, after the padding
// that keeps it from being split at the wrap.
func (r *Records) MaxPayload() int { return int(r.maxRecord) - RecordHeaderBytes }

// Len returns how many bytes are committed and not yet released, wrap
// padding included. It is a snapshot that may be stale by the time it
// returns.
func (r *Records) Len() int {
	h := r.head.Load()
	return int(r.tail.Load() - h)
}

// Close marks the ring closed and wakes a blocked side. The producer's calls
// fail with ErrClosed from then on and its uncommitted reservations are
// dropped; the consumer still receives every record committed before Close,
// then ErrClosed. Close is safe to call from either side, and more than once.
func (r *Records) Close() {
	r.closed.Store(true)
	r.notEmpty.wakeForClose()
	r.notFull.wakeForClose()
}

// TryReserve reserves room for one record of n payload bytes after those
// reserved so far and returns its payload, for the producer to write in
// place; Commit publishes it. The slice's capacity is n, so appending to it
// cannot spill into the next record. It returns ErrFull when there is no room
// (records reserved earlier stay reserved: Commit them, or wait), ErrClosed
// once closed, and a *TooLargeError when n exceeds MaxPayload.
func (r *Records) TryReserve(n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("ring: Reserve(%d): a payload length cannot be negative", n)
	}
	size := uint64(RecordBytes(n))
	if n > r.MaxPayload() {
		return nil, &TooLargeError{PayloadBytes: n, MaxPayloadBytes: r.MaxPayload(), RingBytes: len(r.buf)}
	}
	if r.closed.Load() {
		return nil, ErrClosed
	}
	capacity := uint64(len(r.buf))
	pos := r.reserveEnd
	off := pos & r.mask
	need := size
	wrap := size > capacity-off
	if wrap {
		need += capacity - off
	}
	if capacity-(pos-r.headSeen) < need {
		r.headSeen = r.head.Load()
		if capacity-(pos-r.headSeen) < need {
			return nil, ErrFull
		}
	}
	if wrap {
		binary.LittleEndian.PutUint32(r.buf[off:], WrapMarker)
		r.wrapAt[(pos>>r.lapShift)&1].Store(pos + 1)
		pos += capacity - off
		off = 0
	}
	// Zero the record's last 8-byte word first: that covers its padding,
	// and the header and the caller's payload overwrite the rest.
	binary.LittleEndian.PutUint64(r.buf[off+size-8:], 0)
	binary.LittleEndian.PutUint32(r.buf[off:], uint32(n))
	r.reserveEnd = pos + size
	r.lastOff, r.lastLen, r.canTrim = off, uint64(n), true
	start := off + RecordHeaderBytes
	return r.buf[start : start+uint64(n) : start+uint64(n)], nil
}

// Reserve is TryReserve that waits, with the ring's strategy, for room. If
// the ring is full it first commits the records reserved so far, since the
// consumer cannot free room while it waits for them.
func (r *Records) Reserve(n int) ([]byte, error) {
	for {
		p, err := r.TryReserve(n)
		if err != ErrFull {
			return p, err
		}
		r.Commit()
		seen := r.headSeen
		chunk := uint64(len(r.buf) / earlyRoomDivisor)
		r.strategy.await(&r.notFull, func(early bool) bool {
			freed := r.head.Load() - seen
			return freed > 0 && (!early || freed >= chunk) || r.closed.Load()
		})
	}
}

// Trim shortens the record returned by the last Reserve, not yet committed,
// to n payload bytes: for a producer that reserves the most it might write
// and learns the real length as it writes.
func (r *Records) Trim(n int) error {
	if !r.canTrim {
		return fmt.Errorf("ring: Trim(%d): no uncommitted record to trim; call it after Reserve and before Commit", n)
	}
	if n < 0 || uint64(n) > r.lastLen {
		return fmt.Errorf("ring: Trim(%d): the last record has %d payload bytes; trim it to between 0 and that", n, r.lastLen)
	}
	oldSize, newSize := uint64(RecordBytes(int(r.lastLen))), uint64(RecordBytes(n))
	binary.LittleEndian.PutUint32(r.buf[r.lastOff:], uint32(n))
	clear(r.buf[r.lastOff+RecordHeaderBytes+uint64(n) : r.lastOff+newSize])
	r.reserveEnd -= oldSize - newSize
	r.lastLen = uint64(n)
	return nil
}

// Commit publishes every record reserved so far to the consumer, in one
// atomic store. It does nothing if none is pending.
func (r *Records) Commit() {
	if r.reserveEnd == r.prodTail {
		return
	}
	r.prodTail = r.reserveEnd
	r.canTrim = false
	r.tail.Store(r.prodTail)
	r.notEmpty.wake()
}

// TryPeek returns the committed records not yet released, as one contiguous
// span of whole records that ends before the buffer's end or a wrap marker
// (so it never contains a marker). Walk it with ForEachRecord or write it out
// whole; it stays valid until Release. With nothing to read it returns
// ErrEmpty, or ErrClosed once closed and drained.
func (r *Records) TryPeek() ([]byte, error) {
	for {
		avail := r.tailSeen - r.consHead
		if avail == 0 {
			r.tailSeen = r.tail.Load()
			avail = r.tailSeen - r.consHead
		}
		if avail == 0 && r.closed.Load() {
			// Records committed before Close are visible once closed is.
			r.tailSeen = r.tail.Load()
			avail = r.tailSeen - r.consHead
		}
		if avail == 0 {
			r.peekLen = 0
			if r.closed.Load() {
				return nil, ErrClosed
			}
			return nil, ErrEmpty
		}
		capacity := uint64(len(r.buf))
		off := r.consHead & r.mask
		end, atMarker := r.consHead+avail, false
		if off+avail > capacity {
			// The committed bytes run past the end of the buffer: the
			// span stops at the lap's wrap marker, or at the end.
			slot := &r.wrapAt[(r.consHead>>r.lapShift)&1]
			if w := slot.Load(); w != 0 {
				end, atMarker = w-1, true
			} else {
				end = r.consHead - off + capacity
			}
			if end == r.consHead {
				// We stand on the marker (the records before it were
				// released before it was committed): step over it.
				r.stepOverMarker(slot)
				continue
			}
		}
		n := end - r.consHead
		r.peekLen, r.peekEnd, r.peekAtMarker = n, end, atMarker
		return r.buf[off : off+n : off+n], nil
	}
}

// stepOverMarker moves head from a wrap marker to the start of the next
// lap, clearing the lap's wrapAt slot before the release makes the slot
// reusable by the producer.
func (r *Records) stepOverMarker(slot *atomic.Uint64) {
	slot.Store(0)
	r.consHead = (r.consHead | r.mask) + 1
	r.head.Store(r.consHead)
	r.notFull.wake()
}

// Peek is TryPeek that waits, with the ring's strategy, for a record.
func (r *Records) Peek() ([]byte, error) {
	for {
		s, err := r.TryPeek()
		if err != ErrEmpty {
			return s, err
		}
		empty := r.consHead
		r.strategy.await(&r.notEmpty, func(bool) bool {
			return r.tail.Load() != empty || r.closed.Load()
		})
	}
}

// Release frees the first n bytes of the last span, in one atomic store. n
// must end on a record boundary: the span's length, or the sum of the sizes
// (RecordBytes) of its first records.
func (r *Records) Release(n int) error {
	if n < 0 || uint64(n) > r.peekLen || n%RecordAlignBytes != 0 {
		return fmt.Errorf("ring: Release(%d): %d bytes of the last span are unreleased; release a multiple of %d bytes up to that, ending on a record boundary", n, r.peekLen, RecordAlignBytes)
	}
	if n == 0 {
		return nil
	}
	r.peekLen -= uint64(n)
	r.consHead += uint64(n)
	if r.consHead == r.peekEnd && r.peekAtMarker {
		r.peekAtMarker = false
		r.stepOverMarker(&r.wrapAt[(r.consHead>>r.lapShift)&1])
		return nil
	}
	r.head.Store(r.consHead)
	r.notFull.wake()
	return nil
}
