package ring

import (
	"fmt"
	"sync/atomic"
)

// falseSharingBytes is the distance kept between data written by different
// sides. It is two 64-byte cache lines, not one: Intel's L2 spatial
// prefetcher fetches 64-byte lines in 128-byte-aligned pairs, so two cursors
// in adjacent lines still ping-pong between cores (the same reason folly's
// hardware_destructive_interference_size and Java's @Contended use 128).
// Go aligns a heap object only to 8 bytes, so each group is surrounded by a
// full falseSharingBytes pad rather than aligned to a boundary.
const falseSharingBytes = 128

type pad [falseSharingBytes]byte

// Bounds on the item count of an SPSC ring.
const (
	MinSPSCItems = 2
	MaxSPSCItems = 1 << 30
)

// SPSC is a bounded ring of items of type T for exactly one producer
// goroutine and one consumer goroutine at a time (they may hand their role
// to another goroutine if they synchronise that hand-over themselves).
//
// Producer calls: TryPush, Push, TryReserve, Reserve, Commit.
// Consumer calls: TryPop, Pop, TryPeek, Peek, Release.
// Either side: Close, Cap, Len.
//
// Released slots keep their last value until the producer overwrites them, so
// a ring of pointers can keep up to Cap objects alive after they were read.
type SPSC[T any] struct {
	_ pad

	// Read-only after NewSPSC, but for closed (written once, by Close).
	buf      []T
	mask     uint64
	strategy WaitStrategy
	closed   atomic.Bool

	_        pad
	notEmpty waiter // the consumer sleeps here; the producer wakes it
	_        pad
	notFull  waiter // the producer sleeps here; the consumer wakes it
	_        pad

	// Producer side: written only by the producer.
	tail     atomic.Uint64 // items ever committed; loaded by the consumer
	prodTail uint64        // the producer's own copy of tail
	headSeen uint64        // the consumer's head as last loaded
	reserved uint64        // slots handed out by the last Reserve

	_ pad

	// Consumer side: written only by the consumer.
	consHead uint64        // the consumer's own copy of head
	tailSeen uint64        // the producer's tail as last loaded
	peeked   uint64        // items handed out by the last Peek
	head     atomic.Uint64 // items ever released; loaded by the producer
	_        pad
}

// NewSPSC returns a ring of capacity items (a power of two between
// MinSPSCItems and MaxSPSCItems) whose blocking calls wait with strategy.
func NewSPSC[T any](capacity int, strategy WaitStrategy) (*SPSC[T], error) {
	if !isPowerOfTwo(capacity) || capacity < MinSPSCItems || capacity > MaxSPSCItems {
		return nil, capacityError("SPSC item", capacity, MinSPSCItems, MaxSPSCItems)
	}
	if err := strategy.valid(); err != nil {
		return nil, err
	}
	return &SPSC[T]{
		buf:      make([]T, capacity),
		mask:     uint64(capacity - 1),
		strategy: strategy,
	}, nil
}

// Cap returns the number of items the ring holds when full.
func (r *SPSC[T]) Cap() int { return len(r.buf) }

// Len returns how many items are committed and not yet released. It is a
// snapshot that may be stale by the time it returns.
func (r *SPSC[T]) Len() int {
	h := r.head.Load()
	return int(r.tail.Load() - h)
}

// Close marks the ring closed and wakes a blocked side. The producer's calls
// fail with ErrClosed from then on; the consumer still receives every item
// committed before Close, then ErrClosed. Close is safe to call from either
// side, and more than once.
func (r *SPSC[T]) Close() {
	r.closed.Store(true)
	r.notEmpty.wakeForClose()
	r.notFull.wakeForClose()
}

// freeSlots returns how many slots the producer may fill, reloading the
// consumer's head only when the cached value says the ring is full.
func (r *SPSC[T]) freeSlots() uint64 {
	size := uint64(len(r.buf))
	if free := size - (r.prodTail - r.headSeen); free > 0 {
		return free
	}
	r.headSeen = r.head.Load()
	return size - (r.prodTail - r.headSeen)
}

// TryPush appends v, or returns ErrFull or ErrClosed without waiting.
func (r *SPSC[T]) TryPush(v T) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if r.freeSlots() == 0 {
		return ErrFull
	}
	t := r.prodTail
	r.buf[t&r.mask] = v
	r.prodTail = t + 1
	r.tail.Store(t + 1)
	r.notEmpty.wake()
	return nil
}

// Push appends v, waiting for room with the ring's strategy. It returns
// ErrClosed if the ring is or becomes closed.
func (r *SPSC[T]) Push(v T) error {
	for {
		if err := r.TryPush(v); err != ErrFull {
			return err
		}
		r.waitForRoom()
	}
}

func (r *SPSC[T]) waitForRoom() {
	full := r.prodTail - uint64(len(r.buf))
	chunk := uint64(len(r.buf) / earlyRoomDivisor)
	r.strategy.await(&r.notFull, func(early bool) bool {
		freed := r.head.Load() - full
		return freed > 0 && (!early || freed >= chunk) || r.closed.Load()
	})
}

