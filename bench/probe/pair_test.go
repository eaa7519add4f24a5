package probe

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/ftvm/ftvm/bench/e2e"
	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/internal/testutil"
)

// plantedHoldDelayEnv is agent.PlantedHoldDelayEnv (defined only under
// the ftvm_planted_delay tag, which this package is not built with).
const plantedHoldDelayEnv = "FTVM_PLANTED_HOLD_DELAY"

// gratuitousARPsMax is how many gratuitous ARPs a daemon sends once it
// serves (cmd/ftvm/daemon_net.go).
const gratuitousARPsMax = 9

// medianSamplesMin is the fewest samples a stage's median is compared on.
const medianSamplesMin = 50

// bed is a test bed (bench/e2e) for the probe's tests.
type bed struct {
	topo *e2e.Topology
	bin  string
	n    int
}

func newBed(t testing.TB, name string) *bed {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.BPF, testutil.KVM, testutil.Netns, testutil.TUN)
	if err := e2e.CheckTools(); err != nil {
		testutil.SkipMissing(t, fmt.Errorf("the test bed's tools are missing: %v", err), testutil.Netns)
	}
	bin := ftvmBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topo, err := e2e.Up(ctx, "ftvmt-"+name, e2e.WithLogDir(filepath.Join(t.TempDir(), "logs")))
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	return &bed{topo: topo, bin: bin}
}

// pair is a protected primary (host a) and its secondary (host b).
type pair struct {
	c             *e2e.Cluster
	primary, peer int                     // their process IDs
	rtt           *hdrhistogram.Histogram // the transport's round trip between the hosts, measured first (ns)
}

