package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
	"github.com/ftvm/ftvm/internal/testutil"
)

// The end-to-end tests run the real thing: `ftvm primary` and `ftvm
// secondary` as separate processes in the two host namespaces, each with a
// KVM guest on its TAP, a client in the third namespace, and faults from
// outside (SIGKILL, a cut link). They need root, KVM, TUN and network
// namespaces; FTVM_REQUIRE turns a missing one into a failure.
//
// FTVM_E2E_KILLS sets the primary kills of TestE2EKillPrimary (default 20),
// FTVM_E2E_CLOCK_KILLS those of TestE2EClockFailovers (default 5),
// FTVM_E2E_RATE the client's requests per second (default 1000), and
// FTVM_E2E_KEEP a directory to keep the daemons' logs and files in.

var (
	buildOnce sync.Once
	ftvmBin   string
	buildErr  error
)

// repoRoot is the module's root, from this package's directory.
const repoRoot = "../.."

// ftvmBinary builds cmd/ftvm and the guests once per test binary.
func ftvmBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() { ftvmBin, buildErr = BuildFtvm(repoRoot) })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ftvmBin
}

func guestPath(name string) string {
	p, _ := filepath.Abs(filepath.Join(repoRoot, "vmm/guests/build", name))
	return p
}

// newTestCluster brings up the bed and a cluster for the calling test.
func newTestCluster(t *testing.T, name string, cfg ClusterConfig) *Cluster {
	t.Helper()
	testutil.Require(t, testutil.KVM)
	topo := upBed(t, name)
	cfg.Ftvm = ftvmBinary(t)
	cfg.WorkDir = keptDir(t, "work")
	if cfg.Guest == "" {
		cfg.Guest = guestPath("kvstore")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := NewCluster(ctx, topo, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range []Host{HostA, HostB} {
				if d := c.Daemon(h); d != nil {
					t.Logf("%s:\n%s", d, d.Proc.Tail(40))
				}
			}
		}
		c.Close()
	})
	return c
}

// testLoad is the client's load: steady, with quick resends so that the
// client's view of a failover is not its own retry timer. FTVM_E2E_RATE
// sets the requests per second (default 1000).
func testLoad(t *testing.T) kvclient.Config {
	rate := 1000.0
	if s := os.Getenv("FTVM_E2E_RATE"); s != "" {
		r, err := strconv.ParseFloat(s, 64)
		if err != nil || r <= 0 {
			t.Fatalf("FTVM_E2E_RATE=%q: want requests per second", s)
		}
		rate = r
	}
	return kvclient.Config{
		RatePerSec:  rate,
		Concurrency: 64,
		Retry:       kvclient.Retry{AttemptTimeout: 20 * time.Millisecond, AttemptsMax: 250},
	}
}

func runScenario(t *testing.T, c *Cluster, cfg RunConfig) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg.Progress = func(s string) { t.Log(s) }
	rep, err := Run(ctx, c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Load.Stats
	t.Logf("client: %d requests served of %d sent, %d never answered, %d retries; latency p50 %v p99 %v",
		st.Served, st.Sent, st.Unanswered, st.Retries, st.P50, st.P99)
	if rep.Linearizable != nil {
		t.Fatalf("the client's history is not linearizable: %v", rep.Linearizable)
	}
	for i, r := range rep.Rounds {
		if r.Failover == 0 {
			t.Fatalf("round %d: the client got no reply after the fault at %s", i+1, r.At.Format(time.StampMicro))
		}
	}
	if st.Served == 0 {
		t.Fatal("the client was never served")
	}
	t.Log(rep.Summary())
	return rep
}

func killRounds(t *testing.T) int {
	if s := os.Getenv("FTVM_E2E_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FTVM_E2E_KILLS=%q: want a positive number", s)
		}
		return n
	}
	return 20
}

