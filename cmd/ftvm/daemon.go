package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/internal/term"
	"github.com/ftvm/ftvm/lockstep"
	etcdarb "github.com/ftvm/ftvm/lockstep/arbiter/etcd"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

func init() {
	commands.add(&command{
		name:    "primary",
		summary: "run a protected VM on this host and accept a secondary to replicate it",
		run:     func(e *env, args []string) int { return runDaemon(e, args, wire.RolePrimary) },
	})
	commands.add(&command{
		name:    "secondary",
		summary: "keep a replica of a primary's VM on this host and take over when the primary dies",
		run:     func(e *env, args []string) int { return runDaemon(e, args, wire.RoleSecondary) },
	})
}

const daemonUsage = `usage: ftvm %[1]s [--config FILE] [flags]

%[2]s

The VM is a guest program (--guest, built by make guests) whose devices are
the VMM's: console, clock, entropy, a NIC on a TAP interface (--tap) and a
disk file (--disk, this host's own copy: separate-storage mode). Every
nondeterministic input the primary's VM receives is logged and shipped to
the secondary over TCP (mutual TLS, or a pre-shared key); every output
(a frame sent, a disk write, console text) is held until the secondary has
the log entries it depends on (--mode receipt) or has reproduced it
(--mode compare). The secondary replays the log in its own VM and applies
each reproduced disk write to its own disk once the primary reports it
released. When the primary dies the secondary finishes the log, wins the
arbiter's lock (--arbiter-dir, shared by both hosts; or etcd, below), opens its TAP's
gate, announces the VM's MAC with gratuitous ARPs (at once and again over
the next seconds; a primary does the same when it starts) and goes on as
primary; it then accepts a new secondary on --listen, which joins from a
checkpoint of memory, CPU, devices and disk: copies of the VM taken while
it runs (--precopy-rounds), then a short pause for what changed meanwhile,
while a progress bar shows the transfer. Restart the dead host as
ftvm secondary --peer <new primary's --listen> --peer-name <its --tls-name>
(--peer-name is needed whenever --peer is an address).

The peer is taken for dead when its connection breaks, or when nothing
came from it on any lane for --heartbeat-timeout (50 ms; 300 ms,
--join-heartbeat-timeout, while a secondary joins): each lane sends a
heartbeat when idle for --heartbeat-interval (2 ms), from two watchdog
threads, each on its own CPU at real-time priority (SCHED_FIFO where the
process may), which also look at the lanes every half interval; a frame
read, a heartbeat, or bytes waiting unread in a socket count as heard.
Silence counts only while a watchdog itself runs (at most two looks'
worth per look), so a pause of this host or of the whole machine never
makes it take a live peer for dead; while it runs on time a silent peer
is lost within the timeout and a millisecond after its last byte. A
slower progress check, --peer-timeout-ticks x --tick (1 s), catches a
peer whose heartbeats come but whose daemon is stuck. A primary in step
that did not run for half the heartbeat timeout sends none of the VM's
frames until its secondary shows it still follows, and one that did not
run for nearly the whole timeout asks the arbiter again before it acts
on anything it reads, since it may have been replaced.

Two daemons on one machine (a lab) each need their own --control and
--listen.

ftvm status --control PATH asks a running daemon for its role, epoch, log
lag, held outputs and output-hold latency.

A primary that stops by SIGINT/SIGTERM or because the guest exited records
a clean stop in the arbiter's state file, so that it may start again as
primary by itself (it takes the next epoch). Each disk has a side file,
DISK.ftvm-state, saying which epoch it is current to: the host that was the
last primary, whose disk says so, takes the next epoch by itself even after
a crash. A primary refuses to start (exit 3) while the arbiter's record
names another host, which has the newer disk and is named: see ftvm
arbiter --help and ftvm recover --help.

With --arbiter etcd the lock is an etcd cluster (--etcd-endpoints, with
--etcd-cacert, --etcd-cert and --etcd-key for TLS): an epoch is granted by
one transaction under this host's lease (--etcd-lease-ttl), and a primary
that cannot renew it, or finds another host granted a newer epoch, stops
releasing at once and exits 3; a host replaces a dead primary only once
that primary's lease has run out at etcd. Keys: lockstep/arbiter/etcd.

With --reach-check, a host that cannot reach the VM's network never asks
the arbiter for the VM, and a protected primary that lost it for
--reach-yield-after stops (exit 3) so that its secondary takes over.

Exit codes: 0 stopped by SIGINT/SIGTERM or the guest exited, 1 failure,
2 usage error, 3 halted or refused: another host is primary or has the
newest state, or this one yielded the VM because it cannot reach the VM's
network (restart this one as a secondary to re-protect the VM).

Every flag can also be set in the --config file as "name = value".

flags:
`

