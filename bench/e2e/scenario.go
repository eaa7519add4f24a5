package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
)

// Fault is what a run does to the pair in each round.
type Fault int

const (
	// KillPrimary SIGKILLs the primary's daemon; the secondary must take
	// over, and a new secondary is started on the killed host.
	KillPrimary Fault = iota
	// KillSecondary SIGKILLs the secondary; the primary must go on alone,
	// and a new secondary is started on the killed host.
	KillSecondary
	// CutLink cuts the link between the hosts on the switch: one of the
	// two wins the arbiter and serves, the other halts. The link is then
	// healed and the loser restarted as a secondary.
	CutLink
	// FreezePrimary stops the primary's daemon (SIGSTOP) for a time drawn
	// from RunConfig.Freeze, a little past the peer timeout, then lets it
	// run again (SIGCONT), as a host that stalls would: the secondary takes
	// over meanwhile, and the old primary wakes up deposed, its held
	// outputs released as far as it knows. One of the two halts (exit 3)
	// and is restarted as a secondary.
	FreezePrimary
	// IsolatePrimary cuts the primary's host off the network (its port on
	// the switch drops everything; the arbiter's directory stays shared):
	// the secondary must take over, and the isolated host must not win
	// the arbiter, however fast it asks. The isolation then ends, the old
	// primary halts (exit 3) and is restarted as a secondary.
	IsolatePrimary
	// SilencePrimary makes the primary's host fall silent at once, as one
	// that loses power or freezes does: its daemon is stopped (SIGSTOP)
	// and right after its port on the switch drops everything
	// (IsolateHost; the arbiter's directory stays shared), so nothing of
	// it reaches anybody: no reset, no stale frame, no request to the
	// arbiter. The secondary must take over on the silence alone. The
	// silent daemon is then killed (it never wakes), its port opened
	// again, and it is restarted as a secondary.
	SilencePrimary
	// Custom is a fault the caller makes: RunConfig.CustomFault applies
	// it and waits until the pair is protected again.
	Custom
)

func (f Fault) String() string {
	return [...]string{"kill the primary", "kill the secondary", "cut the link between the hosts", "freeze the primary", "isolate the primary's host", "silence the primary's host", "the test's own fault"}[f]
}

// CustomFault applies round i (from 1) of a Custom run to the pair whose
// primary and secondary are given, and returns once the pair is protected
// again: it sets r.At (the fault), r.Victim and r.Survivor (the primary
// after the round; the same host if the primary served on), and may set
// r.TakeOver. ctx is bounded by RunConfig.RoundTimeout.
type CustomFault func(ctx context.Context, c *Cluster, i int, r *Round, primary, secondary Host, say func(string, ...any)) error

// RunConfig describes one end-to-end run.
type RunConfig struct {
	Fault  Fault
	Rounds int
	// Settle is how long the protected pair serves load before each fault.
	Settle time.Duration
	// Load drives the kvstore guest from the client; Addr is filled in.
	Load kvclient.Config
	// RoundTimeout bounds each round (take-over and re-protection).
	RoundTimeout time.Duration
	// Progress, if set, receives one line per event and the load's
	// progress lines.
	Progress func(string)
	// LoadProgress, if set, receives the load's progress snapshots.
	LoadProgress func(kvclient.Progress)
	// Freeze is the range the stop of FreezePrimary is drawn from
	// (uniformly, [Freeze[0], Freeze[1]]).
	Freeze [2]time.Duration
	// StaleFrame makes every FreezePrimary meet the frame a deposed
	// primary may send when it wakes, whatever the primary does: as the
	// freeze ends the frozen host sends a frame as the VM (from its MAC)
	// to the client, and the switch moves the VM's address back to that
	// host's port, just after the secondary took over and announced it.
	StaleFrame bool
	// KeepPeerLink makes IsolatePrimary spare the link between the two
	// hosts: the primary loses the VM's network but not its secondary,
	// and must yield.
	KeepPeerLink bool
	// CustomFault makes each round of a Custom run.
	CustomFault CustomFault
}