// TestE2EKillPrimary SIGKILLs the primary again and again under load: each
// time the secondary must take over with no acknowledged write lost (the
// history stays linearizable), the client must be served again, and the
// killed host must come back as a secondary that protects the VM again.
func TestE2EKillPrimary(t *testing.T) {
	c := newTestCluster(t, "kill1", ClusterConfig{})
	rep := runScenario(t, c, RunConfig{Fault: KillPrimary, Rounds: killRounds(t), Settle: 300 * time.Millisecond, Load: testLoad(t)})
	for i, r := range rep.Rounds {
		if r.TakeOver <= 0 {
			t.Errorf("round %d: the survivor reported no take-over time (%v)", i+1, r.TakeOver)
		}
		t.Logf("round %d: longest silence during the join %v from %s (join %s to %s); within it the client sent %d requests, sent nothing for %v at most, and %d of the replies ending it answered a resend",
			i+1, r.JoinGap, r.JoinGapAt.Format("15:04:05.000"), r.JoinFrom.Format("15:04:05.000"), r.JoinTo.Format("15:04:05.000"),
			r.JoinGapSent, r.JoinGapSendGap.Round(10*time.Microsecond), r.JoinGapResent)
	}
}

// TestE2EKillPrimaryShm is TestE2EKillPrimary with the control lane on a
// shared-memory ring (--transport shm: the two hosts are namespaces of one
// machine, which share /dev/shm): both daemons must say they use it, the
// pair must survive the kills as over TCP, and the report sets the steady
// output-hold p99 beside the shm round trip of the same run.
func TestE2EKillPrimaryShm(t *testing.T) {
	c := newTestCluster(t, "shm", ClusterConfig{Transport: "shm"})
	rounds := min(killRounds(t), 5)
	rep := runScenario(t, c, RunConfig{Fault: KillPrimary, Rounds: rounds, Settle: 300 * time.Millisecond, Load: testLoad(t)})
	if rep.Transport != "shm" {
		t.Fatalf("the report measured the %s transport", rep.Transport)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, h := range []Host{HostA, HostB} {
		if c.Daemon(h) == nil {
			continue
		}
		s, err := c.Await(ctx, h, "the control lane on shm", func(s *Status) bool { return s.TransportInUse == "shm" })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("host %s (%s): transport %s: %s", h, s.Role, s.TransportInUse, s.TransportWhy)
	}
}

// TestE2EKillSecondary kills the secondary: the primary goes on alone, the
// client barely notices, and a new secondary protects the VM again.
func TestE2EKillSecondary(t *testing.T) {
	c := newTestCluster(t, "kill2", ClusterConfig{})
	runScenario(t, c, RunConfig{Fault: KillSecondary, Rounds: 3, Settle: 300 * time.Millisecond, Load: testLoad(t)})
}

// TestE2ECutLink cuts the link between the hosts (the client still reaches
// both): exactly one host must go on, the other must halt (exit 3) rather
// than serve too, and after the link heals the loser re-protects the VM.
func TestE2ECutLink(t *testing.T) {
	c := newTestCluster(t, "cut", ClusterConfig{})
	runScenario(t, c, RunConfig{Fault: CutLink, Rounds: 2, Settle: 300 * time.Millisecond, Load: testLoad(t)})
}

// TestE2EFreezePrimary stops the primary a little past the peer timeout
// (SIGSTOP for 110-130 ms) again and again: the secondary takes over, and
// the old primary wakes up with outputs it thinks released. Whatever it
// sends then carries the VM's MAC and moves the VM's address back to its
// port on the switch, so as each freeze ends the frozen host also sends
// one such frame itself (RunConfig.StaleFrame), whatever the daemon does.
// The take-over must stick anyway: the client's longest silence in each
// round stays under a second (not until its ARP entry expires, 13 to
// 39 s), the history stays linearizable, and a frozen primary that was
// replaced released nothing after it halted (what it releases between
// waking and asking the arbiter again is counted and shown). It reports
// the take-over (freeze to the survivor live) and the client's longest
// silence from the freeze (until it is served again for good) against the
// 20 ms target, as figures. FTVM_E2E_FREEZES sets the rounds (default 20),
// FTVM_E2E_FREEZE_FLAGS daemon flags to add (--heartbeat-timeout 12ms).
func TestE2EFreezePrimary(t *testing.T) {
	c := newTestCluster(t, "freeze", ClusterConfig{Flags: strings.Fields(os.Getenv("FTVM_E2E_FREEZE_FLAGS"))})
	rounds := envRounds(t, "FTVM_E2E_FREEZES", 20)
	rep := runScenario(t, c, RunConfig{Fault: FreezePrimary, Rounds: rounds, Settle: 300 * time.Millisecond, Load: testLoad(t),
		Freeze: [2]time.Duration{110 * time.Millisecond, 130 * time.Millisecond}, StaleFrame: true})
	var takeOvers, failovers []time.Duration
	lateReleases := 0
	for i, r := range rep.Rounds {
		t.Logf("round %d: frozen %v, survivor %s, take-over %v, client failover %v, longest silence %v", i+1, r.Frozen, r.Survivor, r.TakeOver, r.Failover, r.MaxGap)
		if r.MaxGap >= freezeSilenceMax {
			t.Errorf("round %d: the client heard nothing for %v after host %s was frozen for %v (survivor %s); want under %v",
				i+1, r.MaxGap, r.Victim, r.Frozen, r.Survivor, freezeSilenceMax)
		}
		if r.TakeOver <= 0 {
			continue // the frozen primary won: the secondary halted
		}
		takeOvers, failovers = append(takeOvers, r.TakeOver), append(failovers, r.MaxGap)
		last, noticed, asked, err := releasesAfterFreeze(r.VictimLog, r.At)
		if err != nil {
			t.Errorf("round %d: %v", i+1, err)
			continue
		}
		// What it performed as it woke had been decided before it
		// stopped (and a frame among it met the fence); once it asked
		// the arbiter again (which it does on seeing its stall) it must
		// release nothing more; if it never asked, nothing after it saw
		// its stall, or after it woke.
		limit, what := r.Woke, "woke"
		switch {
		case !asked.IsZero():
			limit, what = asked.Add(logResolution), "asked the arbiter again"
		case !noticed.IsZero():
			limit, what = noticed.Add(logResolution), "saw it had been stopped"
		}
		// A release the node decided before it stopped and performs
		// as it wakes (in one Ready with its new request to the
		// arbiter) is counted and shown, not failed: the fence keeps its
		// frames off the network, but not its console or disk writes
		// (the deposed host's disk is replaced when it joins again).
		// One after the host halted is a failure.
		if last.After(limit) {
			lateReleases++
			t.Logf("round %d: host %s, replaced while frozen, released an output at %s, %v after it %s (%s)",
				i+1, r.Victim, last.Format("15:04:05.000000"), last.Sub(limit), what, limit.Format("15:04:05.000000"))
		}
		if halted, err := haltedAt(r.VictimLog, r.At); err == nil && !halted.IsZero() && last.After(halted.Add(logResolution)) {
			t.Errorf("round %d: host %s released an output at %s, after it halted at %s", i+1, r.Victim, last.Format("15:04:05.000000"), halted.Format("15:04:05.000"))
		}
	}
	if len(takeOvers) == 0 {
		t.Fatalf("the secondary never took over in %d freezes: the freezes were too short to test a deposed primary", len(rep.Rounds))
	}
	within := 0
	for _, f := range failovers {
		if f <= freezeTargetServed {
			within++
		}
	}
	t.Logf("take-over (freeze to live) %s; client's longest silence from the freeze (served again) %s; within the %v target: %d of %d; rounds where the replaced primary still released after it asked the arbiter again: %d",
		spread(takeOvers), spread(failovers), freezeTargetServed, within, len(failovers), lateReleases)
}

// freezeTargetServed is issue 14's target for the client's failover on a
// silent primary (p99); reported, not asserted.
const freezeTargetServed = 20 * time.Millisecond

// releaseLine is the daemon's log line for a span of released outputs;
// deposedLine the ones a primary logs when it sees it was not run (as
// long as its secondary waits: it drops what it reads until it has asked
// the arbiter; or half the heartbeat timeout: it fences the VM's frames);
// logResolution the resolution of the lines' own time.
var (
	releaseLine   = regexp.MustCompile(`msg="released outputs" .*last_release=(\S+)`)
	haltLine      = regexp.MustCompile(`time=(\S+) level=WARN msg=halting`)
	askedLine     = regexp.MustCompile(`time=(\S+) level=INFO msg="asking the arbiter for an epoch"`)
	deposedLine   = regexp.MustCompile(`time=(\S+) level=WARN msg="this host (was not run for longer than its secondary waits|did not run for longer than half the peer timeout)`)
	logResolution = time.Millisecond
)

// haltedAt is when a daemon's log says it halted after at (zero if not).
func haltedAt(logPath string, at time.Time) (time.Time, error) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return time.Time{}, err
	}
	for _, m := range haltLine.FindAllSubmatch(b, -1) {
		if ts, err := time.Parse(time.RFC3339Nano, string(m[1])); err == nil && ts.After(at) {
			return ts, nil
		}
	}
	return time.Time{}, nil
}

