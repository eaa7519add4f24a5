package ring

import (
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
)

type item struct{ seq, check uint64 }

var strategies = []WaitStrategy{Park, Spin, SpinThenYield}

func TestNewSPSCRejectsBadInput(t *testing.T) {
	for _, c := range []int{-4, 0, 1, 3, 1000, MaxSPSCItems * 2} {
		if _, err := NewSPSC[int](c, Park); err == nil || !strings.Contains(err.Error(), "power of two") {
			t.Errorf("NewSPSC(%d) = %v, want an error asking for a power of two", c, err)
		}
	}
	if _, err := NewSPSC[int](8, WaitStrategy(9)); err == nil || !strings.Contains(err.Error(), "wait strategy") {
		t.Errorf("NewSPSC with strategy 9 = %v, want an unknown-strategy error", err)
	}
}

func TestSPSCFullAndEmptyEdges(t *testing.T) {
	r, err := NewSPSC[int](4, Park)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryPop(); err != ErrEmpty {
		t.Fatalf("TryPop on a new ring: %v, want ErrEmpty", err)
	}
	if _, err := r.TryPeek(4); err != ErrEmpty {
		t.Fatalf("TryPeek on a new ring: %v, want ErrEmpty", err)
	}
	for i := range 4 {
		if err := r.TryPush(i); err != nil {
			t.Fatalf("TryPush(%d) into a ring with room: %v", i, err)
		}
	}
	if err := r.TryPush(4); err != ErrFull {
		t.Fatalf("TryPush into a full ring: %v, want ErrFull", err)
	}
	if _, err := r.TryReserve(1); err != ErrFull {
		t.Fatalf("TryReserve on a full ring: %v, want ErrFull", err)
	}
	if got := r.Len(); got != 4 {
		t.Fatalf("Len of a full ring = %d, want 4", got)
	}
	if v, err := r.TryPop(); v != 0 || err != nil {
		t.Fatalf("TryPop = %d, %v, want 0, nil", v, err)
	}
	if err := r.TryPush(4); err != nil {
		t.Fatalf("TryPush after one pop: %v", err)
	}
	// The buffer now holds 1 2 3 at slots 1..3 and 4 at slot 0: a peek
	// stops at the end of the buffer, then continues at its start.
	s, err := r.TryPeek(10)
	if err != nil || len(s) != 3 || s[0] != 1 || s[2] != 3 {
		t.Fatalf("TryPeek(10) = %v, %v, want [1 2 3]", s, err)
	}
	if err := r.Release(3); err != nil {
		t.Fatal(err)
	}
	s, err = r.TryPeek(10)
	if err != nil || len(s) != 1 || s[0] != 4 {
		t.Fatalf("TryPeek after the wrap = %v, %v, want [4]", s, err)
	}
	if err := r.Release(1); err != nil {
		t.Fatal(err)
	}
	// Empty, with both cursors at 5: a reservation stops at the end too.
	w, err := r.TryReserve(8)
	if err != nil || len(w) != 3 {
		t.Fatalf("TryReserve(8) at slot 1 gave %d slots, %v; want the 3 up to the end", len(w), err)
	}
	if _, err := r.TryPop(); err != ErrEmpty {
		t.Fatalf("a reservation became visible before Commit: %v", err)
	}
	w[0], w[1] = 10, 11
	if err := r.Commit(2); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{10, 11} {
		if v, err := r.TryPop(); v != want || err != nil {
			t.Fatalf("TryPop = %d, %v, want %d", v, err, want)
		}
	}
}

func TestSPSCMisuseGetsClearErrors(t *testing.T) {
	r, _ := NewSPSC[int](4, Park)
	if err := r.Commit(1); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("Commit without Reserve = %v, want an error", err)
	}
	if _, err := r.TryReserve(0); err == nil {
		t.Error("TryReserve(0) succeeded")
	}
	s, _ := r.TryReserve(2)
	if err := r.Commit(len(s) + 1); err == nil {
		t.Error("Commit of more than was reserved succeeded")
	}
	if err := r.Release(1); err == nil || !strings.Contains(err.Error(), "peeked") {
		t.Errorf("Release without Peek = %v, want an error", err)
	}
	if _, err := r.TryPeek(-1); err == nil {
		t.Error("TryPeek(-1) succeeded")
	}
}

