package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/arbiter/etcd/etcdtest"
)

// testTTL is the shortest lease the test member grants.
const testTTL = etcdtest.MinTTL

type member = etcdtest.Member

func startMember(t *testing.T) *member { return etcdtest.Start(t) }

func newClient(t *testing.T, m *member) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.URL}, DialTimeout: 5 * time.Second, Logger: nil})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newArbiter(t *testing.T, m *member, host string) *Arbiter {
	t.Helper()
	return newArbiterTTL(t, m, host, testTTL)
}

func newArbiterTTL(t *testing.T, m *member, host string, ttl time.Duration) *Arbiter {
	t.Helper()
	a, err := New(Config{Client: newClient(t, m), Holder: host, LeaseTTL: ttl, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestAcquireGrantsEachEpochOnceWithGrowingFences(t *testing.T) {
	m := startMember(t)
	ctx := context.Background()
	const hosts = 4
	as := make([]*Arbiter, hosts)
	for i := range as {
		as[i] = newArbiter(t, m, fmt.Sprintf("h%d", i))
	}
	var wg sync.WaitGroup
	wins := make(chan int, hosts)
	fences := make([]uint64, hosts)
	for i, a := range as {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, fence, err := a.Acquire(ctx, "vm", 1)
			if err != nil {
				t.Error(err)
			}
			if ok {
				fences[i] = fence
				wins <- i
			}
		}()
	}
	wg.Wait()
	close(wins)
	if len(wins) != 1 {
		t.Fatalf("epoch 1 granted %d times, want once", len(wins))
	}
	w := <-wins
	winner, f1 := as[w], fences[w]
	st, err := winner.State(ctx, "vm")
	if err != nil || st.Epoch != 1 || st.Fence != f1 || st.Holder != winner.holder || st.Released {
		t.Fatalf("state after the grant: %+v %v; want epoch 1, fence %d, holder %s", st, err, f1, winner.holder)
	}
	// The holder takes its next epoch at once (it holds the lease).
	ok, f2, err := winner.Acquire(ctx, "vm", 2)
	if !ok || err != nil || f2 <= f1 {
		t.Fatalf("holder's epoch 2: granted=%v fence=%d err=%v; want granted with a fence above %d", ok, f2, err, f1)
	}
	if ok, _, err := winner.Acquire(ctx, "vm", 2); ok || err != nil {
		t.Fatalf("epoch 2 again: granted=%v err=%v; want a refusal", ok, err)
	}
	// Another host waits for the holder's live lease: an error, not a grant
	// and not a refusal.
	other := as[(w+1)%hosts]
	sctx, cancel := context.WithTimeout(ctx, testTTL/4)
	ok, _, err = other.Acquire(sctx, "vm", 3)
	cancel()
	if ok || !errors.Is(err, arbiter.ErrHeldElsewhere) {
		t.Fatalf("epoch 3 while the holder's lease lives: granted=%v err=%v; want an error naming the live lease", ok, err)
	}
	if ok, _, err := other.Acquire(ctx, "other-vm", 1); !ok || err != nil {
		t.Fatalf("VMs must be independent: %v %v", ok, err)
	}
	for _, id := range []string{"", "../x", "a/b", ".x", strings.Repeat("v", 65)} {
		if _, _, err := other.Acquire(ctx, id, 1); err == nil {
			t.Errorf("VM id %q accepted", id)
		}
	}
	if _, _, err := other.Acquire(ctx, "vm", 0); err == nil {
		t.Error("epoch 0 accepted")
	}
}

// A holder that stops renewing (its process died, or it lost etcd) loses
// its lease by its own count before etcd lets anyone else have the VM:
// the other host's grant comes after the holder's Check began to fail.
func TestLeaseRunsOutBeforeAnotherHostIsGranted(t *testing.T) {
	m := startMember(t)
	ctx := context.Background()
	// b's lease is longer than a's, so that it outlives the wait for a's.
	const bTTL = 4 * testTTL
	a, b := newArbiter(t, m, "a"), newArbiterTTL(t, m, "b", bTTL)
	if ok, _, err := a.Acquire(ctx, "vm", 1); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := a.Check(); err != nil {
		t.Fatalf("Check with a live lease: %v", err)
	}
	// The keep-alive renews: several TTLs later a still holds the VM.
	time.Sleep(3 * testTTL)
	if err := a.Check(); err != nil {
		t.Fatalf("Check after %v of keep-alives: %v", 3*testTTL, err)
	}
	// b asks while a's lease lives, and waits; a while later a's
	// keep-alives stop reaching etcd, as if it were cut off; its watchdog
	// still sees the clock.
	bctx, cancel := context.WithTimeout(ctx, 10*testTTL)
	defer cancel()
	type answer struct {
		ok      bool
		fence   uint64
		err     error
		aKnewIt bool // a's Lost was closed when b's grant came back
	}
	bDone := make(chan answer, 1)
	go func() {
		for {
			ok, fence, err := b.Acquire(bctx, "vm", 2)
			if err == nil || bctx.Err() != nil {
				// Look at once, rather than compare the clock read by
				// a goroutine woken by Lost: on a loaded host that one
				// may run after b's grant came back.
				aKnewIt := false
				select {
				case <-a.Lost():
					aKnewIt = true
				default:
				}
				bDone <- answer{ok, fence, err, aKnewIt}
				return
			}
		}
	}()
	time.Sleep(3 * testTTL / 2)
	a.noRenew.Store(true)
	ans := <-bDone
	ok, fence, err := ans.ok, ans.fence, ans.err
	if !ok || err != nil {
		t.Fatalf("b's epoch 2 after a stopped renewing: granted=%v err=%v", ok, err)
	}
	// b's grant starts with a whole TTL, however long it waited for a's
	// lease.
	if l := b.Lease(); !l.Holding || l.Left < bTTL*3/4 {
		t.Fatalf("b's lease right after its grant: %+v; want at least %v left", l, bTTL*3/4)
	}
	checkErr := a.Check()
	if !errors.Is(checkErr, ErrLeaseLost) {
		t.Fatalf("a's Check once b was granted: %v; want ErrLeaseLost", checkErr)
	}
	if !ans.aKnewIt {
		t.Fatal("a's Lost was not closed by the time b's grant came back: a must know first")
	}
	if ok, _, _ := a.Acquire(ctx, "vm", 3); ok {
		t.Fatal("a host that lost its lease was granted again")
	}
	st, _ := b.State(ctx, "vm")
	if st.Holder != "b" || st.Fence != fence {
		t.Fatalf("state %+v after b's grant", st)
	}
}

// etcd going away entirely (every member: a lost quorum is the same to the
// client) makes the holder's lease run out by its own count.
func TestLeaseLostWhenEtcdIsGone(t *testing.T) {
	m := startMember(t)
	a := newArbiter(t, m, "a")
	if ok, _, err := a.Acquire(context.Background(), "vm", 1); !ok || err != nil {
		t.Fatal(ok, err)
	}
	m.Stop()
	select {
	case <-a.Lost():
	case <-time.After(10 * testTTL):
		t.Fatalf("the lease was not lost %v after etcd stopped (TTL %v); Check says %v", 10*testTTL, testTTL, a.Check())
	}
	if err := a.Check(); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Check: %v", err)
	}
	if s := a.Lease(); s.Lost == "" || s.Left != 0 || !s.Holding {
		t.Fatalf("Lease() after the loss: %+v", s)
	}
}

func TestReleaseLetsTheNextHostInAtOnce(t *testing.T) {
	m := startMember(t)
	ctx := context.Background()
	a, b := newArbiter(t, m, "a"), newArbiter(t, m, "b")
	ok, fence, err := a.Acquire(ctx, "vm", 1)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	if done, err := b.Release(ctx, "vm", 1, fence); done || err != nil {
		t.Fatalf("b released a's epoch: %v %v", done, err)
	}
	if done, err := a.Release(ctx, "vm", 1, fence+1); done || err != nil {
		t.Fatalf("a released with a wrong fence: %v %v", done, err)
	}
	if done, err := a.Release(ctx, "vm", 1, fence); !done || err != nil {
		t.Fatalf("a's clean stop: %v %v", done, err)
	}
	st, _ := b.State(ctx, "vm")
	if !st.Released || !st.MayTakeNext("a") || st.MayTakeNext("b") {
		t.Fatalf("state %+v after a's clean stop: a, and only a, may take the next epoch by itself", st)
	}
	if err := a.Check(); err != nil {
		t.Fatalf("Check after a clean stop: %v", err)
	}
	// No lease is left to wait for: b is granted while a's lease lives
	// on (a still renews it; without the release b would wait for as
	// long). The deadline only ends a hang: half a TTL, as it was, is a
	// clock bound that a loaded host's slow etcd round trips can miss.
	bctx, cancel := context.WithTimeout(ctx, 10*testTTL)
	defer cancel()
	if ok, f2, err := b.Acquire(bctx, "vm", 2); !ok || err != nil || f2 <= fence {
		t.Fatalf("b after a's release: granted=%v fence=%d err=%v", ok, f2, err)
	}
	if err := a.Check(); err != nil {
		t.Fatalf("a's lease after b's grant: %v; b must not have waited for it to run out", err)
	}
}

func TestRunningOncePerHostAndResetRefusedMeanwhile(t *testing.T) {
	m := startMember(t)
	ctx := context.Background()
	a, again, b := newArbiter(t, m, "a"), newArbiter(t, m, "a"), newArbiter(t, m, "b")
	ok, fence, _ := a.Acquire(ctx, "vm", 1)
	if !ok {
		t.Fatal("setup grant")
	}
	run, err := a.Running("vm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Running("vm"); err == nil || !strings.Contains(err.Error(), `runs as host "a"`) {
		t.Fatalf("a second daemon as host a: %v", err)
	}
	rb, err := b.Running("vm")
	if err != nil {
		t.Fatalf("host b beside a: %v", err)
	}
	rb.Close()
	if _, err := b.Reset(ctx, "vm"); !errors.Is(err, ErrRunning) {
		t.Fatalf("reset while a daemon runs: %v; want ErrRunning", err)
	}
	run.Close()
	old, err := b.Adopt(ctx, "vm", "b")
	if err != nil || old.Holder != "a" || old.Fence != fence {
		t.Fatalf("adopt: %+v %v", old, err)
	}
	st, _ := b.State(ctx, "vm")
	if !st.Released || st.Holder != "b" || !st.MayTakeNext("b") || st.MayTakeNext("a") {
		t.Fatalf("state after adopt: %+v", st)
	}
	// The adoption does not end a's lease (a may still run, for all etcd
	// knows); its keep-alive finds the record names it no longer only if
	// the lease key moved. b waits for a's lease like any other host.
	bctx, cancel := context.WithTimeout(ctx, testTTL/4)
	defer cancel()
	if ok, _, err := b.Acquire(bctx, "vm", 2); ok || err == nil {
		t.Fatalf("b took epoch 2 under a's live lease: %v %v", ok, err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	m := startMember(t)
	cli := newClient(t, m)
	for _, c := range []Config{
		{Holder: "a"},
		{Client: cli},
		{Client: cli, Holder: "../a"},
		{Client: cli, Holder: "a", LeaseTTL: 1500 * time.Millisecond},
		{Client: cli, Holder: "a", LeaseTTL: 500 * time.Millisecond},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

// A daemon restarted right after it died finds its old running key: it
// waits for the dead one's lease instead of refusing.
func TestRunningWaitsForADeadDaemonsKey(t *testing.T) {
	m := startMember(t)
	cli := newClient(t, m)
	ctx := context.Background()
	g, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	// What a daemon killed a moment ago leaves: its key, its lease not
	// renewed any more.
	if _, err := cli.Put(ctx, DefaultPrefix+"vm/vm/running/a", `{"pid":1}`, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	a := newArbiter(t, m, "a")
	run, err := a.Running("vm")
	if err != nil {
		t.Fatalf("Running after the old daemon's lease ran out: %v", err)
	}
	run.Close()
}

// A holder whose VM moves to another host behind its back (an operator
// deleted the lease key, and another host was granted a newer epoch)
// finds out at its next keep-alive and stops.
func TestHolderLosesTheLeaseWhenAnotherHostIsGranted(t *testing.T) {
	m := startMember(t)
	ctx := context.Background()
	a, b := newArbiter(t, m, "a"), newArbiter(t, m, "b")
	if ok, _, err := a.Acquire(ctx, "vm", 1); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := newClient(t, m).Delete(ctx, DefaultPrefix+"vm/vm/lease"); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := b.Acquire(ctx, "vm", 2); !ok || err != nil {
		t.Fatalf("b after the lease key went: %v %v", ok, err)
	}
	select {
	case <-a.Lost():
	case <-time.After(2 * testTTL):
		t.Fatalf("a still holds the VM %v after b was granted epoch 2: Check %v", 2*testTTL, a.Check())
	}
	if err := a.Check(); !errors.Is(err, ErrLeaseLost) || !strings.Contains(err.Error(), `"b"`) && !strings.Contains(err.Error(), "lease key") {
		t.Fatalf("a's Check: %v; want ErrLeaseLost saying why", err)
	}
	if err := b.Check(); err != nil {
		t.Fatalf("b's Check: %v", err)
	}
}