// releasesAfterFreeze reads a frozen daemon's log: its latest release,
// and when, after the freeze at at, it first saw that it had been stopped
// and first asked the arbiter for an epoch (zero if it did not).
func releasesAfterFreeze(logPath string, at time.Time) (last, noticed, asked time.Time, err error) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return last, noticed, asked, fmt.Errorf("the frozen daemon's log: %w", err)
	}
	for _, m := range releaseLine.FindAllSubmatch(b, -1) {
		ts, err := time.Parse(time.RFC3339Nano, string(m[1]))
		if err != nil {
			return last, noticed, asked, fmt.Errorf("%s: release time %q: %w", logPath, m[1], err)
		}
		if ts.After(last) {
			last = ts
		}
	}
	if last.IsZero() {
		return last, noticed, asked, fmt.Errorf("%s says nothing of released outputs (a frozen primary that halted logs them)", logPath)
	}
	return last, firstLineAfter(b, deposedLine, at), firstLineAfter(b, askedLine, at), nil
}

// firstLineAfter is the time of the first line of log b that re matches
// (its first group the line's time) after at; zero if none.
func firstLineAfter(b []byte, re *regexp.Regexp, at time.Time) time.Time {
	for _, m := range re.FindAllSubmatch(b, -1) {
		if ts, err := time.Parse(time.RFC3339Nano, string(m[1])); err == nil && ts.After(at) {
			return ts
		}
	}
	return time.Time{}
}

