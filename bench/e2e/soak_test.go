package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
)

// TestE2ESteadyNoSpuriousFailover runs a protected pair under steady
// client load (both VMs busy: the primary's serves, the secondary's
// replays) with the default failure detection, and requires that nothing
// fails over: the primary stays primary in epoch 1, the secondary stays in
// step, no daemon exits, and no watchdog declares its peer dead. It
// reports what the watchdogs saw (the silences they counted and their own
// gaps) beside what a ticker in this process saw of its own lateness and
// the machine's steal time over the run, and beside what a pinned
// real-time thread per CPU of this process saw of the machine's own stalls
// (startRealtimeProbe), so that a silence can be told from a host that was
// not run. FTVM_E2E_SOAK sets the duration (default
// 60s; the target run is 10m), FTVM_E2E_SOAK_FLAGS daemon flags to add
// (to compare settings).
func TestE2ESteadyNoSpuriousFailover(t *testing.T) {
	dur := 60 * time.Second
	if s := os.Getenv("FTVM_E2E_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("FTVM_E2E_SOAK=%q: want a duration (10m)", s)
		}
		dur = d
	}
	c := newTestCluster(t, "soak", ClusterConfig{Flags: strings.Fields(os.Getenv("FTVM_E2E_SOAK_FLAGS"))})
	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Minute)
	defer cancel()
	if _, err := c.StartPrimary(HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(HostB, HostA); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := c.Await(wctx, HostA, "protected", Protected)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}

	selfLate := startLatenessTicker(time.Millisecond)
	machine := startRealtimeProbe()
	steal0, err := readSteal()
	if err != nil {
		t.Fatal(err)
	}
	lc := testLoad(t)
	lc.Addr = net.JoinHostPort(VMAddr, "7000")
	lc.Duration = dur
	var res *kvclient.Result
	var loadErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		loadErr = c.Topo.InNamespace(Client, func() error {
			var err error
			res, err = kvclient.Run(ctx, lc)
			return err
		})
	}()
	// Watch the pair while the load runs: a failover shows as a new
	// epoch, a role change, a lost protection or a daemon that exited.
	failovers := []string{}
	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) && len(failovers) == 0 {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		for _, h := range []Host{HostA, HostB} {
			d := c.Daemon(h)
			select {
			case <-d.Proc.Done():
				failovers = append(failovers, fmt.Sprintf("%s exited: %v\n%s", d, d.Proc, d.Proc.Tail(20)))
				continue
			default:
			}
			s, err := c.Status(ctx, h)
			if err != nil {
				continue // a busy daemon may miss one poll; its exit is caught above
			}
			want := "primary"
			if h == HostB {
				want = "secondary"
			}
			if s.Role != want || s.Epoch != 1 || h == HostA && !s.Protected && !s.Syncing {
				failovers = append(failovers, fmt.Sprintf("host %s: role %s epoch %d protected %v (want %s in epoch 1, protected)", h, s.Role, s.Epoch, s.Protected, want))
			}
		}
	}
	wg.Wait()
	steal1, _ := readSteal()
	late := selfLate()
	stalls := machine()
	for _, h := range []Host{HostA, HostB} {
		s, err := c.Status(ctx, h)
		if err != nil {
			t.Logf("host %s: no status: %v", h, err)
			continue
		}
		lv := s.Liveness
		if h == HostA {
			t.Logf("host a: output-hold latency p50 %.0fµs p99 %.0fµs p99.9 %.0fµs (%d outputs)", s.HoldLatency.P50, s.HoldLatency.P99, s.HoldLatency.P999, s.HoldLatency.Count)
		}
		t.Logf("host %s watchdog: realtime %v %s; peer silences %s (max %.1fms); own gaps %s (max %.1fms, %d stalls); declared dead %d; Go stop-the-world: longest stop %.2fms, longest pause %.2fms, %d over 10ms",
			h, lv.Realtime, lv.RealtimeError, bucketString(lv.BucketEdgesMs, lv.PeerSilence), lv.PeerSilenceMaxMs,
			bucketString(lv.BucketEdgesMs, lv.OwnGap), lv.OwnGapMaxMs, lv.OwnStalls, lv.DeclaredDead,
			lv.GCStopMaxMs, lv.GCPauseMaxMs, lv.GCPausesOver10ms)
		if lv.DeclaredDead != 0 {
			failovers = append(failovers, fmt.Sprintf("host %s's watchdog declared its peer dead %d times", h, lv.DeclaredDead))
		}
	}
	t.Logf("this test process's 1ms ticker: %s; steal over the run: %.2f%% of CPU time (%d of %d ticks)",
		late, steal1.percentSince(steal0), steal1.steal-steal0.steal, steal1.total-steal0.total)
	t.Logf("the machine's own stalls (a pinned real-time thread per CPU, nothing else in its way): %s", stalls)
	if loadErr != nil && !errors.Is(loadErr, context.Canceled) {
		t.Fatalf("client load: %v", loadErr)
	}
	if res != nil {
		st := res.Stats
		t.Logf("client: %d served of %d sent over %v, latency p50 %v p99 %v, longest silence %v", st.Served, st.Sent, dur, st.P50, st.P99, st.MaxReplyGap)
		if err := linearize.Check(res.History); err != nil {
			t.Errorf("the client's history is not linearizable: %v", err)
		}
		if st.Served == 0 {
			t.Error("the client was never served")
		}
	}
	if len(failovers) > 0 {
		t.Fatalf("a failover under steady load, with no fault: %s", strings.Join(failovers, "; "))
	}
}

