package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Where the daemons listen for each other and what the VM is called.
const (
	ReplicationPort = 7070
	VMID            = "kvstore"
	// statusPollInterval is how often Await asks a daemon again.
	statusPollInterval = 5 * time.Millisecond
	// controlTimeout bounds one control-socket request.
	controlTimeout = 2 * time.Second
	// daemonStopGrace is how long Close lets a daemon stop on SIGTERM.
	daemonStopGrace = 3 * time.Second
)

// ClusterConfig says what a Cluster runs.
type ClusterConfig struct {
	// Ftvm is the ftvm binary the daemons run (built from this module).
	Ftvm string
	// Guest is the guest program, and Cmdline its command line. "ip=" is
	// added for the VM's address (VMAddr) unless Cmdline has one or the
	// guest has no network.
	Guest   string
	Cmdline string
	// NoNetwork runs the guest without a NIC (no --tap, no ip=): for
	// guests that do not take one.
	NoNetwork bool
	// Mode is the ack mode: "receipt" (default) or "compare".
	Mode string
	// WorkDir holds certificates, disks, the arbiter's directory, control
	// sockets and consoles. It must exist.
	WorkDir string
	// Flags are more daemon flags, given to both roles.
	Flags []string
	// EtcdEndpoints, if set, makes the daemons use the etcd arbiter there
	// (--arbiter etcd) instead of the file arbiter in WorkDir.
	EtcdEndpoints []string
	// MetricsPort, if not zero, has each daemon serve /metrics on its
	// host's address at this port (MetricsAddr).
	MetricsPort int
	// Transport is the daemons' --transport (auto, rdma, shm or tcp;
	// empty: the daemon's default). "shm" works here because the two
	// hosts are network namespaces of one machine, which see the same
	// /dev/shm. MeasureTransportRTT measures the same transport.
	Transport string
}

// Cluster is an ftvm deployment on a Topology: at most one daemon per VM
// host at a time, with its disk, certificate and control socket.
type Cluster struct {
	Topo *Topology
	cfg  ClusterConfig

	// life bounds every daemon: they run until Kill or Close, whatever
	// the context of the call that started them.
	life     context.Context
	stopLife context.CancelFunc

	mu      sync.Mutex
	daemons map[Host]*Daemon
	gen     int
}

// Daemon is one ftvm primary or secondary process.
type Daemon struct {
	Host    Host
	Started string // "primary" or "secondary": the role it was started in
	Proc    *Proc
	Control string // its control socket
	Console string // its console file
	Gen     int    // its place among the daemons this Cluster started
}

func (d *Daemon) String() string {
	return fmt.Sprintf("%s daemon #%d on host %s", d.Started, d.Gen, d.Host)
}

// NewCluster prepares a deployment on topo: test certificates for both
// hosts and an arbiter directory in cfg.WorkDir.
func NewCluster(ctx context.Context, topo *Topology, cfg ClusterConfig) (*Cluster, error) {
	if cfg.Mode == "" {
		cfg.Mode = "receipt"
	}
	if !cfg.NoNetwork && !strings.Contains(" "+cfg.Cmdline, " ip=") {
		cfg.Cmdline = strings.TrimSpace(cfg.Cmdline + " ip=" + VMAddr)
	}
	if _, err := os.Stat(cfg.Guest); err != nil {
		return nil, fmt.Errorf("guest program: %w (build it with make guests)", err)
	}
	c := &Cluster{Topo: topo, cfg: cfg, daemons: map[Host]*Daemon{}}
	c.life, c.stopLife = context.WithCancel(context.Background())
	out, err := exec.CommandContext(ctx, cfg.Ftvm, "certs", "--dir", c.path("certs"), "--hosts", "a,b").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ftvm certs: %v: %s", err, out)
	}
	if err := os.MkdirAll(c.path("arbiter"), 0o700); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) path(name string) string { return filepath.Join(c.cfg.WorkDir, name) }

// MetricsAddr is where host h's daemon serves /metrics (inside h's
// namespace: reach it with Topology.Dial), with ClusterConfig.MetricsPort.
func (c *Cluster) MetricsAddr(h Host) string {
	return net.JoinHostPort(HostAddr(h).String(), fmt.Sprint(c.cfg.MetricsPort))
}