// TestE2EIsolatePrimary cuts the primary's host off the network (the
// arbiter's directory stays shared) again and again: an isolated primary
// must never win the arbiter (the reachability rule, --reach-check: both
// daemons ping the client's address), so the secondary takes over within
// the peer timeout plus a second, every time, and the old primary halts
// once it is back. FTVM_E2E_ISOLATIONS sets the rounds (default 5).
func TestE2EIsolatePrimary(t *testing.T) {
	c := newTestCluster(t, "isolate", ClusterConfig{Flags: []string{"--reach-check", HostAddr(Client).String(), "--reach-link", LinkName}})
	rounds := envRounds(t, "FTVM_E2E_ISOLATIONS", 5)
	rep := runScenario(t, c, RunConfig{Fault: IsolatePrimary, Rounds: rounds, Settle: 300 * time.Millisecond, Load: testLoad(t)})
	for i, r := range rep.Rounds {
		t.Logf("round %d: host %s isolated, host %s took over after %v, longest silence %v", i+1, r.Victim, r.Survivor, r.TakeOver, r.MaxGap)
		if r.TakeOver <= 0 || r.TakeOver >= isolateTakeOverMax {
			t.Errorf("round %d: the secondary took over %v after the primary was isolated; want under %v (the peer timeout plus a second)", i+1, r.TakeOver, isolateTakeOverMax)
		}
	}
}

