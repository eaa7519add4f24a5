package ring

import (
	"fmt"
	"runtime"
	"sync/atomic"
)

// WaitStrategy says what a blocking call does while its ring is full (for
// the producer) or empty (for the consumer). The Try calls never wait and
// ignore it. The zero value is Park.
type WaitStrategy uint8

const (
	// Park spins briefly, yields the processor a few times, then sleeps on
	// a futex until the other side makes progress or the ring is closed. An
	// idle ring costs no CPU time; the price is a system call on the other
	// side for each wake-up (only when this side actually slept).
	Park WaitStrategy = iota
	// Spin re-checks the other side's cursor in a loop and never gives up
	// its thread: the lowest hand-off latency, one CPU burnt per waiter.
	Spin
	// SpinThenYield spins briefly, then calls runtime.Gosched between
	// checks, so other goroutines on the same P can run; the thread still
	// never sleeps.
	SpinThenYield
)

// Bounds of the wait phases. A check is one atomic load of the other side's
// cursor (a few ns when the line is shared, ~100 ns when it just moved).
const (
	// spinChecksBeforeYield: about 5 µs of checks, roughly what a futex
	// sleep and wake-up pair costs (two system calls and a thread switch),
	// the classic competitive choice: spinning at most as long as parking
	// would cost wastes at most half the wait. It covers a hand-off under
	// way on the other core (a cache-line round trip is well under 1 µs).
	spinChecksBeforeYield = 2048
	// yieldsBeforePark lets a peer goroutine that shares our P run before
	// we pay for a futex sleep and wake-up (several µs).
	yieldsBeforePark = 16
	// earlyRoomDivisor: while it spins, a producer waiting for room holds
	// out for 1/earlyRoomDivisor of the ring to be free, not one slot, so
	// that a full ring refills in chunks instead of the two sides trading
	// the cursor's cache line for every item. After the spin phase one
	// slot is enough, so a consumer that stops early cannot stall it.
	earlyRoomDivisor = 8
)

func (s WaitStrategy) String() string {
	switch s {
	case Park:
		return "park"
	case Spin:
		return "spin"
	case SpinThenYield:
		return "spin-then-yield"
	}
	return fmt.Sprintf("WaitStrategy(%d)", uint8(s))
}

func (s WaitStrategy) valid() error {
	if s > SpinThenYield {
		return fmt.Errorf("ring: unknown wait strategy %d: use ring.Park, ring.Spin or ring.SpinThenYield", uint8(s))
	}
	return nil
}

// waiter is an event count that one side of a ring sleeps on while the other
// side makes progress. It lives on its own cache lines, away from the
// cursors: the side that publishes reads sleeping after every publish, and
// that load stays a cache hit as long as nobody sleeps.
type waiter struct {
	// seq is the futex word: bumped before every wake-up so that a sleeper
	// that read it just before the bump does not go to sleep (EAGAIN).
	seq atomic.Uint32
	// sleeping is 1 while the owning side is in, or about to enter, a
	// futex sleep; the other side clears it when it decides to wake it.
	sleeping atomic.Uint32
}

// wake is called by the other side after it published progress.
func (w *waiter) wake() {
	// The publishing store before this call and the sleeper's store to
	// sleeping before its re-check are both sequentially consistent
	// (sync/atomic), so either we see sleeping == 1 here or the sleeper
	// sees our progress in its re-check: no lost wake-up.
	if w.sleeping.Load() != 0 && w.sleeping.CompareAndSwap(1, 0) {
		w.seq.Add(1)
		futexWakeAll(&w.seq)
	}
}

// wakeForClose wakes the owning side whatever it is doing; Close uses it.
func (w *waiter) wakeForClose() {
	w.seq.Add(1)
	futexWakeAll(&w.seq)
}

// await returns once done reports true. done must also report true once the
// ring is closed, so that Close ends every wait; the caller then works out
// which of the two happened. During the first spinChecksBeforeYield checks
// done is called with early set: a producer waiting for room may then hold
// out for a chunk of free slots rather than one, so that the two sides do
// not trade a cache line per item while the ring is full.
func (s WaitStrategy) await(w *waiter, done func(early bool) bool) {
	for i := 0; i < spinChecksBeforeYield; i++ {
		if done(true) {
			return
		}
	}
	slept := false
	for i := 0; !done(false); i++ {
		switch {
		case s == Spin:
			continue
		case s == SpinThenYield || i < yieldsBeforePark:
			runtime.Gosched()
			continue
		}
		w.sleeping.Store(1)
		slept = true
		if testHookArmed != nil {
			testHookArmed(w)
		}
		seen := w.seq.Load()
		if done(false) {
			break
		}
		// A waker that saw sleeping == 1 during an earlier sleep of ours
		// may clear the flag only now, for progress we have already taken.
		// Sleeping with the flag clear would make every later waker skip
		// us: a lost wake-up. So sleep only if the flag still stands; a
		// clear after this load bumps seq after our load of it, and the
		// futex call then returns at once.
		if w.sleeping.Load() == 0 {
			continue
		}
		futexWait(&w.seq, seen)
	}
	if slept {
		w.sleeping.Store(0)
	}
}

// testHookArmed, when set by a test, runs after a sleeper has set its
// sleeping flag and before it reads seq, the window in which a stale waker
// can clear the flag. It is nil outside tests.
var testHookArmed func(w *waiter)