func runDaemon(e *env, args []string, role wire.Role) int {
	name, what := "primary", "Runs the VM as primary: boots the guest, serves it live, records its\ninputs for a secondary and holds its outputs until the secondary has them."
	if role == wire.RoleSecondary {
		name, what = "secondary", "Joins the primary at --peer, restores its checkpoint and replays its log,\nready to take over the VM the moment the primary dies."
	}
	fs := flag.NewFlagSet("ftvm "+name, flag.ContinueOnError)
	finish := daemonFlags(fs, role)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), daemonUsage, name, what)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	if err := applyConfigFile(fs); err != nil {
		fmt.Fprintf(e.stderr, "ftvm %s: %v\n", name, err)
		return exitUsage
	}
	cfg, err := finish()
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm %s: %v\n", name, err)
		return exitUsage
	}
	setDaemonProcs()
	defer startCPUProfile(e, name)()
	log := newLogger(e.stderr, cfg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := newDaemon(cfg, log, e.stderr)
	if errors.Is(err, errNotPrimary) {
		log.Error("not starting as primary", "err", err)
		return exitHalted
	}
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	return d.run(ctx)
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(w io.Writer, c *daemonConfig) *slog.Logger {
	level, _ := parseLogLevel(c.logLevel) // checked by daemonFlags
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.logFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h).With("vm", c.vmID)
}

// daemon is one running ftvm primary or secondary: the agent and what it
// was wired to.
type daemon struct {
	cfg     *daemonConfig
	log     *slog.Logger
	term    io.Writer // progress bars go here when it is a terminal
	started time.Time

	arb     daemonArbiter
	etcdArb *etcdarb.Arbiter // the same arbiter with --arbiter etcd; else nil
	lease   agent.Lease      // etcdArb with --arbiter etcd; else nil
	spans   releaseSpans
	diskF   *os.File
	console io.Writer
	closers []io.Closer
	guest   []byte

	ag       *agent.Agent
	link     peerLink
	listener *rdma.Transport
	dialer   *rdma.Transport
	trCfg    tcpfallback.Config
	// listenProvider and dialProvider carry the control lane of the
	// listener and of the dialer (nil: TCP); daemon_transport.go picks
	// them from --transport.
	listenProvider, dialProvider rdma.Provider
	rejects                      *rejectLog // rate-limits the lines about refused connections

	// nic holds the VM's network backend open for the daemon's life and
	// lends it to each VM; its gate opens when this host serves live.
	nic *vmm.NICGate
	// fence keeps the VM's frames in after a stall that may have deposed
	// this host (see txFence).
	fence *txFence
	// deposing is the epoch in which this primary found it may have been
	// replaced (deposedMaybe), 0 when it did not: until the node is out of
	// that protected epoch, frames from the peer are dropped.
	deposing atomic.Uint64
	// realtimeWarning: the watchdog's lack of SCHED_FIFO is said once.
	realtimeWarning sync.Once
	// life is the context of run, for the announcements' goroutines.
	life              atomic.Pointer[context.Context]
	lastStaleAnnounce atomic.Int64   // unix ns of the latest staleFrameSeen announcement
	announcing        sync.WaitGroup // announce's goroutines of later announcements

	// reach watches the VM's network (--reach-check); nil without it.
	reach *reachability
	// yielded: this primary stopped because it lost the VM's network.
	yielded atomic.Bool

	// metrics: the lag sampler and join count of /metrics (metrics.go).
	metrics metricsState

	mu       sync.Mutex
	wentLive time.Time

	// diskMu orders the writes of the disk's side file (diskstate.go);
	// joinRestores is the restore count when a checkpoint began to
	// overwrite the disk: the disk is a replica again only after a
	// restore beyond it.
	diskMu       sync.Mutex
	diskLast     diskState
	joinRestores uint64
	joining      bool
}