// Round is what one fault did.
type Round struct {
	Fault    Fault
	Victim   Host // the host faulted (the loser, for a cut link)
	Survivor Host // the host that served on
	At       time.Time
	// Failover is what the client saw: from its last reply before the
	// fault to its first reply after (zero if none was pending).
	Failover time.Duration
	// TakeOver is from the fault to the survivor's daemon reporting
	// itself primary (zero if it already was).
	TakeOver time.Duration
	// Served is from the fault to the client's first reply from the new
	// primary: its first reply after the survivor went live (zero if
	// there was no take-over, or no reply came).
	Served time.Duration
	// SurvivorLog is the standard error of the survivor's daemon (its log
	// says when it lost its peer, asked the arbiter and went live).
	SurvivorLog string
	// Reprotected is from the fault to the survivor being protected by a
	// new secondary again.
	Reprotected time.Duration
	// InFlight counts the requests outstanding at the fault that were
	// answered only after it (the client resent them) or never.
	InFlight, NeverAnswered int
	// Frozen is how long FreezePrimary stopped the primary; Woke is when
	// it let it go on (SIGCONT), and VictimLog the frozen daemon's
	// standard error (its "released outputs" lines say when it released).
	Frozen    time.Duration
	Woke      time.Time
	VictimLog string
	// MaxGap is the client's longest silence (between two replies) from
	// the fault to the next round's fault, or to the end of the load: a
	// take-over that did not stick (the switch still sends the VM's
	// traffic to the old host) shows here, not in Failover.
	MaxGap time.Duration
	// JoinFrom and JoinTo bound the re-protection: from the new
	// secondary's start to the survivor reporting itself protected.
	// JoinGap is the client's longest silence that began within them:
	// the pause of the last, paused checkpoint increment shows here.
	JoinFrom, JoinTo time.Time
	JoinGap          time.Duration
	JoinGapAt        time.Time // when JoinGap began
	// What the client did during JoinGap, to tell the server's silence
	// from the client's own: JoinGapSent requests it first sent within
	// the gap, the longest time within it it sent nothing new
	// (JoinGapSendGap: near JoinGap when the client itself did not run),
	// and JoinGapResent of the replies that ended it that were answers
	// to a resend (the client's attempt timeout was in the silence).
	JoinGapSent, JoinGapResent int
	JoinGapSendGap             time.Duration
}

// Report is the outcome of a run.
type Report struct {
	Config RunConfig
	Rounds []Round
	Load   *kvclient.Result
	// Linearizable is nil when the client's history is linearizable.
	Linearizable error
	// Hold merges the output-hold latency of every primary of the run
	// (nanoseconds); SteadyHold is the last primary's over the last
	// settle, with no fault, checkpoint or re-protection in it.
	Hold, SteadyHold *hdrhistogram.Histogram
	// TransportRTT is a 64-byte round trip over the ftvm transport (mutual
	// TLS, the control lane on the daemons' transport) between the two
	// hosts, measured in the same run (nanoseconds); Transport names it.
	TransportRTT *hdrhistogram.Histogram
	Transport    string
	// LogBytes is what the log carried between the hosts (frames sent by
	// the primaries) over the load's duration.
	LogBytesPerSec float64
}