// ControlPath is host h's control socket.
func (c *Cluster) ControlPath(h Host) string { return c.path(string(h) + ".sock") }

func (c *Cluster) daemonArgs(h Host, role string, d *Daemon) []string {
	args := []string{role,
		"--vm-id", VMID,
		"--guest", c.cfg.Guest,
		"--cmdline", c.cfg.Cmdline,
		"--disk", c.path("disk-" + string(h) + ".img"),
		// The default disk (4 MiB): kvstore compacts its write-ahead log,
		// so a run of any length fits, and a join copies 4 MiB.
		"--tls-dir", c.path("certs"),
		"--tls-name", string(h),
		// Only the other host may join this one as its secondary.
		"--allow-peers", string(otherHost(h)),
		"--listen", net.JoinHostPort(HostAddr(h).String(), fmt.Sprint(ReplicationPort)),
		"--control", d.Control,
		"--console", d.Console,
		"--mode", c.cfg.Mode,
	}
	if len(c.cfg.EtcdEndpoints) > 0 {
		args = append(args, "--arbiter", "etcd", "--etcd-endpoints", strings.Join(c.cfg.EtcdEndpoints, ","))
	} else {
		args = append(args, "--arbiter-dir", c.path("arbiter"))
	}
	if !c.cfg.NoNetwork {
		args = append(args, "--tap", TAPName)
	}
	if c.cfg.MetricsPort != 0 {
		args = append(args, "--metrics-listen", c.MetricsAddr(h))
	}
	if c.cfg.Transport != "" {
		args = append(args, "--transport", c.cfg.Transport)
	}
	return append(args, c.cfg.Flags...)
}

func (c *Cluster) start(h Host, role string, extra ...string) (*Daemon, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.daemons[h]; d != nil {
		select {
		case <-d.Proc.Done():
		default:
			return nil, fmt.Errorf("host %s still runs %s", h, d)
		}
	}
	c.gen++
	d := &Daemon{Host: h, Started: role, Gen: c.gen, Control: c.ControlPath(h),
		Console: c.path(fmt.Sprintf("console-%02d-%s.txt", c.gen, h))}
	p, err := c.Topo.Start(c.life, h, c.cfg.Ftvm, append(c.daemonArgs(h, role, d), extra...)...)
	if err != nil {
		return nil, err
	}
	d.Proc = p
	c.daemons[h] = d
	return d, nil
}

// otherHost is the VM host that is not h.
func otherHost(h Host) Host {
	if h == HostA {
		return HostB
	}
	return HostA
}

// StartPrimary starts ftvm primary on host h, with more flags if given.
// It runs until Kill or Close.
func (c *Cluster) StartPrimary(h Host, flags ...string) (*Daemon, error) {
	return c.start(h, "primary", flags...)
}

// StartSecondary starts ftvm secondary on host h, joining the primary on
// host primary. It runs until Kill or Close.
func (c *Cluster) StartSecondary(h, primary Host) (*Daemon, error) {
	return c.start(h, "secondary",
		"--peer", net.JoinHostPort(HostAddr(primary).String(), fmt.Sprint(ReplicationPort)),
		"--peer-name", string(primary))
}

// Daemon is the daemon last started on host h (nil if none).
func (c *Cluster) Daemon(h Host) *Daemon {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.daemons[h]
}

// Kill SIGKILLs host h's daemon, as a host that loses power would be
// seen: its sockets close, nothing of it runs any more.
func (c *Cluster) Kill(h Host) error {
	d := c.Daemon(h)
	if d == nil {
		return fmt.Errorf("no daemon on host %s", h)
	}
	if err := d.Proc.Kill(); err != nil {
		return err
	}
	<-d.Proc.Done()
	return nil
}

