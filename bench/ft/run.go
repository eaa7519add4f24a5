package ft

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ftvm/ftvm/bench/e2e"
	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
)

// Options says what a run measures and where it writes.
type Options struct {
	Ftvm      string // the ftvm binary the daemons run
	GuestsDir string // where the guest programs are (vmm/guests/build)
	OutDir    string // results.md, results.json, the plots; work/ and logs/ under it (replaced)
	Workloads []Workload
	// DaemonFlags are more flags for every daemon of every cell, after
	// the workload's own (a heartbeat timeout for a machine whose load
	// would break pairs by itself, say).
	DaemonFlags []string
	// Transports lists the transports of the protected setups (names of
	// Transports).
	Transports []string
	// Warmup is how long a cell runs, protected and loaded, before its
	// window; Window is how long it is measured.
	Warmup, Window time.Duration
	Quick          bool // only recorded in the report
	// Prefix names the test bed's namespaces (default "ftvm-bench").
	Prefix string
	// Progress, if set, receives a status line about twice a second while
	// a cell runs, and Event a line per finished cell.
	Progress func(string)
	Event    func(string)
}

// Limits of one cell.
const (
	// startTimeout bounds a cell's start: the primary up, the secondary
	// in step.
	startTimeout = 60 * time.Second
	// progressEvery is how often the progress line is redrawn.
	progressEvery = 500 * time.Millisecond
)

// Run measures every workload on every setup, one cell after the other on
// one test bed, and returns the report with the ratios computed. It needs
// root, KVM, TUN, network namespaces and the ip and nft commands.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Prefix == "" {
		o.Prefix = "ftvm-bench"
	}
	if o.Warmup <= 0 || o.Window <= 0 {
		return nil, errors.New("ft: Warmup and Window must be positive")
	}
	setups, err := Setups(o.Transports)
	if err != nil {
		return nil, err
	}
	logs, work := filepath.Join(o.OutDir, "logs"), filepath.Join(o.OutDir, "work")
	for _, d := range []string{logs, work} {
		// A run's own scratch: what an earlier run into OutDir left goes.
		if err := os.RemoveAll(d); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	rep := &Report{Started: time.Now().UTC(), CPUs: runtime.NumCPU(), LoadAverage: LoadAverage(), Quick: o.Quick,
		WarmupS: o.Warmup.Seconds(), WindowS: o.Window.Seconds(), Transports: o.Transports}
	for _, w := range o.Workloads {
		rep.Workloads = append(rep.Workloads, WorkloadInfo{Name: w.Name, Title: w.Title, Guest: w.Guest, Cmdline: w.Cmdline, Unit: w.Unit, Target: w.Target})
	}
	topo, err := e2e.Up(ctx, o.Prefix, e2e.WithLogDir(logs))
	if err != nil {
		return nil, err
	}
	defer topo.Down()
	total := len(o.Workloads) * len(setups)
	n := 0
	for _, w := range o.Workloads {
		for _, s := range setups {
			n++
			label := fmt.Sprintf("[%d/%d] %s %s", n, total, w.Name, s.Name)
			var re *regexp.Regexp
			if w.ProgressLine != "" {
				if re, err = regexp.Compile(w.ProgressLine); err != nil {
					return nil, fmt.Errorf("workload %s: ProgressLine: %w", w.Name, err)
				}
			}
			c := cell{progressLine: re, o: o, topo: topo, w: w, s: s, label: label,
				dir: filepath.Join(work, fmt.Sprintf("%02d-%s-%s", n, w.Name, strings.ReplaceAll(s.Name, "/", "-")))}
			row, err := c.run(ctx)
			if err != nil {
				return nil, fmt.Errorf("%s on %s: %w", w.Name, s.Name, err)
			}
			rep.Rows = append(rep.Rows, *row)
			if o.Event != nil {
				o.Event(fmt.Sprintf("%s: %.0f %s, hold p99 %.0f µs, log %.2f Mbit/s, CPU a %.0f%% b %.0f%%",
					label, row.Throughput, row.Unit, row.Hold.P99, row.LogMbitPerSec, row.CPUPrimary, row.CPUSecondary))
			}
		}
	}
	rep.Finished = time.Now().UTC()
	ComputeRatios(rep)
	return rep, nil
}

// cell is one workload on one setup.
type cell struct {
	progressLine *regexp.Regexp // the workload's ProgressLine, compiled
	o            Options
	topo         *e2e.Topology
	w            Workload
	s            Setup
	label        string
	dir          string
}

// snap is what a cell reads of the daemons at either end of its window.
type snap struct {
	at         time.Time
	primary    *e2e.Status
	secondary  *e2e.Status
	hold       *hdrhistogram.Snapshot
	cpuP, cpuS float64 // seconds of CPU
	cpuClient  float64
	progress   uint64 // the guest's own count (guest-progress workloads)
	loadAvg    string
	// threadsP and threadsS are each daemon's threads' schedstat, nil
	// where it could not be read; machine is /proc/stat (machineOK).
	threadsP, threadsS map[int]threadTimes
	machine            machineTimes
	machineOK          bool
}

func (c *cell) say(format string, a ...any) {
	if c.o.Progress != nil {
		c.o.Progress(c.label + ": " + fmt.Sprintf(format, a...))
	}
}