func TestSPSCCloseDrainsThenFails(t *testing.T) {
	r, _ := NewSPSC[int](8, Park)
	for i := range 3 {
		if err := r.Push(i); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	r.Close() // twice is fine
	if err := r.Push(9); err != ErrClosed {
		t.Fatalf("Push after Close: %v, want ErrClosed", err)
	}
	if _, err := r.Reserve(1); err != ErrClosed {
		t.Fatalf("Reserve after Close: %v, want ErrClosed", err)
	}
	for i := range 3 {
		if v, err := r.Pop(); v != i || err != nil {
			t.Fatalf("Pop after Close = %d, %v, want %d, nil (items committed before Close are kept)", v, err, i)
		}
	}
	if _, err := r.Pop(); err != ErrClosed {
		t.Fatalf("Pop on a closed, drained ring: %v, want ErrClosed", err)
	}
	if _, err := r.Peek(1); err != ErrClosed {
		t.Fatalf("Peek on a closed, drained ring: %v, want ErrClosed", err)
	}
}

// TestSPSCCloseWakesBlockedSide blocks each side in each kind of blocking
// call, under each strategy, and checks that Close wakes it with ErrClosed.
func TestSPSCCloseWakesBlockedSide(t *testing.T) {
	for _, s := range strategies {
		calls := map[string]func(r *SPSC[int]) error{
			"Pop":     func(r *SPSC[int]) error { _, err := r.Pop(); return err },
			"Peek":    func(r *SPSC[int]) error { _, err := r.Peek(4); return err },
			"Push":    func(r *SPSC[int]) error { r.TryPush(1); r.TryPush(2); return r.Push(3) },
			"Reserve": func(r *SPSC[int]) error { r.TryPush(1); r.TryPush(2); _, err := r.Reserve(1); return err },
		}
		for name, call := range calls {
			t.Run(s.String()+"/"+name, func(t *testing.T) {
				r, _ := NewSPSC[int](2, s)
				errc := make(chan error, 1)
				go func() { errc <- call(r) }()
				// Give the call time to reach its deepest wait phase;
				// the test passes whichever phase Close finds it in.
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

// TestSPSCStress moves millions of items between two goroutines through a
// small ring, with both sides switching at random between single, batch,
// blocking and non-blocking calls, and checks the order, the check word and
// a checksum of every item.
func TestSPSCStress(t *testing.T) {
	for _, s := range []WaitStrategy{Park, SpinThenYield} {
		// The full count under Park, the agent's strategy; a quarter
		// under SpinThenYield, which differs only in how it waits.
		n := uint64(stressItems(2_000_000))
		if s != Park {
			n /= 4
		}
		t.Run(s.String(), func(t *testing.T) {
			r, err := NewSPSC[item](64, s)
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { errc <- produceItems(r, n, rand.New(rand.NewPCG(1, 2))) }()
			var check streamCheck
			rng := rand.New(rand.NewPCG(3, 4))
			for check.next < n {
				if err := consumeItems(r, &check, rng); err != nil {
					t.Fatal(err)
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if err := check.finish(n); err != nil {
				t.Fatal(err)
			}
			if _, err := r.TryPop(); err != ErrEmpty {
				t.Fatalf("ring not empty after the stream: %v", err)
			}
		})
	}
}

func produceItems(r *SPSC[item], n uint64, rng *rand.Rand) error {
	for seq := uint64(0); seq < n; {
		switch rng.IntN(4) {
		case 0:
			if err := r.Push(item{seq, mix(seq)}); err != nil {
				return err
			}
			seq++
		case 1:
			switch err := r.TryPush(item{seq, mix(seq)}); err {
			case nil:
				seq++
			case ErrFull:
				runtime.Gosched()
			default:
				return err
			}
		default:
			slots, err := r.Reserve(1 + rng.IntN(40))
			if err != nil {
				return err
			}
			// Fill every slot, commit only some: the rest are handed
			// out again by the next reservation.
			for i := range slots {
				slots[i] = item{seq + uint64(i), mix(seq + uint64(i))}
			}
			k := 1 + rng.IntN(len(slots))
			if uint64(k) > n-seq {
				k = int(n - seq)
			}
			if err := r.Commit(k); err != nil {
				return err
			}
			seq += uint64(k)
		}
	}
	return nil
}

func consumeItems(r *SPSC[item], check *streamCheck, rng *rand.Rand) error {
	switch rng.IntN(4) {
	case 0:
		it, err := r.Pop()
		if err != nil {
			return err
		}
		return check.see(it.seq, it.check)
	case 1:
		it, err := r.TryPop()
		if err == ErrEmpty {
			runtime.Gosched()
			return nil
		}
		if err != nil {
			return err
		}
		return check.see(it.seq, it.check)
	default:
		items, err := r.Peek(1 + rng.IntN(40))
		if err != nil {
			return err
		}
		k := 1 + rng.IntN(len(items))
		for _, it := range items[:k] {
			if err := check.see(it.seq, it.check); err != nil {
				return err
			}
		}
		return r.Release(k)
	}
}

func TestSPSCSteadyStateAllocatesNothing(t *testing.T) {
	r, _ := NewSPSC[item](16, Park)
	allocs := testing.AllocsPerRun(1000, func() {
		if err := r.Push(item{1, 2}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Pop(); err != nil {
			t.Fatal(err)
		}
		s, err := r.Reserve(4)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Commit(len(s)); err != nil {
			t.Fatal(err)
		}
		p, err := r.Peek(4)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Release(len(p)); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("a push/pop/reserve/commit/peek/release cycle allocates %v times, want 0", allocs)
	}
}

// TestParkedConsumerUsesNoCPU blocks a consumer on an empty ring for the
// same wall time under Park and under Spin and compares the CPU time its
// thread used: parked on the futex it must use a small fraction of what
// spinning burns. Only the ratio is asserted, never an absolute time.
func TestParkedConsumerUsesNoCPU(t *testing.T) {
	const idle = 300 * time.Millisecond
	spin := blockedConsumerCPU(t, Spin, idle)
	park := blockedConsumerCPU(t, Park, idle)
	t.Logf("thread CPU while blocked %v: spin %v, park %v", idle, spin, park)
	if spin <= 0 {
		t.Fatalf("the spinning consumer used no CPU time over %v; the measurement is broken", idle)
	}
	// Park spins and yields for a few microseconds before it sleeps; a
	// tenth of a spinning thread's time is far above that and far below
	// any busy wait.
	const maxParkShare = 0.1
	if float64(park) > maxParkShare*float64(spin) {
		t.Fatalf("a parked consumer used %v of CPU, %.2f of a spinning one's %v; want at most %.2f",
			park, float64(park)/float64(spin), spin, maxParkShare)
	}
}

func blockedConsumerCPU(t *testing.T, s WaitStrategy, idle time.Duration) time.Duration {
	r, _ := NewSPSC[int](2, s)
	used := make(chan time.Duration, 1)
	go func() {
		// The thread's CPU clock measures this goroutine only while it
		// stays on the thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		start := threadCPU(t)
		_, err := r.Pop()
		if !errors.Is(err, ErrClosed) {
			t.Errorf("blocked Pop returned %v, want ErrClosed", err)
		}
		used <- threadCPU(t) - start
	}()
	time.Sleep(idle)
	r.Close()
	var d time.Duration
	finishes(t, "blocked Pop after Close", func() { d = <-used })
	return d
}

// TestSPSCProducerTakesASingleFreedSlot: while spinning, a blocked producer
// holds out for a chunk of free slots; it must still go on when the consumer
// frees only one and stops.
func TestSPSCProducerTakesASingleFreedSlot(t *testing.T) {
	for _, s := range strategies {
		t.Run(s.String(), func(t *testing.T) {
			r, _ := NewSPSC[int](64, s)
			for i := range 64 {
				r.TryPush(i)
			}
			pushed := make(chan error, 1)
			go func() { pushed <- r.Push(64) }()
			if v, err := r.Pop(); v != 0 || err != nil {
				t.Fatalf("Pop = %d, %v", v, err)
			}
			finishes(t, "Push into one freed slot", func() {
				if err := <-pushed; err != nil {
					t.Error(err)
				}
			})
		})
	}
}

func TestRecordsProducerTakesASingleFreedRecord(t *testing.T) {
	for _, s := range strategies {
		t.Run(s.String(), func(t *testing.T) {
			r, _ := NewRecords(1024, s)
			for {
				if _, err := r.TryReserve(4); err != nil {
					break
				}
			}
			r.Commit()
			reserved := make(chan error, 1)
			go func() { _, err := r.Reserve(4); reserved <- err }()
			span, _ := r.Peek()
			if err := r.Release(RecordBytes(4)); err != nil || len(span) != 1024 {
				t.Fatalf("Release of the first record of a %d-byte span: %v", len(span), err)
			}
			finishes(t, "Reserve into one freed record", func() {
				if err := <-reserved; err != nil {
					t.Error(err)
				}
			})
		})
	}
}