func newDaemon(c *daemonConfig, log *slog.Logger, term io.Writer) (_ *daemon, err error) {
	d := &daemon{cfg: c, log: log, term: term, started: time.Now(), rejects: newRejectLog(rejectLogInterval)}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if d.guest, err = os.ReadFile(c.guest); err != nil {
		return nil, fmt.Errorf("guest program: %w (build the guests with make guests, or give --guest)", err)
	}
	// Checked now, not when the VM boots: before "started" is logged.
	if err := vmm.CheckELF(d.guest); err != nil {
		return nil, fmt.Errorf("--guest %s: %w (build the guests with make guests, or give --guest)", c.guest, err)
	}
	var arbClosers []io.Closer
	if d.arb, d.lease, arbClosers, err = d.openArbiter(); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, arbClosers...)
	// While this daemon runs, ftvm arbiter reset refuses.
	running, err := d.arb.Running(c.vmID)
	if err != nil {
		return nil, fmt.Errorf("%w: this host must be able to write the arbiter's record (fix %s and start again), and each daemon of a VM needs its own --host-name (default --tls-name, else the host name)", err, c.arbiterWhere())
	}
	d.closers = append(d.closers, running)
	var firstEpoch uint64
	if c.role == wire.RolePrimary {
		if firstEpoch, err = d.firstEpoch(); err != nil {
			return nil, err
		}
	}
	if c.disk != "" {
		if d.diskF, err = openDisk(c.disk, c.diskBytes); err != nil {
			return nil, err
		}
		d.closers = append(d.closers, d.diskF)
	}
	// A disk both hosts write is fenced: a record beside it that the
	// primary's writes check and a new primary raises at go-live.
	var fence agent.DiskFence
	if c.disk != "" && c.sharedStorage {
		f, err := vmm.OpenDiskFence(c.disk + ".fence")
		if err != nil {
			return nil, fmt.Errorf("--shared-storage: %w", err)
		}
		d.closers = append(d.closers, f)
		fence = f
	}
	d.console = os.Stdout
	if c.console != "-" {
		f, err := os.OpenFile(c.console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--console: %w", err)
		}
		d.console = f
		d.closers = append(d.closers, f)
	}
	// The NIC is opened now on a secondary too, though it may not take a
	// frame before go-live: a TAP opened at go-live gets its carrier only
	// then, and the kernel can take up to a second to let its bridge port
	// forward, which would be the failover time.
	nic, err := d.openNIC()
	if err != nil {
		return nil, err
	}
	if nic != nil {
		if d.nic, err = vmm.NewNICGate(nic); err != nil {
			nic.Close()
			return nil, err
		}
		if c.role == wire.RolePrimary {
			d.nic.Open()
		}
	}
	if d.trCfg, err = d.transportConfig(); err != nil {
		return nil, err
	}
	var why string
	if d.listenProvider, why, err = c.chooseProvider(""); err != nil {
		return nil, err
	}
	log.Info("transport for a joining secondary", "control_lane", providerName(d.listenProvider), "why", why)
	if c.role == wire.RoleSecondary {
		if d.dialProvider, why, err = c.chooseProvider(c.peer); err != nil {
			return nil, err
		}
		log.Info("transport to the primary", "peer", c.peer, "control_lane", providerName(d.dialProvider), "why", why)
	}
	d.fence = newTxFence(c.progressTimeout(), c.transportTimeout(d.trCfg), c.heartbeatInterval)
	if d.nic != nil {
		d.nic.SetFence(d.fence.mayTransmit)
		d.nic.WatchSource(c.mac, d.staleFrameSeen)
	}
	var arb agent.Arbiter = d.arb
	if len(c.reachCheck) > 0 {
		d.reach = &reachability{targets: c.reachCheck, link: c.reachLink, interval: c.reachInterval, lostAfter: c.reachLostAfter, log: log}
		arb = &reachArbiter{inner: d.arb, reach: d.reach, log: log}
	}
	node := lockstep.Config{
		VMID: c.vmID, Role: c.role, Mode: c.mode, FirstEpoch: firstEpoch,
		LogWindowEntries: c.window, HeartbeatTicks: c.heartbeatTicks, PeerTimeoutTicks: c.peerTimeoutTicks,
		PrecopyRounds:      c.precopyRounds,
		MaxCheckpointBytes: checkpointBound(c),
	}
	d.ag, err = agent.New(agent.Config{
		Node:             node,
		NewVM:            d.newVM,
		Boot:             d.boot,
		Arbiter:          arb,
		TickInterval:     c.tick,
		WaitForSecondary: c.waitForSecondary,
		SeparateStorage:  !c.sharedStorage,
		DiskFence:        fence,
		Lease:            d.lease,
		OnRelease:        d.spans.note,
		OnGoLive:         d.goLive,
		OnEpoch:          d.onEpoch,
		Logger:           d.log,
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// openDisk opens this host's disk file, creating it at size if missing,
// and reserves all of its blocks on the filesystem (vmm.PreallocateDisk):
// a disk that cannot be backed in full is refused at start rather than
// failing the guest's writes later. A file it created and could not
// reserve is removed again.
func openDisk(path string, size uint64) (*os.File, error) {
	created := false
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
			created = true
			err = f.Truncate(int64(size))
		}
	}
	if err == nil {
		err = vmm.PreallocateDisk(f)
	}
	if err != nil {
		if f != nil {
			f.Close()
			if created {
				os.Remove(path)
			}
		}
		return nil, fmt.Errorf("--disk: %w", err)
	}
	return f, nil
}

