package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"
)

// etcdLeaseTTL is the daemons' --etcd-lease-ttl in the etcd scenarios.
// 3 s, not etcd's shortest: with 2 s a primary once lost its lease while
// the killed etcd leader's successor was elected beside a loaded machine's
// other work, and the round that proves a leader's death changes nothing
// saw a take-over.
const etcdLeaseTTL = 3 * time.Second

var (
	etcdBuildOnce sync.Once
	etcdBin       string
	etcdBuildErr  error
)

// etcdBinary builds the etcd server once per test binary.
func etcdBinary(t *testing.T) string {
	t.Helper()
	etcdBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ftvm-e2e-etcd")
		if err != nil {
			etcdBuildErr = err
			return
		}
		etcdBin = filepath.Join(dir, "etcd")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		etcdBuildErr = BuildEtcd(ctx, repoRoot, etcdBin)
	})
	if etcdBuildErr != nil {
		t.Fatal(etcdBuildErr)
	}
	return etcdBin
}

// TestE2EEtcdArbiter runs a protected kvstore pair whose arbiter is a
// three-member etcd cluster in namespaces of its own, under client load,
// through four rounds:
//
//  1. the primary is killed: the secondary wins the next epoch, once the
//     dead primary's lease has run out at etcd;
//  2. the primary is cut off from etcd but not from its secondary or the
//     client: it must stop releasing within the lease's TTL and halt, and
//     the secondary takes over only after its last release;
//  3. the etcd leader is killed: the pair does not notice (same primary,
//     same epoch, still protected);
//  4. two etcd members are killed (no quorum): the primary halts within
//     the TTL, no host can be granted the VM, so nobody serves and
//     nothing is released, until the members are back: then the
//     secondary takes over.
//
// The client's whole history must be linearizable, and across every
// daemon of the run at most one host released outputs in any epoch, each
// epoch's releases all before the next epoch's first.
func TestE2EEtcdArbiter(t *testing.T) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bed := startEtcdBed(ctx, t, "etcd")
	topo, ec := bed.topo, bed.etcd
	c, err := NewCluster(ctx, topo, ClusterConfig{
		Ftvm: bed.ftvm, Guest: guestPath("kvstore"), WorkDir: keptDir(t, "work"),
		EtcdEndpoints: ec.Endpoints(),
		// This scenario is about the arbiter, not about noticing a silent
		// peer: with three etcd members beside the pair on two cores, a
		// 100 ms heartbeat timeout broke the pair by itself under load.
		Flags: []string{"--etcd-lease-ttl", etcdLeaseTTL.String(), "--heartbeat-timeout", "300ms"},
	})
	if err != nil {
		t.Fatal(err)
	}
	spans := &spanWatch{c: c, byGen: map[int]daemonSpans{}}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range []Host{HostA, HostB} {
				if d := c.Daemon(h); d != nil {
					t.Logf("%s:\n%s", d, d.Proc.Tail(40))
				}
			}
			t.Log(ec.Tail(10))
		}
		c.Close()
	})
	watchCtx, stopWatch := context.WithCancel(ctx)
	go spans.watch(watchCtx)
	setupDone := time.Now()

	var cutProof []string
	fault := func(ctx context.Context, c *Cluster, i int, r *Round, primary, secondary Host, say func(string, ...any)) error {
		switch i {
		case 1:
			r.Fault = KillPrimary
			if err := c.applyFault(ctx, RunConfig{Fault: KillPrimary, RoundTimeout: 30 * time.Second}, i, r, primary, secondary, say); err != nil {
				return err
			}
			// etcd lets the dead primary's lease run out first: its last
			// keep-alive was at most TTL/3 before the kill.
			if r.TakeOver < etcdLeaseTTL/2 {
				return fmt.Errorf("the secondary took over %v after the kill, before the dead primary's lease (TTL %v) can have run out", r.TakeOver, etcdLeaseTTL)
			}
			return nil
		case 2:
			r.Victim, r.Survivor, r.At = primary, secondary, time.Now()
			if err := c.Topo.CutFromEtcd(ctx, primary); err != nil {
				return err
			}
			// From here on no keep-alive of the primary reaches etcd: the
			// bound on its last release counts from now.
			cutAt := time.Now()
			say("round %d: host %s cut off from etcd at %s", i, primary, r.At.Format("15:04:05.000"))
			if err := c.awaitHalt(ctx, primary); err != nil {
				return err
			}
			halted := time.Now()
			s, err := c.Await(ctx, secondary, "live", Live)
			if err != nil {
				return err
			}
			r.TakeOver = liveSince(s).Sub(r.At)
			if err := c.Topo.HealEtcd(ctx); err != nil {
				return err
			}
			last, lastAt, err := c.lastReleaseWithin(primary, cutAt, etcdLeaseTTL)
			if err != nil {
				return err
			}
			if !liveSince(s).After(lastAt) {
				return fmt.Errorf("host %s went live at %s, before the cut-off primary's last release at %s", secondary, s.LiveSince, last.Last)
			}
			cutProof = append(cutProof,
				fmt.Sprintf("cut off from etcd %s", cutAt.UTC().Format("15:04:05.000000")),
				fmt.Sprintf("old primary's last release %s (epoch %d, +%v)", lastAt.UTC().Format("15:04:05.000000"), last.Epoch, lastAt.Sub(cutAt).Round(time.Millisecond)),
				fmt.Sprintf("old primary halted by %s (+%v)", halted.UTC().Format("15:04:05.000000"), halted.Sub(cutAt).Round(time.Millisecond)),
				fmt.Sprintf("secondary live %s (+%v)", liveSince(s).UTC().Format("15:04:05.000000"), liveSince(s).Sub(cutAt).Round(time.Millisecond)))
			say("  %s", cutProof)
			return c.rejoin(ctx, r)
		case 3:
			leader, err := ec.Leader(ctx)
			if err != nil {
				return err
			}
			before, err := c.Status(ctx, primary)
			if err != nil {
				return err
			}
			// ftvm status shows the lease the primary serves under.
			if a := before.Arbiter; a.Kind != "etcd" || !a.LeaseHeld || a.LeaseLeft <= 0 || a.LeaseLeft > a.LeaseTTL || a.LeaseTTL != etcdLeaseTTL.Seconds() {
				return fmt.Errorf("the primary's status shows the arbiter as %+v; want etcd, a lease held with 0 < left <= TTL %v", a, etcdLeaseTTL)
			}
			r.Victim, r.Survivor, r.At = secondary, primary, time.Now()
			if err := ec.Kill(leader); err != nil {
				return err
			}
			say("round %d: etcd leader %s killed at %s", i, leader, r.At.Format("15:04:05.000"))
			time.Sleep(2 * etcdLeaseTTL)
			after, err := c.Status(ctx, primary)
			if err != nil {
				return fmt.Errorf("the primary after the etcd leader died: %w", err)
			}
			if !Protected(after) || after.Epoch != before.Epoch {
				return fmt.Errorf("with one etcd member dead the pair changed: primary %+v before, %+v after", before, after)
			}
			if err := ec.Restart(leader); err != nil {
				return err
			}
			return ec.AwaitHealthy(ctx, len(EtcdMembers))
		case 4:
			leader, err := ec.Leader(ctx)
			if err != nil {
				return err
			}
			var dead []Host
			for _, m := range EtcdMembers {
				if m != leader && len(dead) < 2 {
					dead = append(dead, m)
				}
			}
			r.Victim, r.Survivor, r.At = primary, secondary, time.Now()
			for _, m := range dead {
				if err := ec.Kill(m); err != nil {
					return err
				}
			}
			// Both are dead now: no keep-alive is answered from here on.
			quorumLost := time.Now()
			say("round %d: etcd members %v killed at %s: no quorum", i, dead, r.At.Format("15:04:05.000"))
			if err := c.awaitHalt(ctx, primary); err != nil {
				return err
			}
			// The leader left alone answers keep-alives until it steps
			// down (etcd's LeaseRenew trusts a leader that still ticks),
			// which raft's quorum check does between one and two election
			// timeouts after it last heard a quorum: the lease runs from
			// the last keep-alive answered. (A leader elected later
			// extends every lease by an election timeout, so etcd never
			// lets the lease go before this host's count.)
			_, lastAt, err := c.lastReleaseWithin(primary, quorumLost, etcdLeaseTTL+(2*etcdElectionMs+etcdHeartbeatMs)*time.Millisecond)
			if err != nil {
				return err
			}
			say("  host %s released last %v after the quorum was lost, and halted", primary, lastAt.Sub(quorumLost).Round(time.Millisecond))
			// Without a quorum nobody may be granted the VM.
			time.Sleep(etcdLeaseTTL)
			if s, err := c.Status(ctx, secondary); err != nil || s.Role == "primary" {
				return fmt.Errorf("without an etcd quorum host %s became %+v (%v)", secondary, s, err)
			}
			healAt := time.Now()
			for _, m := range dead {
				if err := ec.Restart(m); err != nil {
					return err
				}
			}
			if err := ec.AwaitHealthy(ctx, len(EtcdMembers)); err != nil {
				return err
			}
			s, err := c.Await(ctx, secondary, "live", Live)
			if err != nil {
				return err
			}
			r.TakeOver = liveSince(s).Sub(r.At)
			say("  quorum back at %s; host %s live %v after it", healAt.Format("15:04:05.000"), secondary, liveSince(s).Sub(healAt).Round(time.Millisecond))
			return c.rejoin(ctx, r)
		}
		return fmt.Errorf("no round %d", i)
	}
	rep := runScenario(t, c, RunConfig{Fault: Custom, CustomFault: fault, Rounds: 4, Settle: 300 * time.Millisecond,
		Load: testLoad(t), RoundTimeout: time.Minute})
	stopWatch()
	for i, r := range rep.Rounds {
		t.Logf("round %d (%s): take-over %v, protected again %v, client's failover %v", i+1, r.Fault, r.TakeOver.Round(time.Millisecond), r.Reprotected.Round(time.Millisecond), r.Failover.Round(time.Millisecond))
	}
	t.Logf("cut-off proof: %v", cutProof)
	if err := spans.check(); err != nil {
		t.Fatal(err)
	}
	t.Logf("set-up (bed, etcd, builds) %v; the scenario %v", setupDone.Sub(began).Round(time.Millisecond), time.Since(setupDone).Round(time.Millisecond))
}