func (c *cell) run(ctx context.Context) (*Row, error) {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	flags := append(append([]string{"--log-format", "json"}, c.w.Flags...), c.o.DaemonFlags...)
	mode := c.s.Mode
	if mode == "" {
		mode = "receipt"
	}
	cl, err := e2e.NewCluster(ctx, c.topo, e2e.ClusterConfig{
		Ftvm: c.o.Ftvm, Guest: filepath.Join(c.o.GuestsDir, c.w.Guest), Cmdline: c.w.Cmdline,
		NoNetwork: c.w.NoNetwork, Mode: mode, WorkDir: c.dir, Flags: flags, Transport: c.s.Transport,
	})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	c.say("starting")
	primary, err := cl.StartPrimary(e2e.HostA)
	if err != nil {
		return nil, err
	}
	var secondary *e2e.Daemon
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if c.s.Protected {
		if secondary, err = cl.StartSecondary(e2e.HostB, e2e.HostA); err != nil {
			return nil, err
		}
		_, err = cl.Await(sctx, e2e.HostA, "protected", e2e.Protected)
	} else {
		_, err = cl.Await(sctx, e2e.HostA, "primary", e2e.Primary)
	}
	if err != nil {
		return nil, err
	}
	if c.s.Protected {
		// A pair that could not agree on the transport asked for goes
		// on over TCP: its figures would be under the wrong name.
		st, err := cl.Status(ctx, e2e.HostA)
		if err != nil {
			return nil, err
		}
		if st.TransportInUse != c.s.Transport {
			return nil, fmt.Errorf("the pair runs over %q, not the %q asked for: %s", st.TransportInUse, c.s.Transport, st.TransportWhy)
		}
	}

	// The load (kvstore) runs from the client for the warm-up and the
	// window, and a little past it, so that the window sees a steady load.
	var load *kvclient.Result
	var loadErr error
	var loadWG sync.WaitGroup
	var lastProgress kvclient.Progress
	var progressMu sync.Mutex
	began := time.Now()
	if c.w.Load != nil {
		lc := *c.w.Load
		lc.Addr = net.JoinHostPort(e2e.VMAddr, "7000")
		lc.Duration = c.o.Warmup + c.o.Window + 200*time.Millisecond
		lc.Progress = func(p kvclient.Progress) {
			progressMu.Lock()
			lastProgress = p
			progressMu.Unlock()
		}
		loadWG.Add(1)
		go func() {
			defer loadWG.Done()
			loadErr = c.topo.InNamespace(e2e.Client, func() error {
				var err error
				load, err = kvclient.Run(ctx, lc)
				return err
			})
		}()
	}
	// phase draws the progress line until d has passed.
	phase := func(what string, d time.Duration) error {
		end := time.Now().Add(d)
		for {
			left := time.Until(end)
			if left <= 0 {
				return nil
			}
			var detail string
			if c.w.Load != nil {
				progressMu.Lock()
				p := lastProgress
				progressMu.Unlock()
				detail = fmt.Sprintf("served %d (%.0f/s), in flight %d, retries %d", p.Served, p.ServedPerSec, p.InFlight, p.Retries)
			} else if n, err := c.guestProgress(primary); err == nil {
				detail = fmt.Sprintf("%s %d", c.w.PerOp, n)
			}
			c.say("%s %.1fs of %.1fs; %s", what, time.Since(began).Seconds(), (c.o.Warmup + c.o.Window).Seconds(), detail)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(left, progressEvery)):
			}
		}
	}
	if err := phase("warming up", c.o.Warmup); err != nil {
		return nil, err
	}
	before, err := c.snapshot(ctx, cl, primary, secondary)
	if err != nil {
		return nil, err
	}
	if err := phase("measuring", c.o.Window); err != nil {
		return nil, err
	}
	after, err := c.snapshot(ctx, cl, primary, secondary)
	if err != nil {
		return nil, err
	}
	loadWG.Wait()
	if c.w.Load != nil {
		if loadErr != nil {
			return nil, fmt.Errorf("client load: %w", loadErr)
		}
		if err := linearize.Check(load.History); err != nil {
			return nil, fmt.Errorf("the client's history is not linearizable: %w", err)
		}
	}
	// A resync in progress is not a lost secondary (nondet resyncs all
	// the time); a primary neither protected nor bringing one in step is.
	if c.s.Protected && !after.primary.Protected && !after.primary.Syncing {
		return nil, fmt.Errorf("the pair lost its protection during the window (status %+v)\n%s", after.primary, primary.Proc.Tail(20))
	}
	return c.row(before, after, load, primary, secondary)
}

func (c *cell) snapshot(ctx context.Context, cl *e2e.Cluster, primary, secondary *e2e.Daemon) (*snap, error) {
	s := &snap{at: time.Now()}
	var err error
	if s.primary, err = cl.Status(ctx, e2e.HostA); err != nil {
		return nil, err
	}
	if s.hold, err = cl.HoldSnapshot(ctx, e2e.HostA); err != nil {
		return nil, err
	}
	if s.cpuP, err = cpuSeconds(primary.Proc.Pid()); err != nil {
		return nil, err
	}
	// Where the vCPU threads' time goes (Sched): best effort, a kernel
	// without schedstat leaves it out of the row.
	s.threadsP, _ = threadsOf(primary.Proc.Pid())
	s.machine, err = readMachineTimes()
	s.machineOK = err == nil
	if secondary != nil {
		if s.secondary, err = cl.Status(ctx, e2e.HostB); err != nil {
			return nil, err
		}
		if s.cpuS, err = cpuSeconds(secondary.Proc.Pid()); err != nil {
			return nil, err
		}
		s.threadsS, _ = threadsOf(secondary.Proc.Pid())
	}
	if s.cpuClient, err = cpuSeconds(os.Getpid()); err != nil {
		return nil, err
	}
	if c.w.Load == nil {
		if s.progress, err = c.guestProgress(primary); err != nil {
			return nil, err
		}
	}
	s.loadAvg = LoadAverage()
	return s, nil
}