// Run starts a protected pair (primary on host a), drives load from the
// client, and applies cfg.Fault cfg.Rounds times, waiting each time for the
// service to go on and for the pair to be protected again.
func Run(ctx context.Context, c *Cluster, cfg RunConfig) (*Report, error) {
	say := func(format string, a ...any) {
		if cfg.Progress != nil {
			cfg.Progress(fmt.Sprintf(format, a...))
		}
	}
	if cfg.RoundTimeout == 0 {
		cfg.RoundTimeout = 30 * time.Second
	}
	rep := &Report{Config: cfg, Hold: newNsHistogram(), Transport: c.transportName()}
	var err error
	if rep.TransportRTT, err = MeasureTransportRTT(ctx, c, 2000); err != nil {
		return nil, fmt.Errorf("measuring the transport's round trip: %w", err)
	}
	say("transport round trip a<->b (64 B, TLS, control lane on %s): p50 %v p99 %v", c.transportName(), nsDur(rep.TransportRTT.ValueAtQuantile(50)), nsDur(rep.TransportRTT.ValueAtQuantile(99)))

	primary, secondary := HostA, HostB
	if _, err := c.StartPrimary(primary); err != nil {
		return nil, err
	}
	if _, err := c.StartSecondary(secondary, primary); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.RoundTimeout)
	_, err = c.Await(wctx, primary, "protected", Protected)
	cancel()
	if err != nil {
		return nil, err
	}
	say("primary on host %s, protected by host %s", primary, secondary)

	// The load runs in the client's namespace until the rounds are done.
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	lc := cfg.Load
	lc.Addr = net.JoinHostPort(VMAddr, "7000")
	lc.Progress = cfg.LoadProgress
	if lc.Duration == 0 {
		lc.Duration = 24 * time.Hour // until stopped
	}
	var loadRes *kvclient.Result
	var loadErr error
	var loadWG sync.WaitGroup
	loadWG.Add(1)
	go func() {
		defer loadWG.Done()
		loadErr = c.Topo.InNamespace(Client, func() error {
			var err error
			loadRes, err = kvclient.Run(loadCtx, lc)
			return err
		})
	}()
	wait := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	for i := 1; i <= cfg.Rounds; i++ {
		if err := wait(cfg.Settle); err != nil {
			return nil, err
		}
		r := Round{Fault: cfg.Fault}
		if err := c.collectHold(ctx, primary, rep.Hold); err != nil {
			return nil, err
		}
		if cfg.Fault == Custom {
			rctx, cancel := context.WithTimeout(ctx, cfg.RoundTimeout)
			err := cfg.CustomFault(rctx, c, i, &r, primary, secondary, say)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("round %d: %w", i, err)
			}
		} else if err := c.applyFault(ctx, cfg, i, &r, primary, secondary, say); err != nil {
			return nil, err
		}
		primary, secondary = r.Survivor, r.Victim
		rep.Rounds = append(rep.Rounds, r)
		say("round %d: host %s serves (take-over %v), protected again by host %s after %v",
			i, primary, r.TakeOver.Round(time.Microsecond), secondary, r.Reprotected.Round(time.Millisecond))
	}
	// The last settle also measures the log's bandwidth and the hold
	// latency under the load alone.
	before, err := c.Status(ctx, primary)
	if err != nil {
		return nil, err
	}
	holdBefore, err := c.holdSnapshot(ctx, primary)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := wait(max(cfg.Settle, steadyWindow)); err != nil {
		return nil, err
	}
	after, err := c.Status(ctx, primary)
	if err != nil {
		return nil, err
	}
	holdAfter, err := c.holdSnapshot(ctx, primary)
	if err != nil {
		return nil, err
	}
	rep.LogBytesPerSec = float64(after.Transport.BytesSent-before.Transport.BytesSent) / time.Since(t0).Seconds()
	if rep.SteadyHold, err = histogramSince(holdBefore, holdAfter); err != nil {
		return nil, fmt.Errorf("hold latency of host %s: %w", primary, err)
	}
	if err := c.collectHold(ctx, primary, rep.Hold); err != nil {
		return nil, err
	}
	stopLoad()
	loadWG.Wait()
	if loadErr != nil && !errors.Is(loadErr, context.Canceled) {
		return nil, fmt.Errorf("client load: %w", loadErr)
	}
	if loadRes == nil {
		return nil, errors.New("client load returned no result")
	}
	rep.Load = loadRes
	for i := range rep.Rounds {
		until := time.Now()
		if i+1 < len(rep.Rounds) {
			until = rep.Rounds[i+1].At
		}
		rep.Rounds[i].measureFromHistory(loadRes, until)
	}
	rep.Linearizable = linearize.Check(loadRes.History)
	return rep, nil
}