// Freeze stops host h's daemon (SIGSTOP) for d and then lets it go on
// (SIGCONT), as a host that stalls (a hypervisor pause, a swap storm)
// would: its sockets stay open, and it wakes up believing what it
// believed when it stopped. wake, if set, runs just before SIGCONT.
func (c *Cluster) Freeze(h Host, d time.Duration, wake func() error) error {
	if err := c.Suspend(h); err != nil {
		return err
	}
	time.Sleep(d)
	var err error
	if wake != nil {
		err = wake()
	}
	if e := c.Resume(h); e != nil {
		return e
	}
	return err
}

// Suspend stops host h's daemon (SIGSTOP to its process group): none of
// its threads runs until Resume, though the kernel keeps its sockets (it
// still acknowledges TCP segments, and sends what was already queued).
// Kill ends a suspended daemon as it does a running one.
func (c *Cluster) Suspend(h Host) error {
	dm := c.Daemon(h)
	if dm == nil {
		return fmt.Errorf("no daemon on host %s", h)
	}
	return dm.Proc.signal(syscall.SIGSTOP)
}

// Resume lets host h's daemon run again after Suspend (SIGCONT).
func (c *Cluster) Resume(h Host) error {
	dm := c.Daemon(h)
	if dm == nil {
		return fmt.Errorf("no daemon on host %s", h)
	}
	return dm.Proc.signal(syscall.SIGCONT)
}

// Close stops every daemon (SIGTERM, then SIGKILL).
func (c *Cluster) Close() {
	c.mu.Lock()
	ds := c.daemons
	c.daemons = map[Host]*Daemon{}
	c.mu.Unlock()
	for _, d := range ds {
		d.Proc.Stop(daemonStopGrace)
	}
	c.stopLife()
}

// Status is what a daemon answers on its control socket (the fields of
// cmd/ftvm's statusReport this package uses).
type Status struct {
	VMID      string `json:"vm_id"`
	PID       int    `json:"pid"`
	Role      string `json:"role"`
	Epoch     uint64 `json:"epoch"`
	Protected bool   `json:"protected"`
	Syncing   bool   `json:"syncing"`
	Synced    bool   `json:"synced"`
	LastSeq   uint64 `json:"last_seq"`
	Acked     uint64 `json:"acked"`
	LogLag    uint64 `json:"log_lag"`
	Held      int    `json:"held_outputs"`
	LiveSince string `json:"live_since"`
	Stats     struct {
		Released    uint64
		Restores    uint64
		Checkpoints uint64
		Divergences uint64
		Stalls      uint64
		// Incremental resyncs (agent.Stats): increments restored onto
		// the secondary's VM, and those refused (a full one followed).
		IncrementalRestores uint64
		RestoreFailures     uint64
	} `json:"stats"`
	HoldLatency struct {
		Count int64   `json:"count"`
		P50   float64 `json:"p50_us"`
		P99   float64 `json:"p99_us"`
		P999  float64 `json:"p999_us"`
	} `json:"hold_latency"`
	Sync struct {
		SentBytes  int64 `json:"sent_bytes"`
		TotalBytes int64 `json:"total_bytes"`
	} `json:"sync"`
	Transport struct {
		BytesSent  uint64 `json:"bytes_sent"`
		FramesSent uint64 `json:"frames_sent"` // heartbeats included
		Writes     uint64 `json:"writes"`      // system calls writing to the sockets
	} `json:"transport"`
	Arbiter struct {
		Kind      string  `json:"kind"`
		LeaseHeld bool    `json:"lease_held"`
		LeaseTTL  float64 `json:"lease_ttl_s"`
		LeaseLeft float64 `json:"lease_left_s"`
	} `json:"arbiter"`
	// TransportInUse is what carries the control lane (shm, rdma, tcp).
	TransportInUse string `json:"transport_in_use"`
	TransportWhy   string `json:"transport_why"`
	// Liveness is what the transports' watchdogs saw: histograms by
	// BucketEdgesMs (upper edges; the last bucket is above the last edge).
	Liveness struct {
		Realtime         bool      `json:"realtime"`
		RealtimeError    string    `json:"realtime_error"`
		BucketEdgesMs    []float64 `json:"bucket_edges_ms"`
		PeerSilence      []uint64  `json:"peer_silence"`
		PeerSilenceMaxMs float64   `json:"peer_silence_max_ms"`
		OwnGap           []uint64  `json:"own_gap"`
		OwnGapMaxMs      float64   `json:"own_gap_max_ms"`
		OwnStalls        uint64    `json:"own_stalls"`
		DeclaredDead     uint64    `json:"declared_dead"`
		GCStopMaxMs      float64   `json:"gc_stop_max_ms"`
		GCPauseMaxMs     float64   `json:"gc_pause_max_ms"`
		GCPausesOver10ms uint64    `json:"gc_pauses_over_10ms"`
	} `json:"liveness"`
}