// openNIC opens the VM's live network backend: the TAP (brought up) or
// the UDP carrier; nil when the VM has no network.
func (d *daemon) openNIC() (vmm.NICBackend, error) {
	switch {
	case d.cfg.tap != "":
		t, err := vmm.OpenTAP(d.cfg.tap)
		if err != nil {
			return nil, fmt.Errorf("--tap %s: %w (create it first: ip tuntap add dev %s mode tap)", d.cfg.tap, err, d.cfg.tap)
		}
		if err := setLinkUp(t.Name()); err != nil {
			t.Close()
			return nil, fmt.Errorf("--tap %s: bringing it up: %w", d.cfg.tap, err)
		}
		return t, nil
	case d.cfg.udpNIC != "":
		local, peer, _ := strings.Cut(d.cfg.udpNIC, ",")
		u, err := vmm.ListenUDPNIC(strings.TrimSpace(local), strings.TrimSpace(peer))
		if err != nil {
			return nil, fmt.Errorf("--udp-nic: %w", err)
		}
		return u, nil
	}
	return nil, nil
}

func (d *daemon) transportConfig() (tcpfallback.Config, error) {
	c := tcpfallback.Config{VMID: d.cfg.vmID, Name: d.cfg.tlsName, PeerNames: d.cfg.allowPeers,
		// A transport starts with the join's timeout; once the pair is
		// in step, watchFence sets --heartbeat-timeout.
		HeartbeatTimeout: d.cfg.joinHeartbeatTimeout, HeartbeatInterval: d.cfg.heartbeatInterval,
		OnWatchdog: func(ev tcpfallback.WatchdogEvent) {
			if d.fence != nil {
				d.fence.watched(ev)
			}
		},
		OnFrame: func(f transport.Frame) {
			// A look at the clock first: a primary that was not run for
			// as long as its secondary waits for heartbeats may have
			// been replaced, and the acknowledgements waiting in its
			// socket would make it release outputs in a stale epoch.
			d.fence.look()
			if d.fence.mayBeDeposed() {
				d.deposedMaybe()
			}
			if d.deposingDrop() {
				return
			}
			d.fence.peerHeard()
			d.ag.HandleFrame(f)
		}} // ringConfig replaces OnFrame, naming the transport a frame came on
	if d.cfg.pskFile != "" {
		key, err := os.ReadFile(d.cfg.pskFile)
		if err != nil {
			return c, fmt.Errorf("--psk-file: %w", err)
		}
		c.PSK = []byte(strings.TrimSpace(string(key)))
		if len(c.PSK) < tcpfallback.MinPSKBytes {
			return c, fmt.Errorf("--psk-file %s holds %d bytes; use at least %d random bytes (head -c 32 /dev/urandom | base64 > FILE)", d.cfg.pskFile, len(c.PSK), tcpfallback.MinPSKBytes)
		}
		return c, nil
	}
	tlsCfg, err := tcpfallback.LoadTLSConfig(d.cfg.tlsDir, d.cfg.tlsName)
	if err != nil {
		return c, fmt.Errorf("--tls-dir %s, --tls-name %s: %w", d.cfg.tlsDir, d.cfg.tlsName, err)
	}
	c.TLS = tlsCfg
	return c, nil
}

// newVM is agent.Config.NewVM: a paused VM with this host's devices. Its
// NIC is a loan of the host's NIC; until this host goes live the gate is
// shut: a secondary's inputs come from the log, and frames queued meanwhile
// would be client requests the primary has already answered.
func (d *daemon) newVM(hook vmm.ExitHook) (agent.VM, error) {
	if d.cfg.role == wire.RoleSecondary {
		// A secondary's new VM is for a checkpoint that overwrites the
		// disk: from now until the restore is done the disk is not current.
		if err := d.diskJoining(); err != nil {
			return nil, err
		}
	}
	var nic vmm.NICBackend
	if d.nic != nil {
		loan, err := d.nic.Lend()
		if err != nil {
			return nil, err
		}
		nic = loan
	}
	m, err := vmm.New(vmm.Config{
		MemSizeBytes:      d.cfg.memBytes,
		Console:           d.console,
		NIC:               nic,
		MAC:               d.cfg.mac,
		Disk:              d.diskF,
		Hook:              hook,
		Cmdline:           d.cfg.cmdline,
		DiskSharedStorage: d.cfg.sharedStorage,
		Logger:            d.log,
	})
	if err != nil {
		if nic != nil {
			nic.Close()
		}
		return nil, err
	}
	return m, nil
}

func (d *daemon) boot(vm agent.VM) error {
	m, ok := vm.(*vmm.Machine)
	if !ok {
		return fmt.Errorf("boot: %T is not a vmm.Machine", vm)
	}
	return m.Load(d.guest)
}

