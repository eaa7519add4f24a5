package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
)

// Cold restarts (issue 18): both hosts stop, by a double fault or on
// purpose, and the VM is brought back as the README says: ftvm primary on
// either host, which refuses on the host whose disk is behind (naming the
// other) and takes the next epoch by itself on the host that was the last
// primary. Each ends with every write the client was told was done read
// back, and the whole history linearizable.
//
// The disks are 64 KiB: kvstore replays its write-ahead log at boot in
// reads of up to 64 KiB, which with the log entry's header exceed the
// wire's entry limit (a separate issue); 127 sectors fit, and the phases
// below write well under 127 records.

// restartFlags are the daemons' extra flags in these scenarios.
var restartFlags = []string{"--disk-size", "64KiB"}

// restartPhase runs a short load against the VM: ops operations on a
// fixed set of keys (prefix), so that phases before and after a restart
// speak of the same keys.
func restartPhase(t *testing.T, ctx context.Context, c *Cluster, prefix string, mix kvclient.Mix, ops int) *kvclient.Result {
	t.Helper()
	cfg := kvclient.Config{
		Addr:         net.JoinHostPort(VMAddr, "7000"),
		RatePerSec:   50,
		Concurrency:  4,
		Duration:     30 * time.Second,
		OpsMax:       ops,
		RegisterKeys: 4,
		CounterKeys:  2,
		KeyPrefix:    prefix,
		Mix:          mix,
		Retry:        kvclient.Retry{AttemptTimeout: 50 * time.Millisecond, AttemptsMax: 100},
	}
	var res *kvclient.Result
	err := c.Topo.InNamespace(Client, func() error {
		var err error
		res, err = kvclient.Run(ctx, cfg)
		return err
	})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	st := res.Stats
	t.Logf("load phase: %d served of %d sent, %d errors, %d unanswered, %d retries", st.Served, st.Sent, st.Errors, st.Unanswered, st.Retries)
	return res
}

// merged is the histories of several phases on one clock.
func merged(phases ...*kvclient.Result) []linearize.Op {
	var all []linearize.Op
	base := phases[0].Origin
	for _, p := range phases {
		shift := p.Origin.Sub(base).Nanoseconds()
		for _, op := range p.History {
			op.Invoke += shift
			if op.Outcome != linearize.Unknown {
				op.Complete += shift
			}
			all = append(all, op)
		}
	}
	return all
}

// checkWritesPresent fails unless writesPresent finds nothing wrong.
func checkWritesPresent(t *testing.T, final *kvclient.Result, before ...*kvclient.Result) {
	t.Helper()
	n, err := writesPresent(final, before...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged writes, all present after the restart", n)
}

// writesPresent checks that the final phase (GETs only) read, for every
// key, a version at least that of every write acknowledged before, and
// that the merged history is linearizable. It returns how many writes
// were acknowledged.
func writesPresent(final *kvclient.Result, before ...*kvclient.Result) (int, error) {
	acked := map[string]uint64{} // key → highest version acknowledged
	n := 0
	for _, p := range before {
		for _, op := range p.History {
			if op.Outcome == linearize.OK && (op.Kind == linearize.Put || op.Kind == linearize.Inc) {
				acked[op.Key] = max(acked[op.Key], op.Version)
				n++
			}
		}
	}
	if n == 0 {
		return 0, errors.New("no write was acknowledged before the restart: the scenario proves nothing")
	}
	read := map[string]uint64{}
	for _, op := range final.History {
		if op.Kind == linearize.Get && op.Outcome == linearize.OK {
			read[op.Key] = max(read[op.Key], op.Version)
		}
	}
	var lost []string
	for key, v := range acked {
		got, ok := read[key]
		if !ok {
			return n, fmt.Errorf("key %s was never read back after the restart", key)
		}
		if got < v {
			lost = append(lost, fmt.Sprintf("key %s: a write was acknowledged with version %d, but after the restart it reads version %d", key, v, got))
		}
	}
	if len(lost) > 0 {
		return n, fmt.Errorf("acknowledged writes lost: %s", strings.Join(lost, "; "))
	}
	if err := linearize.Check(merged(append(before, final)...)); err != nil {
		return n, fmt.Errorf("the history across the restart is not linearizable: %v", err)
	}
	return n, nil
}

// refusedAsPrimary starts ftvm primary on h and expects it to exit 3
// naming host newer as the one with the newer disk.
func refusedAsPrimary(t *testing.T, ctx context.Context, c *Cluster, h, newer Host) {
	t.Helper()
	d, err := c.StartPrimary(h)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Proc.Done():
	case <-ctx.Done():
		t.Fatalf("ftvm primary on host %s, whose disk is behind, did not refuse: %v", h, ctx.Err())
	}
	st, _ := d.Proc.Wait()
	tail := d.Proc.Tail(20)
	if st == nil || st.ExitCode() != 3 || !strings.Contains(tail, fmt.Sprintf(`host \"%s\"`, newer)) {
		t.Fatalf("ftvm primary on host %s: %v; want exit 3 naming host %s as the one with the newer disk:\n%s", h, st, newer, tail)
	}
	t.Logf("host %s refused as primary, naming host %s", h, newer)
}