// control sends one request to host h's daemon and decodes its answer.
func (c *Cluster) control(ctx context.Context, h Host, req string, v any) error {
	d := c.Daemon(h)
	if d == nil {
		return fmt.Errorf("no daemon on host %s", h)
	}
	var dialer net.Dialer
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	conn, err := dialer.DialContext(ctx, "unix", d.Control)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, req+"\n"); err != nil {
		return err
	}
	return json.NewDecoder(conn).Decode(v)
}

// Status asks host h's daemon for its status.
func (c *Cluster) Status(ctx context.Context, h Host) (*Status, error) {
	var s Status
	if err := c.control(ctx, h, "status", &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// HoldHistogram fetches host h's output-hold latency histogram (ns).
func (c *Cluster) HoldHistogram(ctx context.Context, h Host) (*hdrhistogram.Histogram, error) {
	s, err := c.holdSnapshot(ctx, h)
	if err != nil {
		return nil, err
	}
	return hdrhistogram.Import(s), nil
}

func (c *Cluster) holdSnapshot(ctx context.Context, h Host) (*hdrhistogram.Snapshot, error) {
	var s hdrhistogram.Snapshot
	if err := c.control(ctx, h, "hold-histogram", &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// histogramSince is what was recorded between two snapshots of one
// histogram.
func histogramSince(before, after *hdrhistogram.Snapshot) (*hdrhistogram.Histogram, error) {
	if len(before.Counts) != len(after.Counts) || before.LowestTrackableValue != after.LowestTrackableValue ||
		before.HighestTrackableValue != after.HighestTrackableValue || before.SignificantFigures != after.SignificantFigures {
		return nil, fmt.Errorf("the two histograms are not of one kind")
	}
	d := *after
	d.Counts = make([]int64, len(after.Counts))
	for i := range d.Counts {
		d.Counts[i] = after.Counts[i] - before.Counts[i]
		if d.Counts[i] < 0 {
			return nil, fmt.Errorf("the histogram shrank between its snapshots (a different process?)")
		}
	}
	return hdrhistogram.Import(&d), nil
}

// Await asks host h's daemon for its status until cond holds, ctx ends, or
// the daemon exits, and returns the status that satisfied cond.
func (c *Cluster) Await(ctx context.Context, h Host, what string, cond func(*Status) bool) (*Status, error) {
	d := c.Daemon(h)
	if d == nil {
		return nil, fmt.Errorf("no daemon on host %s", h)
	}
	var last *Status
	var lastErr error
	for {
		s, err := c.Status(ctx, h)
		if err == nil && cond(s) {
			return s, nil
		}
		if err == nil {
			last = s
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s never became %s (last status %+v, last error %v): %w\n%s", d, what, last, lastErr, ctx.Err(), d.Proc.Tail(30))
		case <-d.Proc.Done():
			return nil, fmt.Errorf("%s exited before it became %s: %v\n%s", d, what, d.Proc, d.Proc.Tail(30))
		case <-time.After(statusPollInterval):
		}
	}
}

// Protected is an Await condition: a primary with a secondary in step.
func Protected(s *Status) bool { return s.Role == "primary" && s.Protected }

// Primary is an Await condition: the daemon is primary (protected or not).
func Primary(s *Status) bool { return s.Role == "primary" }

// Live is an Await condition: a daemon started as secondary has taken over
// and serves the VM live (its devices switched, its MAC announced).
func Live(s *Status) bool { return s.Role == "primary" && s.LiveSince != "" }