// goLive is agent.Config.OnGoLive: this secondary is primary now. It opens
// the NIC's gate, announces the VM's MAC so that switches send its traffic
// here, and starts accepting a new secondary.
func (d *daemon) goLive(epoch, fence uint64) error {
	// onEpoch recorded the epoch when the arbiter granted it; a second
	// fsync of the side file here would only delay the take-over.
	d.diskMu.Lock()
	recorded := d.diskLast.Role == diskRolePrimary && d.diskLast.Epoch == epoch
	d.diskMu.Unlock()
	if !recorded {
		if err := d.recordDisk(diskRolePrimary, epoch, 0, false); err != nil {
			return err
		}
	}
	d.mu.Lock()
	d.wentLive = time.Now()
	// Sends go to whoever joins us now; the old primary is dead or fenced.
	d.link.set(d.listener)
	old := d.dialer
	d.mu.Unlock()
	if old != nil {
		// The old primary's right to write into this host's ring goes
		// first (a stale primary's writes fail or land nowhere), then
		// the connection, not on the loop: Close waits for the readers.
		if err := old.Fence(); err != nil {
			d.log.Warn("fencing the old primary's ring", "err", err)
		}
		go old.Close()
	}
	if d.fence != nil {
		d.fence.clear()
	}
	if d.nic != nil {
		d.nic.Open()
		ctx := context.Background()
		if p := d.life.Load(); p != nil {
			ctx = *p
		}
		d.announce(ctx, "go-live")
	}
	d.log.Info("live", "epoch", epoch, "fence", fence, "tap", d.cfg.tap, "announced", d.cfg.vmIP)
	return nil
}

func (d *daemon) run(ctx context.Context) int {
	defer d.close()
	var err error
	var src frameSource
	if d.listener, err = rdma.Listen(d.cfg.listen, d.ringConfig(d.trCfg, d.listenProvider, &src)); err != nil {
		d.log.Error("cannot listen for a secondary", "err", err)
		return exitFailure
	}
	src.set(d.listener)
	d.closers = append(d.closers, d.listener)
	go d.watch(d.listener)
	if d.cfg.role == wire.RolePrimary {
		d.link.set(d.listener)
	}
	ctl, err := d.serveControl()
	if err != nil {
		d.log.Error("control socket", "err", err)
		return exitFailure
	}
	d.closers = append(d.closers, ctl)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.life.Store(&runCtx)
	if err := d.startMetrics(runCtx); err != nil {
		d.log.Error("cannot serve metrics", "err", err)
		return exitFailure
	}
	go d.watchFence(runCtx)
	if d.reach != nil {
		if err := d.reach.start(runCtx); err != nil {
			d.log.Error("cannot watch the VM's network", "err", err)
			return exitFailure
		}
		go d.watchReach(runCtx)
	}
	if d.cfg.role == wire.RoleSecondary {
		go d.join(runCtx)
	} else {
		// A new pair's switch may still send the VM's address elsewhere
		// (an earlier pair, another port): say where it is now.
		d.announce(runCtx, "start")
	}
	go d.progress(runCtx)
	go d.trackDisk(runCtx)
	d.log.Info("started", "role", d.cfg.role, "listen", d.listener.Addr(), "peer", d.cfg.peer, "mode", d.cfg.mode, "control", d.cfg.control,
		"allow_peers", strings.Join(d.cfg.allowPeers, ","))
	if len(d.cfg.allowPeers) == 0 {
		d.log.Warn("any host with a certificate from this CA (or the pre-shared key) may join as secondary; name the expected ones with --allow-peers")
	}
	d.link.all = d.transports
	err = d.ag.Run(runCtx, &d.link)
	d.spans.log(d.log)
	d.logLiveness()
	switch {
	case errors.Is(err, agent.ErrArbiterUnusable):
		d.log.Error("stopping: the arbiter cannot be used, so this host can neither serve nor take over; fix "+d.cfg.arbiterWhere()+" and start again", "err", err)
		return exitFailure
	case d.yielded.Load():
		d.log.Warn("halted: this host yielded the VM because it cannot reach the VM's network; restart it as a secondary once the network is back", "reach_check", d.reach.String())
		return exitHalted
	case errors.Is(err, agent.ErrSecondaryDiskFailing):
		// Closing the transports (d.close) is what tells the primary at
		// once that its secondary is gone: it goes on unprotected.
		d.log.Error("stopping: this secondary cannot write its disk, so it left the pair rather than stall the primary, which goes on unprotected; free space on the disk's filesystem (or repair it), then start this host again as a secondary",
			"disk", d.cfg.disk, "err", err)
		return exitFailure
	case errors.Is(err, agent.ErrHalted):
		d.log.Warn("halted: another host is primary for this VM; restart this one as a secondary to re-protect it", "err", err)
		return exitHalted
	case ctx.Err() != nil:
		d.log.Info("stopped by signal")
		d.recordCleanStop()
		return exitOK
	case err != nil:
		d.log.Error("failed", "err", err)
		return exitFailure
	}
	d.log.Info("the guest exited and every output has left")
	d.recordCleanStop()
	return exitOK
}