// lastReleaseWithin reads the release spans host h's daemon logged as it
// halted, and checks that its last release came no later than bound after
// its link to etcd failed at cut.
func (c *Cluster) lastReleaseWithin(h Host, cut time.Time, bound time.Duration) (releaseSpan, time.Time, error) {
	spans, err := spansFromLog(c.Daemon(h).Proc.StderrPath())
	if err != nil {
		return releaseSpan{}, time.Time{}, err
	}
	if len(spans) == 0 {
		return releaseSpan{}, time.Time{}, fmt.Errorf("host %s logged no releases before it halted", h)
	}
	last := spans[len(spans)-1]
	lastAt, err := time.Parse(time.RFC3339Nano, last.Last)
	if err != nil {
		return last, lastAt, fmt.Errorf("host %s: %w", h, err)
	}
	if lastAt.After(cut.Add(bound)) {
		return last, lastAt, fmt.Errorf("host %s released until %s, more than %v (lease TTL %v) after it lost etcd at %s", h, last.Last, bound, etcdLeaseTTL, cut.UTC().Format(time.RFC3339Nano))
	}
	return last, lastAt, nil
}

// daemonSpans is what one daemon said it released, per epoch.
type daemonSpans struct {
	host  Host
	spans []releaseSpan
}

// releaseSpan is cmd/ftvm's: one epoch's releases on one host.
type releaseSpan struct {
	Epoch uint64 `json:"epoch"`
	Fence uint64 `json:"fence"`
	First string `json:"first"`
	Last  string `json:"last"`
	Count uint64 `json:"count"`
}