// restartAsPrimary starts ftvm primary on h, which must take a newer epoch
// than after, and host other as its secondary; it returns once protected.
func restartAsPrimary(t *testing.T, ctx context.Context, c *Cluster, h, other Host, after uint64) {
	t.Helper()
	if _, err := c.StartPrimary(h); err != nil {
		t.Fatal(err)
	}
	s, err := c.Await(ctx, h, fmt.Sprintf("primary again at an epoch after %d", after), func(s *Status) bool { return Primary(s) && s.Epoch > after })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(other, h); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, h, "protected again", Protected); err != nil {
		t.Fatal(err)
	}
	t.Logf("host %s primary again at epoch %d, protected by host %s", h, s.Epoch, other)
}

func restartPrefix() string { return fmt.Sprintf("r%06x-", rand.Uint32()&0xffffff) }

// TestE2ERestartAfterDoubleFault: the primary is killed, the survivor
// serves, the dead host comes back as a secondary and the new primary is
// killed while it joins; then the half-joined host is killed too. Started
// as primary, the half-joined host refuses and names the last primary,
// whose disk holds every acknowledged write; started there, it takes the
// next epoch by itself.
func TestE2ERestartAfterDoubleFault(t *testing.T) {
	c := newTestCluster(t, "dfault", ClusterConfig{Flags: restartFlags})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	prefix := restartPrefix()
	last, stale, epoch, phases := doubleFault(t, ctx, c, prefix)
	refusedAsPrimary(t, ctx, c, stale, last)
	restartAsPrimary(t, ctx, c, last, stale, epoch)
	final := restartPhase(t, ctx, c, prefix, kvclient.Mix{Get: 1}, 60)
	checkWritesPresent(t, final, phases...)
}

// TestE2ERestartFromTheStaleDiskLosesWrites plants the operator's mistake
// the refusal guards against, to prove the check sees it: after the same
// double fault, ftvm recover declares the half-joined host's disk current
// and the VM restarts from it; the writes acknowledged by the last
// primary must then be found missing.
func TestE2ERestartFromTheStaleDiskLosesWrites(t *testing.T) {
	c := newTestCluster(t, "stale", ClusterConfig{Flags: restartFlags})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	prefix := restartPrefix()
	last, stale, epoch, phases := doubleFault(t, ctx, c, prefix)
	if last != HostB {
		// Host a was killed as soon as its daemon answered, long before a
		// whole checkpoint could reach it: it cannot have gone live.
		t.Fatalf("host a took over before it was killed, so no disk is stale: the double fault did not happen as staged")
	}
	proc, err := c.Topo.Start(ctx, stale, c.cfg.Ftvm, "recover", "--arbiter-dir", c.path("arbiter"), "--vm-id", VMID,
		"--disk", c.path("disk-"+string(stale)+".img"), "--host-name", string(stale), "--force")
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := proc.Wait(); st == nil || !st.Success() {
		t.Fatalf("ftvm recover: %v\n%s", st, proc.Tail(20))
	}
	restartAsPrimary(t, ctx, c, stale, last, epoch)
	// A primary started cold announces nothing yet, and the switch still
	// sends the VM's MAC to the last primary's port: make the client ask
	// for the VM's address again, so that the VM's answer moves it.
	if out, err := c.Topo.Run(ctx, Client, "ip", "neigh", "flush", "all"); err != nil {
		t.Fatalf("ip neigh flush: %v: %s", err, out)
	}
	final := restartPhase(t, ctx, c, prefix, kvclient.Mix{Get: 1}, 60)
	n, err := writesPresent(final, phases...)
	if err == nil || !strings.Contains(err.Error(), "acknowledged writes lost") {
		t.Fatalf("restarting from the stale disk, the check found %v among %d acknowledged writes; want writes lost", err, n)
	}
	t.Logf("as it must: %v", err)
}