// onEpoch is agent.Config.OnEpoch: this host is primary in a new epoch;
// its disk follows that epoch from now on.
func (d *daemon) onEpoch(epoch, fence uint64) error {
	return d.recordDisk(diskRolePrimary, epoch, d.ag.Status().Released, false)
}

// diskTracked says whether this host keeps a side file for its disk: it
// has a disk of its own (with --shared-storage both hosts use one disk,
// current whichever host ran last, and a secondary never writes it).
func (d *daemon) diskTracked() bool { return d.cfg.disk != "" && !d.cfg.sharedStorage }

// recordDisk writes the disk's side file, if this host has a disk.
func (d *daemon) recordDisk(role string, epoch, seq uint64, clean bool) error {
	if !d.diskTracked() {
		return nil
	}
	d.diskMu.Lock()
	defer d.diskMu.Unlock()
	st := diskState{VMID: d.cfg.vmID, Host: d.cfg.hostName, Epoch: epoch, Role: role, Seq: seq, Clean: clean}
	if err := writeDiskState(d.cfg.disk, st); err != nil {
		return fmt.Errorf("--disk %s: %w", d.cfg.disk, err)
	}
	d.diskLast = st
	return nil
}

// diskJoining marks the disk as being overwritten by a checkpoint.
func (d *daemon) diskJoining() error {
	if !d.diskTracked() {
		return nil
	}
	d.diskMu.Lock()
	d.joining, d.joinRestores = true, d.ag.Stats().Restores
	d.diskMu.Unlock()
	return d.recordDisk(diskRoleJoining, d.ag.Status().Epoch, 0, false)
}

// diskTrackInterval is how often the disk's side file is brought up to
// date with the log position (epochs and joins are recorded at once).
const diskTrackInterval = time.Second

// trackDisk keeps the disk's side file's position current, and records a
// secondary's disk as a replica once a restore has made it one.
func (d *daemon) trackDisk(ctx context.Context) {
	if !d.diskTracked() {
		return
	}
	t := time.NewTicker(diskTrackInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.updateDisk(false); err != nil {
			d.log.Error("cannot record the disk's state", "err", err)
		}
	}
}

// updateDisk writes what the disk is current to now, if it changed.
func (d *daemon) updateDisk(clean bool) error {
	s := d.ag.Status()
	restores := d.ag.Stats().Restores
	d.diskMu.Lock()
	last, joining, joinRestores := d.diskLast, d.joining, d.joinRestores
	d.diskMu.Unlock()
	role := ""
	switch {
	case s.Role == lockstep.RolePrimary && last.Role == diskRolePrimary && last.Epoch == s.Epoch:
		role = diskRolePrimary // epochs are recorded by onEpoch and goLive
	case (s.Role == lockstep.RoleSecondary || s.Role == lockstep.RoleCandidate) && s.Synced && (!joining || restores > joinRestores):
		role = diskRoleSecondary
	default:
		return nil
	}
	if last.Role == role && last.Epoch == s.Epoch && last.Seq == s.Released && last.Clean == clean {
		return nil
	}
	if role == diskRoleSecondary {
		d.diskMu.Lock()
		d.joining = false
		d.diskMu.Unlock()
	}
	return d.recordDisk(role, s.Epoch, s.Released, clean)
}

// errNotPrimary is wrapped by newDaemon's error when the arbiter's record
// says another host is, or may be, primary: exit code 3.
var errNotPrimary = errors.New("another host is or may be primary")