// TestE2EIsolatePrimaryKeepPeer cuts the primary's host off the clients'
// network but not off its secondary (as with a separate replication
// link): nothing times out, so the primary itself must yield
// (--reach-yield-after, 500 ms here), and the secondary takes over within
// the peer timeout plus a second. FTVM_E2E_ISOLATIONS sets the rounds
// (default 3).
func TestE2EIsolatePrimaryKeepPeer(t *testing.T) {
	c := newTestCluster(t, "isolate2", ClusterConfig{Flags: []string{"--reach-check", HostAddr(Client).String(), "--reach-link", LinkName, "--reach-yield-after", "500ms"}})
	rounds := envRounds(t, "FTVM_E2E_ISOLATIONS", 3)
	rep := runScenario(t, c, RunConfig{Fault: IsolatePrimary, KeepPeerLink: true, Rounds: rounds, Settle: 300 * time.Millisecond, Load: testLoad(t)})
	for i, r := range rep.Rounds {
		t.Logf("round %d: host %s cut off the clients, host %s took over after %v, longest silence %v", i+1, r.Victim, r.Survivor, r.TakeOver, r.MaxGap)
		if r.TakeOver <= 0 || r.TakeOver >= isolateTakeOverMax {
			t.Errorf("round %d: the secondary took over %v after the primary lost the clients' network; want under %v", i+1, r.TakeOver, isolateTakeOverMax)
		}
	}
}

// isolateTakeOverMax is the peer timeout (at most 120 ms) plus a second.
const isolateTakeOverMax = 120*time.Millisecond + time.Second

// freezeSilenceMax bounds the client's silence after a take-over.
const freezeSilenceMax = time.Second

func envRounds(t *testing.T, name string, def int) int {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", name, s)
		}
		return n
	}
	return def
}

var nondetLine = regexp.MustCompile(`^nondet: (\d+) tsc=`)

// TestE2ENondet runs the nondet guest, which reads the TSC without an exit,
// under ack-on-compare: the secondary diverges at every line and is
// resynchronised from a checkpoint; then the primary is killed. What the
// two consoles released together must be one execution: every line once
// (or repeated byte for byte at the take-over), in order, to the end.
func TestE2ENondet(t *testing.T) { runNondet(t, "nondet", "") }

// TestE2ENondetInput is TestE2ENondet with a guest whose replica diverges
// on an input request: before each line it asks the entropy device for a
// number of bytes taken from the TSC, so the replica's request has another
// length than the logged one. That is a divergence to resync like an
// output's, not a reason for the secondary to exit.
func TestE2ENondetInput(t *testing.T) {
	sec := runNondet(t, "nondeti", "diverge=input")
	if n := strings.Count(sec, "replica diverged on an input"); n == 0 {
		t.Fatal("the secondary never reported a divergence on an input")
	} else {
		t.Logf("the secondary resynced after %d divergences on an input", n)
	}
}