func bucketString(edges []float64, counts []uint64) string {
	var b strings.Builder
	for i, n := range counts {
		if n == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if i < len(edges) {
			fmt.Fprintf(&b, "≤%gms:%d", edges[i], n)
		} else if len(edges) > 0 {
			fmt.Fprintf(&b, ">%gms:%d", edges[len(edges)-1], n)
		}
	}
	return b.String()
}

// startLatenessTicker ticks every period in this process until the
// returned function is called, which says how late its ticks came: a
// machine-wide stall shows here too, one of the daemon alone does not.
func startLatenessTicker(period time.Duration) func() string {
	stop := make(chan struct{})
	out := make(chan string, 1)
	go func() {
		tk := time.NewTicker(period)
		defer tk.Stop()
		var over5, over20, over100 int
		var worst time.Duration
		for prev := time.Now(); ; {
			select {
			case <-stop:
				out <- fmt.Sprintf("late >5ms %d times, >20ms %d, >100ms %d, worst %v", over5, over20, over100, worst.Round(100*time.Microsecond))
				return
			case <-tk.C:
				now := time.Now()
				late := now.Sub(prev) - period
				prev = now
				worst = max(worst, late)
				if late > 5*time.Millisecond {
					over5++
				}
				if late > 20*time.Millisecond {
					over20++
				}
				if late > 100*time.Millisecond {
					over100++
				}
			}
		}
	}()
	return func() string {
		close(stop)
		return <-out
	}
}

type cpuTicks struct{ steal, total uint64 }

func (c cpuTicks) percentSince(b cpuTicks) float64 {
	if c.total <= b.total {
		return 0
	}
	return 100 * float64(c.steal-b.steal) / float64(c.total-b.total)
}

// readSteal reads the machine's steal and total CPU time from /proc/stat.
func readSteal() (cpuTicks, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTicks{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 9 || fields[0] != "cpu" {
			continue
		}
		var c cpuTicks
		for i, s := range fields[1:] {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return cpuTicks{}, fmt.Errorf("/proc/stat: %q: %w", sc.Text(), err)
			}
			if i < 8 { // user..steal; guest time is counted in user already
				c.total += v
			}
			if i == 7 {
				c.steal = v
			}
		}
		return c, nil
	}
	return cpuTicks{}, errors.New("/proc/stat has no cpu line")
}