// firstEpoch decides, from the arbiter's record and the side file of this
// host's disk (diskstate.go), which epoch this host asks for when it
// starts as primary:
//
//   - 1 on a VM never run;
//   - the next one when this host was the last primary and its disk says
//     so (it stopped cleanly, or it crashed: its disk is the newest, as no
//     other host was granted an epoch since), or when an operator reset
//     the record (ftvm arbiter reset, ftvm recover);
//   - with no disk of its own (no --disk, or --shared-storage), the next
//     one whenever this host holds the record.
//
// Anything else is refused: the record's holder may be running, or its
// disk is newer than this host's; the error names that host.
func (d *daemon) firstEpoch() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), arbiterReadTimeout)
	defer cancel()
	st, err := d.arb.State(ctx, d.cfg.vmID)
	if err != nil {
		return 0, err
	}
	me, vm := d.cfg.hostName, d.cfg.vmID
	var ds diskState
	hasState, tracked := false, d.diskTracked()
	if tracked {
		if ds, hasState, err = readDiskState(d.cfg.disk); err != nil {
			return 0, err
		}
		if hasState && ds.VMID != vm {
			return 0, fmt.Errorf("--disk %s belongs to VM %q, not %q (its side file %s says so)", d.cfg.disk, ds.VMID, vm, diskStatePath(d.cfg.disk))
		}
	}
	diskSays := "has no state file (a new disk, or one this ftvm version never ran)"
	if hasState {
		diskSays = "is " + ds.String()
	}
	recoverHint := fmt.Sprintf("if that host's disk is lost, run ftvm recover --arbiter-dir %s --vm-id %s --disk DISK on the host whose disk is the newest left", d.cfg.arbiterDir, vm)
	if d.cfg.arbiterKind == arbiterKindEtcd {
		recoverHint = fmt.Sprintf("if that host's disk is lost, adopt the record for the host whose disk is the newest left (lockstep/arbiter/etcd Adopt: key %svm/%s/released; ftvm recover works on --arbiter file only)", d.cfg.etcd.prefix, vm)
	}
	// With no disk of its own there is nothing to be behind: being the
	// record's holder is enough (no other host can be primary in its
	// epoch). A disk with no side file that exists is one an older ftvm
	// ran: trusted after this host's clean stop only.
	current := !tracked || hasState && ds.Role == diskRolePrimary && ds.Host == me && ds.Epoch >= st.Epoch
	if tracked && !hasState && st.Released {
		if _, err := os.Stat(d.cfg.disk); err == nil {
			current = true
		}
	}
	switch {
	case st.Epoch == 0:
		return 1, nil
	case st.Released && st.Holder == "":
		if !current {
			d.log.Warn("the arbiter's record was reset: starting as primary although this host's disk may be behind", "disk", d.cfg.disk, "disk_state", diskSays, "epoch", st.Epoch)
		}
		return st.Epoch + 1, nil
	case st.Holder == me && current:
		d.log.Info("this host was the last primary and its disk is current: taking the next epoch", "last_epoch", st.Epoch, "released", st.Released, "disk_state", diskSays)
		return st.Epoch + 1, nil
	case st.Holder == me && st.Released:
		return 0, fmt.Errorf("%w: this host stopped cleanly as primary of VM %s at epoch %d, but its disk %s %s: give the disk it ran with, or %s",
			errNotPrimary, vm, st.Epoch, d.cfg.disk, diskSays, recoverHint)
	case st.Holder == me:
		return 0, fmt.Errorf("%w: the arbiter granted epoch %d of VM %s to this host (%s), but its disk %s %s: the newest disk is on the host that was primary after this one joined it; start that host as primary, or %s",
			errNotPrimary, st.Epoch, vm, me, d.cfg.disk, diskSays, recoverHint)
	case st.Released:
		return 0, fmt.Errorf("%w: host %q stopped cleanly as primary of VM %s at epoch %d, so it has the newer disk (this host's %s): start %q as primary (and this host as its secondary); %s",
			errNotPrimary, st.Holder, vm, st.Epoch, diskSays, st.Holder, recoverHint)
	}
	who := fmt.Sprintf("host %q", st.Holder)
	if st.Holder == "" {
		who = "a host"
	}
	return 0, fmt.Errorf("%w: the arbiter granted epoch %d of VM %s to %s, which has the newer disk (this host's %s) and may still be primary. If it runs, start this host as a secondary; if it stopped, start it as primary; %s",
		errNotPrimary, st.Epoch, vm, who, diskSays, recoverHint)
}

// arbiterReadTimeout bounds the daemon's reads and writes of the arbiter's
// record outside the protocol (at start and at a clean stop).
const arbiterReadTimeout = 5 * time.Second

// recordCleanStop tells the arbiter that this host, if it was primary,
// stopped cleanly: it may take the next epoch by itself when it starts
// again. Nothing is recorded if another host took a newer epoch meanwhile.
func (d *daemon) recordCleanStop() {
	// Run has returned: every write released is on the disk.
	if err := d.updateDisk(true); err != nil {
		d.log.Error("cannot record the disk's state", "err", err)
	}
	s := d.ag.Status()
	if s.Role != lockstep.RolePrimary || s.Epoch == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), arbiterReadTimeout)
	defer cancel()
	done, err := d.arb.Release(ctx, d.cfg.vmID, s.Epoch, s.Fence)
	switch {
	case err != nil:
		d.log.Error("could not record the clean stop in the arbiter; this host will be refused as primary until ftvm arbiter reset", "epoch", s.Epoch, "err", err)
	case done:
		d.log.Info("recorded a clean stop in the arbiter: this host may start again as primary", "epoch", s.Epoch, "fence", s.Fence)
	default:
		d.log.Info("no clean stop recorded: another host holds a newer epoch", "epoch", s.Epoch)
	}
}