// doubleFault runs the double fault of TestE2ERestartAfterDoubleFault and
// returns the last primary, the other host, the last primary's epoch and
// the load phases run before.
func doubleFault(t *testing.T, ctx context.Context, c *Cluster, prefix string) (last, stale Host, epoch uint64, phases []*kvclient.Result) {
	t.Helper()
	if _, err := c.StartPrimary(HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(HostB, HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, HostA, "protected", Protected); err != nil {
		t.Fatal(err)
	}
	p1 := restartPhase(t, ctx, c, prefix, kvclient.DefaultMix, 30)
	if err := c.Kill(HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, HostB, "live", Live); err != nil {
		t.Fatal(err)
	}
	p2 := restartPhase(t, ctx, c, prefix, kvclient.DefaultMix, 30)
	bs, err := c.Status(ctx, HostB)
	if err != nil {
		t.Fatal(err)
	}
	// Host a joins; host b dies as soon as a's daemon answers.
	if _, err := c.StartSecondary(HostA, HostB); err != nil {
		t.Fatal(err)
	}
	as, err := c.Await(ctx, HostA, "started", func(*Status) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(HostB); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed host b (primary at epoch %d) while host a was %s (synced %v)", bs.Epoch, as.Role, as.Synced)
	// Host a cannot go live without a whole checkpoint; if it had one and
	// took over, it is the last primary instead.
	time.Sleep(time.Second)
	last, stale = HostB, HostA
	if s, err := c.Status(ctx, HostA); err == nil && s.Role == "primary" {
		last, stale = HostA, HostB
	}
	if d := c.Daemon(HostA); d != nil {
		select {
		case <-d.Proc.Done():
		default:
			c.Kill(HostA)
		}
	}
	t.Logf("both hosts down; the last primary was host %s", last)
	return last, stale, bs.Epoch, []*kvclient.Result{p1, p2}
}

// TestE2ERestartAfterPlannedStop: the secondary is stopped, then the
// primary (SIGTERM each). Started as primary, the former secondary
// refuses and names the primary, which restarts at the next epoch by
// itself and is protected again by the other.
func TestE2ERestartAfterPlannedStop(t *testing.T) {
	c := newTestCluster(t, "pstop", ClusterConfig{Flags: restartFlags})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	prefix := restartPrefix()
	if _, err := c.StartPrimary(HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(HostB, HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, HostA, "protected", Protected); err != nil {
		t.Fatal(err)
	}
	p1 := restartPhase(t, ctx, c, prefix, kvclient.DefaultMix, 30)
	stop := func(h Host) {
		t.Helper()
		st, err := c.Daemon(h).Proc.Stop(daemonStopGrace)
		if err != nil || st == nil || !st.Success() {
			t.Fatalf("stopping host %s: %v %v:\n%s", h, st, err, c.Daemon(h).Proc.Tail(20))
		}
	}
	before, err := c.Status(ctx, HostA)
	if err != nil {
		t.Fatal(err)
	}
	stop(HostB)
	// Alone, the primary takes a new epoch and goes on serving.
	if _, err := c.Await(ctx, HostA, "alone at a new epoch", func(s *Status) bool {
		return s.Role == "primary" && !s.Protected && s.Epoch > before.Epoch
	}); err != nil {
		t.Fatal(err)
	}
	p2 := restartPhase(t, ctx, c, prefix, kvclient.DefaultMix, 20)
	as, err := c.Status(ctx, HostA)
	if err != nil {
		t.Fatal(err)
	}
	stop(HostA)
	refusedAsPrimary(t, ctx, c, HostB, HostA)
	restartAsPrimary(t, ctx, c, HostA, HostB, as.Epoch)
	final := restartPhase(t, ctx, c, prefix, kvclient.Mix{Get: 1}, 60)
	checkWritesPresent(t, final, p1, p2)
}