// TryReserve hands out up to n free slots, contiguous in memory, for the
// producer to fill in place; Commit then publishes some or all of them. It
// returns fewer than n slots when the ring has less room or when the free
// space wraps around the end of the buffer (call again after Commit for the
// rest). With no room it returns ErrFull; once closed, ErrClosed. Each call
// replaces the previous reservation: uncommitted slots are handed out again.
func (r *SPSC[T]) TryReserve(n int) ([]T, error) {
	if n < 1 {
		return nil, fmt.Errorf("ring: Reserve(%d): ask for at least one slot", n)
	}
	if r.closed.Load() {
		return nil, ErrClosed
	}
	free := r.freeSlots()
	if free == 0 {
		r.reserved = 0
		return nil, ErrFull
	}
	off := r.prodTail & r.mask
	m := min(uint64(n), free, uint64(len(r.buf))-off)
	r.reserved = m
	return r.buf[off : off+m : off+m], nil
}

// Reserve is TryReserve that waits, with the ring's strategy, until at least
// one slot is free.
func (r *SPSC[T]) Reserve(n int) ([]T, error) {
	for {
		s, err := r.TryReserve(n)
		if err != ErrFull {
			return s, err
		}
		r.waitForRoom()
	}
}

// Commit publishes the first k slots of the last reservation to the
// consumer, in one atomic store.
func (r *SPSC[T]) Commit(k int) error {
	if k < 0 || uint64(k) > r.reserved {
		return fmt.Errorf("ring: Commit(%d): only %d slots are reserved; commit at most what the last Reserve returned", k, r.reserved)
	}
	if k == 0 {
		return nil
	}
	r.prodTail += uint64(k)
	r.reserved = 0
	r.tail.Store(r.prodTail)
	r.notEmpty.wake()
	return nil
}

// available returns how many committed items the consumer has not read,
// reloading the producer's tail only when the cached value is used up.
func (r *SPSC[T]) available() uint64 {
	if n := r.tailSeen - r.consHead; n > 0 {
		return n
	}
	r.tailSeen = r.tail.Load()
	if n := r.tailSeen - r.consHead; n > 0 {
		return n
	}
	if r.closed.Load() {
		// Items committed before Close are visible once closed is: load
		// tail again after closed.
		r.tailSeen = r.tail.Load()
	}
	return r.tailSeen - r.consHead
}

// emptyError tells ErrEmpty from ErrClosed after available returned 0.
func (r *SPSC[T]) emptyError() error {
	if r.closed.Load() {
		return ErrClosed
	}
	return ErrEmpty
}

// TryPop removes and returns the oldest item, or returns ErrEmpty, or
// ErrClosed once the ring is closed and drained, without waiting.
func (r *SPSC[T]) TryPop() (T, error) {
	if r.available() == 0 {
		var zero T
		return zero, r.emptyError()
	}
	h := r.consHead
	v := r.buf[h&r.mask]
	r.consHead = h + 1
	r.head.Store(h + 1)
	r.notFull.wake()
	return v, nil
}

// Pop is TryPop that waits, with the ring's strategy, for an item.
func (r *SPSC[T]) Pop() (T, error) {
	for {
		v, err := r.TryPop()
		if err != ErrEmpty {
			return v, err
		}
		r.waitForItems()
	}
}

func (r *SPSC[T]) waitForItems() {
	empty := r.consHead
	r.strategy.await(&r.notEmpty, func(bool) bool {
		return r.tail.Load() != empty || r.closed.Load()
	})
}

// TryPeek returns up to max of the oldest items, contiguous in memory, for
// the consumer to read in place; Release then frees some or all of them. It
// returns fewer than max when fewer are committed or when they wrap around
// the end of the buffer. With nothing to read it returns ErrEmpty, or
// ErrClosed once closed and drained. The slice is valid until Release.
func (r *SPSC[T]) TryPeek(max int) ([]T, error) {
	if max < 1 {
		return nil, fmt.Errorf("ring: Peek(%d): ask for at least one item", max)
	}
	n := r.available()
	if n == 0 {
		r.peeked = 0
		return nil, r.emptyError()
	}
	off := r.consHead & r.mask
	m := min(uint64(max), n, uint64(len(r.buf))-off)
	r.peeked = m
	return r.buf[off : off+m : off+m], nil
}

// Peek is TryPeek that waits, with the ring's strategy, for an item.
func (r *SPSC[T]) Peek(max int) ([]T, error) {
	for {
		s, err := r.TryPeek(max)
		if err != ErrEmpty {
			return s, err
		}
		r.waitForItems()
	}
}

// Release frees the first k items of the last Peek, in one atomic store.
func (r *SPSC[T]) Release(k int) error {
	if k < 0 || uint64(k) > r.peeked {
		return fmt.Errorf("ring: Release(%d): only %d items were peeked; release at most what the last Peek returned", k, r.peeked)
	}
	if k == 0 {
		return nil
	}
	r.consHead += uint64(k)
	r.peeked -= uint64(k)
	r.head.Store(r.consHead)
	r.notFull.wake()
	return nil
}