// join dials the primary (retrying while nothing answers) and sends
// through it until this host goes live.
func (d *daemon) join(ctx context.Context) {
	c := d.trCfg
	c.PeerNames = nil
	if c.TLS != nil || d.cfg.peerNameGiven {
		// Under PSK the primary's name is checked only when given: the
		// host part of --peer is an address, not a --tls-name.
		c.PeerNames = []string{d.cfg.peerName}
	}
	if c.TLS != nil {
		c.TLS = c.TLS.Clone()
		c.TLS.ServerName = d.cfg.peerName
		if d.cfg.peerNameFromAddr {
			d.log.Warn("--peer is an address and --peer-name is not given: the primary's certificate must carry that address, or the handshake fails; give --peer-name with the primary's --tls-name", "peer", d.cfg.peer)
		}
	}
	var src frameSource
	tr, err := rdma.Dial(ctx, d.cfg.peer, d.ringConfig(c, d.dialProvider, &src))
	src.set(tr)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("cannot reach the primary; the node keeps asking, restart with the right --peer if it is wrong", "peer", d.cfg.peer, "err", err)
		}
		return
	}
	d.mu.Lock()
	live := !d.wentLive.IsZero()
	if !live {
		d.dialer = tr
		d.link.set(tr)
	}
	d.mu.Unlock()
	if live {
		tr.Close()
		return
	}
	go d.watch(tr)
	<-ctx.Done()
	tr.Close()
}

// watch logs a transport's events and tells the agent when the lane it
// sends on loses its peer.
func (d *daemon) watch(tr *rdma.Transport) {
	for ev := range tr.Events() {
		switch ev.Kind {
		case transport.EventLaneDown:
			d.log.Info("peer connection lost", "lane", ev.Lane, "peer", ev.Peer, "err", ev.Err)
			if ev.Lane == transport.LaneControl && d.link.current() == tr {
				d.ag.PeerLost()
			}
		case transport.EventLaneUp:
			d.log.Info("peer connected", "lane", ev.Lane, "peer", ev.Peer)
			if lv := tr.TCP().Liveness(); !lv.Realtime && lv.RealtimeError != "" {
				d.realtimeWarning.Do(func() {
					d.log.Warn("the transport's watchdog runs at normal priority: a loaded host can delay its heartbeats and looks, and the peer may take this host for dead", "why", lv.RealtimeError)
				})
			}
		case transport.EventPeerRejected:
			reason := tcpfallback.RejectReason(ev.Err)
			if ok, suppressed := d.rejects.note(ev.Time, reason); ok {
				d.log.Warn("refused a connection", "peer", ev.Peer, "reason", reason, "err", ev.Err,
					"suppressed_since_last", suppressed)
			}
		default:
			d.log.Debug("transport", "event", ev.String())
		}
	}
}

func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i].Close()
	}
	d.closers = nil
	if d.nic != nil {
		d.nic.Close() // a VM closes only its loan
	}
}

// controlPath makes sure the control socket's directory exists.
func controlPath(p string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("control socket directory: %w", err)
	}
	return p, nil
}

// transports are the transports this daemon has open.
func (d *daemon) transports() []*rdma.Transport {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ts []*rdma.Transport
	for _, t := range []*rdma.Transport{d.listener, d.dialer} {
		if t != nil {
			ts = append(ts, t)
		}
	}
	return ts
}

// progressInterval is how often the re-protection progress is redrawn.
const progressInterval = 100 * time.Millisecond

// progress shows a checkpoint on its way to a joining secondary: a bar
// redrawn in place when stderr is a terminal, a log line at the start and
// the end otherwise.
func (d *daemon) progress(ctx context.Context) {
	tty := term.IsTerminal(d.term)
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	syncing, wasProtected := false, false
	var began time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := d.ag.Status()
		sent, total := d.ag.SyncProgress()
		if s.Protected && !wasProtected && !syncing && !s.Syncing {
			d.metrics.joins.Add(1) // a join shorter than a tick
		}
		wasProtected = s.Protected
		switch {
		case s.Syncing && !syncing:
			syncing, began = true, time.Now()
			d.metrics.joins.Add(1)
			d.log.Info("re-protecting: a secondary joins; shipping its checkpoint")
		case !s.Syncing && syncing:
			syncing = false
			if tty {
				fmt.Fprintf(d.term, "\r%s\n", progressBar(total, total))
			}
			d.log.Info("protected again", "checkpoint_bytes", total, "took", time.Since(began).Round(time.Millisecond), "protected", s.Protected)
		case syncing && tty:
			fmt.Fprintf(d.term, "\r%s", progressBar(sent, total))
		}
	}
}

// progressBar draws "re-protecting [#####.....]  52%  3.1/6.0 MiB".
func progressBar(sent, total int64) string {
	const width = 30
	frac := 0.0
	if total > 0 {
		frac = min(1, float64(sent)/float64(total))
	}
	n := int(frac * width)
	return fmt.Sprintf("re-protecting [%s%s] %3.0f%%  %.1f/%.1f MiB", strings.Repeat("#", n), strings.Repeat(".", width-n), 100*frac, float64(sent)/(1<<20), float64(total)/(1<<20))
}
