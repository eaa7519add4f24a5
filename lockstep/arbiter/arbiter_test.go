package arbiter

import (
	"context"
	"sync"
	"testing"
)

func TestMemoryGrantsEachEpochOnce(t *testing.T) {
	a := NewMemory()
	ctx := context.Background()
	const callers = 8
	var wg sync.WaitGroup
	wins := make(chan uint64, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, fence, err := a.Acquire(ctx, "vm", 1)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins <- fence
			}
		}()
	}
	wg.Wait()
	close(wins)
	if n := len(wins); n != 1 {
		t.Fatalf("epoch 1 granted %d times, want once", n)
	}
	f1 := <-wins
	if ok, _, _ := a.Acquire(ctx, "vm", 1); ok {
		t.Fatal("epoch 1 granted again")
	}
	ok, f2, _ := a.Acquire(ctx, "vm", 3)
	if !ok || f2 <= f1 {
		t.Fatalf("epoch 3: granted=%v fence=%d, want granted with a fence above %d", ok, f2, f1)
	}
	if ok, _, _ := a.Acquire(ctx, "vm", 2); ok {
		t.Fatal("epoch 2 granted after epoch 3")
	}
	if ok, _, _ := a.Acquire(ctx, "other", 1); !ok {
		t.Fatal("VMs must be independent")
	}
	if _, _, err := a.Acquire(ctx, "vm", 0); err == nil {
		t.Fatal("epoch 0 accepted")
	}
	if got := len(a.Grants()); got != 3 {
		t.Fatalf("%d grants recorded, want 3", got)
	}
}