// startPair starts a fresh pair on the bed; env is set in the daemons'
// environment for their start.
func (b *bed) startPair(t testing.TB, env map[string]string) *pair {
	t.Helper()
	for k, v := range env {
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		if had {
			defer os.Setenv(k, old)
		} else {
			defer os.Unsetenv(k)
		}
	}
	b.n++
	work := filepath.Join(b.topo.LogDir(), fmt.Sprintf("work%d", b.n))
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The probe is checked, not failover: the pair runs in the unit run
	// beside every other package's tests under -race, where a 50 ms
	// heartbeat timeout broke it by itself, so it gets 300 ms, as the
	// e2e scenarios that are not about detection do.
	c, err := e2e.NewCluster(ctx, b.topo, e2e.ClusterConfig{Ftvm: b.bin, Guest: guestPath("kvstore"), WorkDir: work,
		Flags: []string{"--heartbeat-timeout", "300ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range []e2e.Host{e2e.HostA, e2e.HostB} {
				if d := c.Daemon(h); d != nil {
					t.Logf("%s:\n%s", d, d.Proc.Tail(30))
				}
			}
		}
		c.Close()
	})
	rtt, err := e2e.MeasureTransportRTT(ctx, c, 2000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartPrimary(e2e.HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(e2e.HostB, e2e.HostA); err != nil {
		t.Fatal(err)
	}
	st, err := c.Await(ctx, e2e.HostA, "protected", e2e.Protected)
	if err != nil {
		t.Fatal(err)
	}
	sst, err := c.Status(ctx, e2e.HostB)
	if err != nil {
		t.Fatal(err)
	}
	return &pair{c: c, primary: st.PID, peer: sst.PID, rtt: rtt}
}

// load runs the client's load against the pair's VM.
func (p *pair) load(t testing.TB, cfg kvclient.Config) *kvclient.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration+60*time.Second)
	defer cancel()
	cfg.Addr = net.JoinHostPort(e2e.VMAddr, "7000")
	if cfg.Retry == (kvclient.Retry{}) {
		cfg.Retry = kvclient.Retry{AttemptTimeout: 50 * time.Millisecond, AttemptsMax: 100}
	}
	var res *kvclient.Result
	err := p.c.Topo.InNamespace(e2e.Client, func() error {
		var err error
		res, err = kvclient.Run(ctx, cfg)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.Served == 0 {
		t.Fatal("the client was never served")
	}
	return res
}

// quiet waits until the primary holds no output and has released none
// between two of the probe's snapshots, and returns the second snapshot
// with the daemon's status and hold histogram (ns) read between them.
func (p *pair) quiet(t testing.TB, pr *Probe) (*Snapshot, *e2e.Status, *hdrhistogram.Snapshot) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		before, err := pr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.c.Status(ctx, e2e.HostA)
		if err != nil {
			t.Fatal(err)
		}
		h, err := p.c.HoldHistogram(ctx, e2e.HostA)
		if err != nil {
			t.Fatal(err)
		}
		after, err := pr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if st.Held == 0 && before.Counters[CounterReleased] == after.Counters[CounterReleased] &&
			before.Counters[CounterTAPWrites] == after.Counters[CounterTAPWrites] {
			if !st.Protected {
				t.Fatalf("the primary is not protected: %+v", st)
			}
			return after, st, h.Export()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the primary never went quiet: %d outputs held", st.Held)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// run is one probed load: what the probe saw and what the daemon said.
type run struct {
	probe    *Snapshot
	daemon   *hdrhistogram.Histogram // hold, ns, over the load
	released uint64                  // the daemon's count of released outputs, over the load
	client   kvclient.Stats
}

func (p *pair) probedLoad(t testing.TB, cfg kvclient.Config) run {
	t.Helper()
	pr, err := Attach(Config{PID: p.primary, PeerPID: p.peer})
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	s0, st0, h0 := p.quiet(t, pr)
	res := p.load(t, cfg)
	s1, st1, h1 := p.quiet(t, pr)
	d := s1.Since(s0)
	r := run{probe: d, daemon: histogramDiff(t, h0, h1), released: st1.Stats.Released - st0.Stats.Released, client: res.Stats}
	var tb bytesWriter
	d.Report(Config{PID: p.primary, PeerPID: p.peer}, cfg.Duration).WriteTable(&tb)
	t.Logf("%d requests served of %d; the probe saw:\n%s", res.Stats.Served, res.Stats.Sent, tb)
	t.Logf("the daemon's own hold: p50 %v p99 %v p99.9 %v (n=%d)", ns(r.daemon.ValueAtQuantile(50)), ns(r.daemon.ValueAtQuantile(99)), ns(r.daemon.ValueAtQuantile(99.9)), r.daemon.TotalCount())
	return r
}

type bytesWriter []byte

func (b *bytesWriter) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }
func (b bytesWriter) String() string               { return string(b) }

func ns(v int64) time.Duration { return time.Duration(v) }

func histogramDiff(t testing.TB, before, after *hdrhistogram.Snapshot) *hdrhistogram.Histogram {
	t.Helper()
	d := *after
	d.Counts = make([]int64, len(after.Counts))
	for i := range d.Counts {
		d.Counts[i] = after.Counts[i] - before.Counts[i]
		if d.Counts[i] < 0 {
			t.Fatal("the daemon's hold histogram shrank (another daemon?)")
		}
	}
	return hdrhistogram.Import(&d)
}

// steadyLoad is the load the probe is checked under: open loop, well
// below saturation.
func steadyLoad(rate float64, d time.Duration) kvclient.Config {
	return kvclient.Config{RatePerSec: rate, Concurrency: 32, Duration: d}
}

// TestProbeAgainstDaemonPair loads the real programs against a real
// primary and secondary under client load, and checks the probe against
// the daemon's own account: it saw every output the daemon released, and
// its hold histogram agrees with the daemon's. Then, on a fresh pair
// whose vCPU thread sleeps between each output's exit and its hold (a
// delay planted by a test-only build tag), the delay shows in the
// exit→held stage and in no other stage of the path.
func TestProbeAgainstDaemonPair(t *testing.T) {
	b := newBed(t, "probe")
	const rate, dur = 100, 4 * time.Second

	p := b.startPair(t, nil)
	base := p.probedLoad(t, steadyLoad(rate, dur))
	p.c.Close() // the next pair needs the TAPs
	c := base.probe.Counters
	if c[CounterReleased] != base.released {
		t.Errorf("the daemon released %d outputs; the probe saw %d released", base.released, c[CounterReleased])
	}
	if c[CounterMatched] != c[CounterReleased] || c[CounterHeld] != c[CounterReleased] {
		t.Errorf("the probe saw %d outputs held and %d released, of which %d it had seen held: every release must match a hold", c[CounterHeld], c[CounterReleased], c[CounterMatched])
	}
	probeHold := base.probe.Stage(StageHold)
	if probeHold.TotalCount() != base.daemon.TotalCount() {
		t.Errorf("the probe timed %d holds, the daemon %d", probeHold.TotalCount(), base.daemon.TotalCount())
	}
	// The probe's clock starts a uprobe after the daemon's and stops a
	// uprobe after it (the daemon reads the time once before a batch of
	// releases, the probe at each): a few µs apart at most, on top of
	// the kernel's bucket width (the folded value is within 6.25% of
	// the kernel's).
	// A quantile's neighbour in rank, too, at the tail: p99 of some 600
	// holds is the 6th longest, and the two clocks' few µs can move a
	// hold a rank or two there, while the 7th longest may be far shorter
	// (a CI run: the probe's p99 4.46 ms, the daemon's 3.68 ms). So the
	// probe's quantile q must lie within 15% + 20 µs of the daemon's
	// quantile q, or of a value the daemon has within slack ranks of it.
	for _, c := range []struct{ q, slack float64 }{{50, 2}, {90, 1}, {99, 0.5}} {
		got := float64(probeHold.ValueAtQuantile(c.q))
		lo := float64(base.daemon.ValueAtQuantile(c.q - c.slack))
		hi := float64(base.daemon.ValueAtQuantile(min(100, c.q+c.slack)))
		if got < lo-(0.15*lo+20e3) || got > hi+0.15*hi+20e3 {
			t.Errorf("hold p%v: the probe says %v, the daemon %v (p%v %v, p%v %v)", c.q, ns(int64(got)),
				ns(base.daemon.ValueAtQuantile(c.q)), c.q-c.slack, ns(int64(lo)), min(100, c.q+c.slack), ns(int64(hi)))
		}
	}
	// Each reply the client got is a released frame written into the
	// TAP; the daemon's own gratuitous ARPs (at 0.05 to 4 s after it
	// starts serving) are written too, matched to no release.
	if m, w := c[CounterTAPMatched], c[CounterTAPWrites]; m < base.client.Served || w-m > gratuitousARPsMax {
		t.Errorf("%d frames written into the TAP, %d of them matched to a release, for %d replies the client got", w, m, base.client.Served)
	}
	for _, st := range []Stage{StageExitHeld, StageHeldAck, StageAckRelease, StageSendAck, StageReleaseTAP, StagePeerTurnaround, StageToPeer, StageFromPeer, StageReadAck, StageRunqVCPU, StageRunqReader} {
		if base.probe.Stage(st).TotalCount() == 0 {
			t.Errorf("stage %s saw nothing", st)
		}
	}

	// The planted delay is a sleep on the vCPU thread between an
	// output's exit and its hold: only its own guest waits, and the
	// daemon's hold (which starts after it) cannot see it.
	const delay = time.Millisecond
	planted := b.startPair(t, map[string]string{plantedHoldDelayEnv: delay.String()}).probedLoad(t, steadyLoad(rate, dur))
	p50 := func(r run, st Stage) time.Duration { return ns(r.probe.Stage(st).ValueAtQuantile(50)) }
	if got := p50(planted, StageExitHeld); got < delay*9/10 {
		t.Errorf("with %v planted before each hold, exit→held p50 is %v (%v without)", delay, got, p50(base, StageExitHeld))
	}
	// With the delay the acknowledgement an output waits for has mostly
	// come back by its hold (it is released at once): a stage left with
	// too few outputs to have a median is not compared.
	for _, st := range []Stage{StageHold, StageHeldAck, StageAckRelease, StageSendAck, StageReleaseTAP, StagePeerTurnaround, StageToPeer, StageFromPeer, StageReadAck} {
		if n := min(planted.probe.Stage(st).TotalCount(), base.probe.Stage(st).TotalCount()); n < medianSamplesMin {
			t.Logf("%s: %d outputs in one of the runs, too few to compare", st, n)
			continue
		}
		if got, was := p50(planted, st), p50(base, st); got-was > delay/2 {
			t.Errorf("with %v planted on exit→held, %s p50 went from %v to %v", delay, st, was, got)
		}
	}
}