// applyFault applies one of the built-in faults in round i and waits out
// the round (recover).
func (c *Cluster) applyFault(ctx context.Context, cfg RunConfig, i int, r *Round, primary, secondary Host, say func(string, ...any)) error {
	switch cfg.Fault {
	case KillPrimary:
		r.Victim, r.Survivor = primary, secondary
		r.At = time.Now()
		if err := c.Kill(primary); err != nil {
			return err
		}
	case KillSecondary:
		r.Victim, r.Survivor = secondary, primary
		r.At = time.Now()
		if err := c.Kill(secondary); err != nil {
			return err
		}
	case CutLink:
		r.At = time.Now()
		if err := c.Topo.CutLink(ctx); err != nil {
			return err
		}
	case IsolatePrimary:
		r.Victim, r.Survivor = primary, secondary
		r.At = time.Now()
		var keep []Host
		if cfg.KeepPeerLink {
			keep = append(keep, secondary)
		}
		if err := c.Topo.IsolateHost(ctx, primary, keep...); err != nil {
			return err
		}
	case FreezePrimary:
		lo, hi := cfg.Freeze[0], cfg.Freeze[1]
		r.Frozen = lo
		if hi > lo {
			r.Frozen += rand.N(hi - lo + 1)
		}
		r.At = time.Now()
		if d := c.Daemon(primary); d != nil {
			r.VictimLog = d.Proc.StderrPath()
		}
		victim := primary
		wake := func() error {
			defer func() { r.Woke = time.Now() }()
			if !cfg.StaleFrame {
				return nil
			}
			mac, _ := net.ParseMAC(VMMAC)
			return c.Topo.SendFrameAs(victim, mac, HostMAC(Client))
		}
		if err := c.Freeze(primary, r.Frozen, wake); err != nil {
			return err
		}
	case SilencePrimary:
		r.Victim, r.Survivor = primary, secondary
		// The stop first, then the cut: the stop takes effect at once,
		// the cut somewhere inside an nft process's run (milliseconds,
		// more on a loaded machine), so silence begins at r.At only in
		// this order. Meanwhile the stopped host's kernel sends no
		// payload of the daemon's (a retransmission waits 200 ms at
		// least) and the VM, whose vCPUs are the daemon's threads, sends
		// nothing; the cut keeps it so until the daemon is dead: no
		// acknowledgement, no reset as it dies.
		r.At = time.Now()
		if err := c.Suspend(primary); err != nil {
			return err
		}
		if err := c.Topo.IsolateHost(ctx, primary); err != nil {
			return err
		}
		say("round %d: host %s stopped at %s and cut off %v later", i, primary, r.At.Format("15:04:05.000"), time.Since(r.At).Round(time.Microsecond))
	}
	say("round %d: %s at %s", i, cfg.Fault, r.At.Format("15:04:05.000"))
	rctx, cancel := context.WithTimeout(ctx, cfg.RoundTimeout)
	err := c.recover(rctx, r, primary, secondary, say)
	cancel()
	if err != nil {
		return fmt.Errorf("round %d (%s): %w", i, cfg.Fault, err)
	}
	return nil
}

// steadyWindow is the least time the last settle measures the steady
// state over.
const steadyWindow = time.Second

