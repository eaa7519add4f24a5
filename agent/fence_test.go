package agent

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/vmm"
)

// A stale primary's block write, queued behind a write that failed while
// the disk was full, is refused by the shared disk's fence once the new
// primary went live (raising the record to its token): neither write nor
// the reply behind them is made, and the stale agent halts.
func TestStalePrimarysQueuedWriteRefusedByTheFence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.fence")
	oldFence, err := vmm.OpenDiskFence(path)
	if err != nil {
		t.Fatal(err)
	}
	defer oldFence.Close()
	newFence, err := vmm.OpenDiskFence(path)
	if err != nil {
		t.Fatal(err)
	}
	defer newFence.Close()

	log, mu := &opLog{}, &sync.Mutex{}
	stale := newUnitAgent(t, &opLog{})
	stale.cfg.DiskFence = oldFence
	var full atomic.Bool
	full.Store(true)
	stale.handles[1] = heldEntry{h: &flakyHeld{log: log, mu: mu, full: &full}}
	stale.handles[2] = heldEntry{h: &lockedHeld{log: log, mu: mu}}
	blk, _ := exitKind(vmm.DeviceBlock, vmm.OpBlockWrite)
	nic, _ := exitKind(vmm.DeviceNIC, vmm.OpNICTX)
	if err := stale.perform(context.Background(), &work{rel: []lockstep.Output{
		{ID: 1, Seq: 1, Device: blk, Epoch: 1, Fence: 1},
		{ID: 2, Seq: 2, Device: nic, Epoch: 1, Fence: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	for stale.Stats().DiskWriteErrors == 0 {
		time.Sleep(time.Millisecond)
	}
	if cur, err := newFence.Current(); err != nil || cur != 1 {
		t.Fatalf("record %d (%v): the stale primary's first attempt should have raised it to its fence 1", cur, err)
	}

	// The secondary takes over with fence 2.
	next := newUnitAgent(t, &opLog{})
	next.cfg.DiskFence = newFence
	if err := next.command(context.Background(), lockstep.Command{Kind: lockstep.CmdGoLive, Epoch: 2, Fence: 2}); err != nil {
		t.Fatal(err)
	}
	full.Store(false) // space returns: the stale write is tried again
	stale.disk.drain()
	mu.Lock()
	done := strings.Join(log.ops, " ")
	mu.Unlock()
	if done != "" {
		t.Fatalf("the stale primary did %q after the new primary went live; want nothing", done)
	}
	if err := stale.followDisk(); !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), "fence") {
		t.Fatalf("stale primary after the refusal: %v; want ErrHalted naming the fence", err)
	}
	if cur, _ := newFence.Current(); cur != 2 {
		t.Fatalf("record holds %d after the new primary went live with fence 2", cur)
	}
	if err := newFence.Write(2, func() error { return nil }); err != nil {
		t.Fatalf("the new primary's write: %v", err)
	}
}
