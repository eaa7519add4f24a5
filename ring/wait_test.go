package ring

import (
	"sync/atomic"
	"testing"
	"time"
)

// A waker that saw the sleeping flag during an earlier sleep can clear it
// late, after the sleeper has taken that progress and armed itself again.
// The sleeper must not then sleep with its flag clear, or the next real
// wake-up skips it. The hook forces exactly that interleaving; before the
// fix this test hung in futexWait (ftvm bench rings hung the same way).
func TestAwaitSurvivesAStaleWakerClearingTheFlag(t *testing.T) {
	var w waiter
	var progress atomic.Uint64
	var fired atomic.Bool
	testHookArmed = func(w *waiter) {
		if fired.CompareAndSwap(false, true) {
			// The stale waker: its CAS and seq bump land here, before the
			// sleeper reads seq, and bring no new progress.
			if w.sleeping.CompareAndSwap(1, 0) {
				w.seq.Add(1)
				futexWakeAll(&w.seq)
			}
		}
	}
	defer func() { testHookArmed = nil }()

	returned := make(chan struct{})
	go func() {
		Park.await(&w, func(bool) bool { return progress.Load() != 0 })
		close(returned)
	}()
	// Publish the progress the sleeper waits for, the way a ring does,
	// once the stale clear has happened and the sleeper had its chance to
	// go to sleep.
	for !fired.Load() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	progress.Store(1)
	w.wake()
	// A bound only on liveness: the sleeper returns within microseconds
	// once woken; 10 s is failure, not slowness.
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("await slept through a real wake-up after a stale waker cleared its flag (lost wake-up)")
	}
}