// recover waits out one round: the survivor serves, the victim comes back
// as a secondary and the pair is protected again.
func (c *Cluster) recover(ctx context.Context, r *Round, primary, secondary Host, say func(string, ...any)) error {
	switch r.Fault {
	case KillPrimary:
		s, err := c.Await(ctx, r.Survivor, "live", Live)
		if err != nil {
			return err
		}
		r.TakeOver = liveSince(s).Sub(r.At)
	case SilencePrimary:
		s, err := c.Await(ctx, r.Survivor, "live", Live)
		if err != nil {
			return fmt.Errorf("the secondary did not take over from the silent primary: %w", err)
		}
		r.TakeOver = liveSince(s).Sub(r.At)
		// A host that lost power does not come back as it was: the
		// stopped daemon dies without running again, and only then is
		// its port opened.
		if err := c.Kill(r.Victim); err != nil {
			return err
		}
		if err := c.Topo.RejoinHost(ctx); err != nil {
			return err
		}
		say("  host %s took over from the silent host %s, killed while stopped", r.Survivor, r.Victim)
	case IsolatePrimary:
		s, err := c.Await(ctx, r.Survivor, "live", Live)
		if err != nil {
			return fmt.Errorf("the secondary did not take over from the isolated primary: %w", err)
		}
		r.TakeOver = liveSince(s).Sub(r.At)
		if err := c.Topo.RejoinHost(ctx); err != nil {
			return err
		}
		if err := c.awaitHalt(ctx, r.Victim); err != nil {
			return err
		}
		say("  host %s took over from the isolated host %s, which halted once back", r.Survivor, r.Victim)
	case KillSecondary:
		// The primary notices the broken connection and goes on alone.
		if _, err := c.Await(ctx, r.Survivor, "unprotected", func(s *Status) bool { return Primary(s) && !s.Protected }); err != nil {
			return err
		}
	case CutLink, FreezePrimary:
		// Both sides suspect the other; the arbiter lets one go on, and
		// the other halts. Wait for the loser's daemon to exit.
		winner, loser, err := c.awaitPartitionOutcome(ctx, primary, secondary)
		if err != nil {
			return err
		}
		r.Survivor, r.Victim = winner, loser
		if winner != primary {
			s, err := c.Await(ctx, winner, "live", Live)
			if err != nil {
				return err
			}
			r.TakeOver = liveSince(s).Sub(r.At)
		}
		say("  %s: host %s won the arbiter, host %s halted", r.Fault, winner, loser)
		if r.Fault == CutLink {
			if err := c.Topo.HealLink(ctx); err != nil {
				return err
			}
		}
	}
	if d := c.Daemon(r.Survivor); d != nil {
		r.SurvivorLog = d.Proc.StderrPath()
	}
	return c.rejoin(ctx, r)
}

// rejoin starts the round's victim again as the survivor's secondary and
// waits until the pair is protected.
func (c *Cluster) rejoin(ctx context.Context, r *Round) error {
	r.JoinFrom = time.Now()
	if _, err := c.StartSecondary(r.Victim, r.Survivor); err != nil {
		return err
	}
	if _, err := c.Await(ctx, r.Survivor, "protected", Protected); err != nil {
		return err
	}
	r.JoinTo = time.Now()
	r.Reprotected = r.JoinTo.Sub(r.At)
	return nil
}

// awaitHalt waits for host h's daemon to exit halted (exit 3).
func (c *Cluster) awaitHalt(ctx context.Context, h Host) error {
	d := c.Daemon(h)
	select {
	case <-d.Proc.Done():
	case <-ctx.Done():
		return fmt.Errorf("%s did not halt: %w\n%s", d, ctx.Err(), d.Proc.Tail(20))
	}
	if st, _ := d.Proc.Wait(); st == nil || st.ExitCode() != 3 {
		return fmt.Errorf("%s exited with %v, want 3 (halted: another host is primary)\n%s", d, st, d.Proc.Tail(20))
	}
	return nil
}

// awaitPartitionOutcome waits until one daemon has exited (halted) while the
// other is primary.
func (c *Cluster) awaitPartitionOutcome(ctx context.Context, a, b Host) (winner, loser Host, err error) {
	for {
		for _, pair := range [][2]Host{{a, b}, {b, a}} {
			w, l := pair[0], pair[1]
			d := c.Daemon(l)
			select {
			case <-d.Proc.Done():
				s, err := c.Status(ctx, w)
				if err == nil && Primary(s) {
					st, _ := d.Proc.Wait()
					if st != nil && st.ExitCode() != 3 {
						return "", "", fmt.Errorf("%s exited with %v, want 3 (halted: another host is primary)\n%s", d, st, d.Proc.Tail(20))
					}
					return w, l, nil
				}
			default:
			}
		}
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("neither host halted after the link was cut: %w\n%s\n%s", ctx.Err(), c.Daemon(a).Proc.Tail(20), c.Daemon(b).Proc.Tail(20))
		case <-time.After(statusPollInterval):
		}
	}
}