// runNondet runs the nondet guest with extra on its command line as
// TestE2ENondet describes; it returns the new primary's log.
func runNondet(t *testing.T, name, extra string) string {
	t.Helper()
	const count = 300
	c := newTestCluster(t, name, ClusterConfig{Guest: guestPath("nondet"), Cmdline: strings.TrimSpace(fmt.Sprintf("count=%d %s", count, extra)), Mode: "compare", NoNetwork: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The guest waits for its secondary: unprotected it would be done in
	// milliseconds, with nothing compared.
	pri, err := c.StartPrimary(HostA, "--wait-for-secondary")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(HostB, HostA); err != nil {
		t.Fatal(err)
	}
	// Kill the primary once the secondary has been resynchronised a few
	// times, incrementally (each resync an increment applied onto its VM,
	// not a full checkpoint into a new one), and part of the output is out.
	sec, err := c.Await(ctx, HostB, "resynchronised incrementally", func(s *Status) bool {
		return s.Stats.Restores >= 10 && s.Stats.Divergences >= 5 && s.Stats.IncrementalRestores >= 5
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before the kill: secondary %d divergences, %d restores (%d increments, %d refused)", sec.Stats.Divergences, sec.Stats.Restores, sec.Stats.IncrementalRestores, sec.Stats.RestoreFailures)
	if err := c.Kill(HostA); err != nil {
		t.Fatal(err)
	}
	d := c.Daemon(HostB)
	select {
	case <-d.Proc.Done():
	case <-ctx.Done():
		t.Fatalf("the new primary did not finish the guest: %v", ctx.Err())
	}
	if st, _ := d.Proc.Wait(); st == nil || !st.Success() {
		t.Fatalf("the new primary ended with %v:\n%s", st, d.Proc.Tail(30))
	}
	first, second := readLines(t, pri.Console), readLines(t, d.Console)
	seen := map[int]string{}
	next, repeats := 1, 0
	for _, l := range append(first, second...) {
		m := nondetLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		i, _ := strconv.Atoi(m[1])
		if prev, ok := seen[i]; ok {
			if prev != l {
				t.Fatalf("line %d was released twice, differently:\n%s\n%s", i, prev, l)
			}
			repeats++
			continue
		}
		if i != next {
			t.Fatalf("line %d released after line %d: lines %d.. lost", i, next-1, next)
		}
		seen[i] = l
		next++
	}
	if next != count+1 {
		t.Fatalf("%d of %d lines released", next-1, count)
	}
	if len(first) == 0 || len(second) == 0 {
		t.Fatalf("the kill came too late or too early: %d lines from the old primary, %d from the new", len(first), len(second))
	}
	t.Logf("%d lines from the old primary, %d from the new (%d repeated at the take-over)", len(first), len(second), repeats)
	var log strings.Builder
	for _, path := range []string{d.Proc.stdoutPath, d.Proc.stderrPath} {
		b, _ := os.ReadFile(path)
		log.Write(b)
	}
	return log.String()
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// TestE2EFreshPair replaces one pair by a new one on the other host, as an
// operator moving a VM would: the first pair serves the client from host
// b, then both its daemons stop, and a new pair (its own arbiter and disks)
// starts with its primary on host a. The switch still sends the VM's MAC
// to host b, and the client still has the VM's address in its ARP cache,
// so only the new primary's announcement can bring the client to it: the
// client's first reply must come within a second of the new primary
// serving, not when its ARP entry expires.
func TestE2EFreshPair(t *testing.T) {
	old := newTestCluster(t, "fresh", ClusterConfig{})
	ctx := testCtx(t, 2*time.Minute)
	serve := func(c *Cluster, d time.Duration) *kvclient.Result {
		t.Helper()
		lc := testLoad(t)
		lc.Addr = net.JoinHostPort(VMAddr, "7000")
		lc.Duration = d
		var res *kvclient.Result
		err := c.Topo.InNamespace(Client, func() error {
			var err error
			res, err = kvclient.Run(ctx, lc)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	pair := func(c *Cluster, primary, secondary Host) {
		t.Helper()
		if _, err := c.StartPrimary(primary); err != nil {
			t.Fatal(err)
		}
		if _, err := c.StartSecondary(secondary, primary); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Await(ctx, primary, "protected", Protected); err != nil {
			t.Fatal(err)
		}
	}
	pair(old, HostB, HostA)
	if res := serve(old, 500*time.Millisecond); res.Stats.Served == 0 {
		t.Fatal("the first pair never served the client")
	}
	old.Close()

	cfg := ClusterConfig{Ftvm: ftvmBinary(t), Guest: guestPath("kvstore"), WorkDir: t.TempDir()}
	c, err := NewCluster(ctx, old.Topo, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	pair(c, HostA, HostB)
	serving := time.Now()
	res := serve(c, 3*time.Second)
	first := time.Duration(-1)
	for _, op := range res.History {
		if op.Outcome != linearize.Unknown && (first < 0 || time.Duration(op.Complete) < first) {
			first = time.Duration(op.Complete)
		}
	}
	if first < 0 {
		t.Fatalf("the new pair never served the client in 3 s (%d requests sent): the switch still sends the VM's traffic to the old host", res.Stats.Sent)
	}
	wait := res.Origin.Add(first).Sub(serving)
	t.Logf("the client's first reply from the new pair came %v after it was protected (%d served of %d)", wait, res.Stats.Served, res.Stats.Sent)
	if wait >= freshReplyMax {
		t.Errorf("the client's first reply from the new pair came %v after it served; want under %v", wait, freshReplyMax)
	}
}

// freshReplyMax bounds how long a new pair takes to reach the client.
const freshReplyMax = time.Second