// spanWatch collects every daemon's release spans: from its status while
// it runs, and from its log once it has exited (a daemon logs them all as
// it stops; one killed leaves what its status said last).
type spanWatch struct {
	c     *Cluster
	mu    sync.Mutex
	byGen map[int]daemonSpans
	procs map[int]*Daemon
}

func (w *spanWatch) watch(ctx context.Context) {
	for {
		for _, h := range []Host{HostA, HostB} {
			d := w.c.Daemon(h)
			if d == nil {
				continue
			}
			var s struct {
				Releases []releaseSpan `json:"releases"`
			}
			if err := w.c.control(ctx, h, "status", &s); err != nil {
				continue
			}
			w.mu.Lock()
			w.byGen[d.Gen] = daemonSpans{host: h, spans: s.Releases}
			if w.procs == nil {
				w.procs = map[int]*Daemon{}
			}
			w.procs[d.Gen] = d
			w.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// check holds every span against the others: one host per epoch, and
// each epoch's last release before the next epoch's first.
func (w *spanWatch) check() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	type at struct {
		host        Host
		gen         int
		first, last time.Time
		span        releaseSpan
	}
	var all []at
	for gen, ds := range w.byGen {
		spans := ds.spans
		if d := w.procs[gen]; d != nil {
			select {
			case <-d.Proc.Done():
				if logged, err := spansFromLog(d.Proc.StderrPath()); err == nil && len(logged) > 0 {
					spans = logged
				}
			default:
			}
		}
		for _, sp := range spans {
			f, err1 := time.Parse(time.RFC3339Nano, sp.First)
			l, err2 := time.Parse(time.RFC3339Nano, sp.Last)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("daemon #%d on %s: span %+v does not parse", gen, ds.host, sp)
			}
			all = append(all, at{host: ds.host, gen: gen, first: f, last: l, span: sp})
		}
	}
	if len(all) < 3 {
		return fmt.Errorf("only %d release spans seen across the run: %+v", len(all), all)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].span.Epoch < all[j].span.Epoch })
	for i := 1; i < len(all); i++ {
		p, q := all[i-1], all[i]
		if p.span.Epoch == q.span.Epoch {
			return fmt.Errorf("epoch %d was released in by daemon #%d on host %s and daemon #%d on host %s", p.span.Epoch, p.gen, p.host, q.gen, q.host)
		}
		if !p.last.Before(q.first) {
			return fmt.Errorf("epoch %d's last release (host %s, %s) is not before epoch %d's first (host %s, %s)", p.span.Epoch, p.host, p.span.Last, q.span.Epoch, q.host, q.span.First)
		}
	}
	return nil
}

// spansFromLog reads the "released outputs" lines a daemon logs as it
// stops (slog's text format).
func spansFromLog(path string) ([]releaseSpan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []releaseSpan
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := releasedLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ep, _ := strconv.ParseUint(m[1], 10, 64)
		fe, _ := strconv.ParseUint(m[2], 10, 64)
		n, _ := strconv.ParseUint(m[5], 10, 64)
		out = append(out, releaseSpan{Epoch: ep, Fence: fe, First: m[3], Last: m[4], Count: n})
	}
	return out, sc.Err()
}

var releasedLine = regexp.MustCompile(`msg="released outputs" .*epoch=(\d+) fence=(\d+) first_release=(\S+) last_release=(\S+) outputs=(\d+)`)