func liveSince(s *Status) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s.LiveSince)
	if err != nil {
		return time.Time{}
	}
	return t
}

// collectHold merges host h's hold-latency histogram into into.
func (c *Cluster) collectHold(ctx context.Context, h Host, into *hdrhistogram.Histogram) error {
	hist, err := c.HoldHistogram(ctx, h)
	if err != nil {
		return fmt.Errorf("hold latency of host %s: %w", h, err)
	}
	into.Merge(hist)
	return nil
}

// measureFromHistory fills in what the client saw of the round, which
// lasted until until.
func (r *Round) measureFromHistory(res *kvclient.Result, until time.Time) {
	at := r.At.Sub(res.Origin).Nanoseconds()
	end := until.Sub(res.Origin).Nanoseconds()
	var completes []int64
	for _, op := range res.History {
		if op.Outcome != linearize.Unknown {
			completes = append(completes, op.Complete)
		}
		if op.Invoke < at {
			switch {
			case op.Outcome == linearize.Unknown:
				r.InFlight++
				r.NeverAnswered++
			case op.Complete > at:
				r.InFlight++
			}
		}
	}
	sort.Slice(completes, func(i, j int) bool { return completes[i] < completes[j] })
	k := sort.Search(len(completes), func(i int) bool { return completes[i] > at })
	if k > 0 && k < len(completes) {
		r.Failover = time.Duration(completes[k] - completes[k-1])
	}
	if r.TakeOver > 0 {
		// Nothing the new primary sends leaves before it is live (its
		// NIC's gate opens after), so a reply after that moment is its.
		live := at + r.TakeOver.Nanoseconds()
		if j := sort.Search(len(completes), func(i int) bool { return completes[i] > live }); j < len(completes) && completes[j] <= end {
			r.Served = time.Duration(completes[j] - at)
		}
	}
	// The silence the round began with counts from the last reply
	// before the fault; one still going on at the round's end counts to
	// that end (the next round's fault begins the rest of it).
	last := at
	if k > 0 {
		last = completes[k-1]
	}
	for j := k; j < len(completes) && completes[j] <= end; j++ {
		r.MaxGap = max(r.MaxGap, time.Duration(completes[j]-last))
		last = completes[j]
	}
	r.MaxGap = max(r.MaxGap, time.Duration(end-last))
	if !r.JoinFrom.IsZero() {
		from, to := r.JoinFrom.Sub(res.Origin).Nanoseconds(), r.JoinTo.Sub(res.Origin).Nanoseconds()
		for j := 1; j < len(completes); j++ {
			if g := time.Duration(completes[j] - completes[j-1]); completes[j-1] >= from && completes[j-1] <= to && g > r.JoinGap {
				r.JoinGap, r.JoinGapAt = g, res.Origin.Add(time.Duration(completes[j-1]))
			}
		}
		if r.JoinGap > 0 {
			r.measureJoinGap(res)
		}
	}
}

// measureJoinGap fills in what the client did during JoinGap.
func (r *Round) measureJoinGap(res *kvclient.Result) {
	lo := r.JoinGapAt.Sub(res.Origin).Nanoseconds()
	hi := lo + r.JoinGap.Nanoseconds()
	last := lo
	for _, op := range res.History { // in invoke order
		if op.Invoke > lo && op.Invoke < hi {
			r.JoinGapSent++
			r.JoinGapSendGap = max(r.JoinGapSendGap, time.Duration(op.Invoke-last))
			last = op.Invoke
		}
		if op.Outcome != linearize.Unknown && op.Complete == hi && op.Attempts > 1 {
			r.JoinGapResent++
		}
	}
	r.JoinGapSendGap = max(r.JoinGapSendGap, time.Duration(hi-last))
}

func newNsHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(1_000, 60_000_000_000, 3)
}

func nsDur(v int64) time.Duration { return time.Duration(v) }

