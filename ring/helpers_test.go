package ring

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// stressItems returns how many items a stress test moves: at least a million
// under plain go test, fewer under -race or -short so that the package's
// race run stays well under its time budget.
func stressItems(full int) int {
	switch {
	case raceEnabled:
		return full / 20
	case testing.Short():
		return full / 5
	}
	return full
}

// hangLimit bounds how long a test waits for a goroutine that should finish
// almost at once; reaching it means a lost wake-up or a deadlock, not
// slowness.
const hangLimit = 20 * time.Second

// finishes fails the test if fn does not return within hangLimit.
func finishes(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(hangLimit):
		t.Fatalf("%s did not return within %v: a lost wake-up or a deadlock", what, hangLimit)
	}
}

// mix is the check word stored next to each sequence number, so that a torn
// or stale item shows up as a mismatch.
func mix(seq uint64) uint64 {
	seq ^= seq >> 33
	seq *= 0xff51afd7ed558ccd
	seq ^= seq >> 33
	return seq
}

// streamCheck checks that a consumer sees items 0, 1, 2, ... in order, each
// with its check word, and accumulates a checksum of what it saw.
type streamCheck struct {
	next uint64
	sum  uint64
}

func (c *streamCheck) see(seq, check uint64) error {
	if seq != c.next {
		return fmt.Errorf("got item %d, want %d", seq, c.next)
	}
	if check != mix(seq) {
		return fmt.Errorf("item %d has check word %#x, want %#x: torn or stale item", seq, check, mix(seq))
	}
	c.next++
	c.sum += check
	return nil
}

// finish checks the count and the checksum against an independent sum.
func (c *streamCheck) finish(n uint64) error {
	if c.next != n {
		return fmt.Errorf("consumer saw %d items, want %d", c.next, n)
	}
	var want uint64
	for seq := uint64(0); seq < n; seq++ {
		want += mix(seq)
	}
	if c.sum != want {
		return fmt.Errorf("checksum %#x, want %#x", c.sum, want)
	}
	return nil
}

func TestStreamCheckCatchesPlantedBugs(t *testing.T) {
	var dropped streamCheck
	if err := dropped.see(0, mix(0)); err != nil {
		t.Fatal(err)
	}
	if dropped.see(2, mix(2)) == nil {
		t.Error("a dropped item went unnoticed")
	}
	var torn streamCheck
	if torn.see(0, mix(1)) == nil {
		t.Error("a torn item went unnoticed")
	}
	var short streamCheck
	for seq := uint64(0); seq < 3; seq++ {
		if err := short.see(seq, mix(seq)); err != nil {
			t.Fatal(err)
		}
	}
	if short.finish(4) == nil {
		t.Error("a missing last item went unnoticed")
	}
	if err := short.finish(3); err != nil {
		t.Errorf("a correct stream was rejected: %v", err)
	}
}

// rusageThread is RUSAGE_THREAD from linux/resource.h (not in package
// syscall): CPU time of the calling thread only.
const rusageThread = 1

// threadCPU returns the CPU time the calling OS thread has used.
func threadCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		t.Fatalf("getrusage(RUSAGE_THREAD): %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
