package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// TestKVMSecondaryBatchesItsWrites runs a kvstore pair with a disk each
// under PUTs: the secondary's persists are made durable a batch at a
// time (through vmm's WriteUnsynced and one SyncDisk), the primary's
// releases never, and once the secondary has drained its disk is the
// primary's byte for byte.
func TestKVMSecondaryBatchesItsWrites(t *testing.T) {
	const puts = 60
	image := guestImage(t, "kvstore")
	client, nic := kvstoreNIC(t)
	disks := pairDisks(t, 4<<20, nil)
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	p := startPairConfig(t, ctx, lockstep.AckOnReceipt, 0, image, "", kvstoreDevices(disks, nic), func(_ wire.Role, c *Config) { c.SeparateStorage = true })
	deadline := time.Now().Add(testRunTimeout / 4)
	for i := 1; i <= puts; i++ {
		r, err := kvRequest(client, nic.LocalAddr(), uint64(i), fmt.Sprintf("PUT k%d v%d", i%7, i), deadline)
		if err != nil || !strings.HasPrefix(r, "OK") {
			t.Fatalf("PUT %d: %q, %v", i, r, err)
		}
	}
	// The primary tells the secondary what it released with its next
	// messages: give the persists time to arrive before stopping it. A
	// PUT writes at least one sector, and some write more (63 writes for
	// 60 PUTs here), so a count of puts alone can end the wait with the
	// last heartbeat's persists still on their way: wait for the disks
	// to agree as well (the check below is after both have drained).
	sameDisks := func() bool {
		pd, err1 := os.ReadFile(disks[wire.RolePrimary].Name())
		sd, err2 := os.ReadFile(disks[wire.RoleSecondary].Name())
		return err1 == nil && err2 == nil && bytes.Equal(pd, sd)
	}
	for end := time.Now().Add(10 * time.Second); (p.sec.stats.persisted.Load() < puts || !sameDisks()) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	p.pri.Stop()
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	p.sec.Stop()
	waitErr(t, "secondary", p.secErr) // the primary is gone: it may say so
	pb, sb, persisted := p.pri.disk.batched.Load(), p.sec.disk.batched.Load(), p.sec.stats.persisted.Load()
	t.Logf("primary %+v; secondary %+v", p.pri.Stats(), p.sec.Stats())
	t.Logf("secondary: %d of %d persisted writes made durable in %d batches", sb, persisted, p.sec.disk.batches.Load())
	if pb != 0 || sb == 0 || sb > persisted {
		t.Fatalf("writes made durable in batches: primary %d, secondary %d of %d persisted; want none on the primary, some on the secondary", pb, sb, persisted)
	}
	pd, err := os.ReadFile(disks[wire.RolePrimary].Name())
	if err != nil {
		t.Fatal(err)
	}
	sd, err := os.ReadFile(disks[wire.RoleSecondary].Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pd, sd) {
		t.Fatal("the secondary's disk differs from the primary's after it drained")
	}
}