// Summary renders the report as the table the demo ends with.
func (r *Report) Summary() string {
	var b strings.Builder
	st := r.Load.Stats
	fmt.Fprintf(&b, "%-34s %s\n", "fault", fmt.Sprintf("%s, %d times", r.Config.Fault, len(r.Rounds)))
	fmt.Fprintf(&b, "%-34s %d of %d sent (%.0f/s), %d never answered\n", "requests served", st.Served, st.Sent, float64(st.Served)/st.Elapsed.Seconds(), st.Unanswered)
	lin := "yes"
	if r.Linearizable != nil {
		lin = "NO: " + r.Linearizable.Error()
	}
	fmt.Fprintf(&b, "%-34s %s\n", "history linearizable", lin)
	var fo, to, sv, rp, gap, join []time.Duration
	inflight, never := 0, 0
	for _, x := range r.Rounds {
		fo = append(fo, x.Failover)
		gap = append(gap, x.MaxGap)
		join = append(join, x.JoinGap)
		if x.TakeOver > 0 {
			to = append(to, x.TakeOver)
		}
		if x.Served > 0 {
			sv = append(sv, x.Served)
		}
		rp = append(rp, x.Reprotected)
		inflight += x.InFlight
		never += x.NeverAnswered
	}
	fmt.Fprintf(&b, "%-34s %s\n", "failover seen by the client", spread(fo))
	if len(to) > 0 {
		fmt.Fprintf(&b, "%-34s %s\n", "take-over (fault to live)", spread(to))
	}
	if len(sv) > 0 {
		fmt.Fprintf(&b, "%-34s %s\n", "served again (fault to new reply)", spread(sv))
	}
	fmt.Fprintf(&b, "%-34s %s\n", "protected again after", spread(rp))
	fmt.Fprintf(&b, "%-34s %s\n", "longest silence in each round", spread(gap))
	fmt.Fprintf(&b, "%-34s %s\n", "longest silence during each join", spread(join))
	fmt.Fprintf(&b, "%-34s %d (resent by the client), %d never answered\n", "in flight at the faults", inflight, never)
	fmt.Fprintf(&b, "%-34s %v (the client's longest silence)\n", "largest gap between replies", st.MaxReplyGap.Round(10*time.Microsecond))
	for _, x := range []struct {
		name string
		h    *hdrhistogram.Histogram
	}{{"output-hold latency, whole run", r.Hold}, {"output-hold latency, steady load", r.SteadyHold}} {
		fmt.Fprintf(&b, "%-34s p50 %v  p99 %v  p99.9 %v  (%d outputs)\n", x.name, us(x.h.ValueAtQuantile(50)), us(x.h.ValueAtQuantile(99)), us(x.h.ValueAtQuantile(99.9)), x.h.TotalCount())
	}
	t := r.TransportRTT
	fmt.Fprintf(&b, "%-34s p50 %v  p99 %v  p99.9 %v\n", "transport round trip ("+r.Transport+", same run)", us(t.ValueAtQuantile(50)), us(t.ValueAtQuantile(99)), us(t.ValueAtQuantile(99.9)))
	if tp := t.ValueAtQuantile(99); tp > 0 {
		fmt.Fprintf(&b, "%-34s %.2fx (target <= 1.5x)\n", "steady hold p99 / transport p99", float64(r.SteadyHold.ValueAtQuantile(99))/float64(tp))
	}
	fmt.Fprintf(&b, "%-34s %.2f Mbit/s\n", "log bandwidth under this load", r.LogBytesPerSec*8/1e6)
	return b.String()
}

// spread renders p50, p99 and max of ds.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("p50 %v  p99 %v  max %v  (n=%d)", q(0.5).Round(time.Microsecond*10), q(0.99).Round(time.Microsecond*10), s[len(s)-1].Round(time.Microsecond*10), len(s))
}

func us(ns int64) time.Duration { return time.Duration(ns).Round(time.Microsecond) }

// transportName is what carries the daemons' control lane in this
// cluster, as the report names it.
func (c *Cluster) transportName() string {
	if c.cfg.Transport == "shm" {
		return "shm"
	}
	return "tcp"
}
