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
	"syscall"
	"time"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
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
arbiter's lock (--arbiter-dir, shared by both hosts), opens its TAP,
announces the VM's MAC with a gratuitous ARP and goes on as primary; it
then accepts a new secondary on --listen, which joins from a checkpoint of
memory, CPU, devices and disk: copies of the VM taken while it runs
(--precopy-rounds), then a short pause for what changed meanwhile, while a
progress bar shows the transfer.

ftvm status --control PATH asks a running daemon for its role, epoch, log
lag, held outputs and output-hold latency.

Exit codes: 0 stopped by SIGINT/SIGTERM or the guest exited, 1 failure,
2 usage error, 3 halted: another host is primary (restart this one as a
secondary to re-protect the VM).

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
	log := newLogger(e.stderr, cfg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := newDaemon(cfg, log, e.stderr)
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

	arb     *arbiter.File
	diskF   *os.File
	console io.Writer
	closers []io.Closer
	guest   []byte

	ag       *agent.Agent
	link     peerLink
	listener *tcpfallback.Transport
	dialer   *tcpfallback.Transport
	trCfg    tcpfallback.Config

	// nic holds the VM's network backend open for the daemon's life and
	// lends it to each VM; its gate opens when this host serves live.
	nic *vmm.NICGate

	mu       sync.Mutex
	wentLive time.Time
}

func newDaemon(c *daemonConfig, log *slog.Logger, term io.Writer) (_ *daemon, err error) {
	d := &daemon{cfg: c, log: log, term: term, started: time.Now()}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if d.guest, err = os.ReadFile(c.guest); err != nil {
		return nil, fmt.Errorf("guest program: %w (build the guests with make guests, or give --guest)", err)
	}
	if err := os.MkdirAll(c.arbiterDir, 0o700); err != nil {
		return nil, fmt.Errorf("arbiter directory: %w", err)
	}
	if d.arb, err = arbiter.NewFile(c.arbiterDir); err != nil {
		return nil, err
	}
	if c.disk != "" {
		if d.diskF, err = openDisk(c.disk, c.diskBytes); err != nil {
			return nil, err
		}
		d.closers = append(d.closers, d.diskF)
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
	node := lockstep.Config{
		VMID: c.vmID, Role: c.role, Mode: c.mode,
		LogWindowEntries: c.window, HeartbeatTicks: c.heartbeatTicks, PeerTimeoutTicks: c.peerTimeoutTicks,
		PrecopyRounds:      c.precopyRounds,
		MaxCheckpointBytes: checkpointBound(c),
	}
	d.ag, err = agent.New(agent.Config{
		Node:             node,
		NewVM:            d.newVM,
		Boot:             d.boot,
		Arbiter:          d.arb,
		TickInterval:     c.tick,
		WaitForSecondary: c.waitForSecondary,
		SeparateStorage:  !c.sharedStorage,
		OnGoLive:         d.goLive,
		Logger:           d.log,
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// openDisk opens this host's disk file, creating it at size if missing.
func openDisk(path string, size uint64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
			err = f.Truncate(int64(size))
		}
	}
	if err != nil {
		if f != nil {
			f.Close()
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
	c := tcpfallback.Config{VMID: d.cfg.vmID, OnFrame: func(f transport.Frame) { d.ag.HandleFrame(f) }}
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
	d.mu.Lock()
	d.wentLive = time.Now()
	// Sends go to whoever joins us now; the old primary is dead or fenced.
	d.link.set(d.listener)
	old := d.dialer
	d.mu.Unlock()
	if old != nil {
		go old.Close() // not on the loop: Close waits for the transport's readers
	}
	if d.nic != nil {
		d.nic.Open()
		if d.cfg.vmIP.IsValid() {
			garp := gratuitousARP(d.cfg.mac, d.cfg.vmIP.As4())
			for range garpCount {
				if err := d.nic.WriteFrame(garp); err != nil {
					d.log.Warn("gratuitous ARP not sent", "err", err)
				}
			}
		}
	}
	d.log.Info("live", "epoch", epoch, "fence", fence, "tap", d.cfg.tap, "announced", d.cfg.vmIP)
	return nil
}

// garpCount is how many gratuitous ARPs a new primary sends: more than one
// in case the first meets a switch port still coming up.
const garpCount = 2

func (d *daemon) run(ctx context.Context) int {
	defer d.close()
	var err error
	if d.listener, err = tcpfallback.Listen(d.cfg.listen, d.trCfg); err != nil {
		d.log.Error("cannot listen for a secondary", "err", err)
		return exitFailure
	}
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
	if d.cfg.role == wire.RoleSecondary {
		go d.join(runCtx)
	}
	go d.progress(runCtx)
	d.log.Info("started", "role", d.cfg.role, "listen", d.listener.Addr(), "peer", d.cfg.peer, "mode", d.cfg.mode, "control", d.cfg.control)
	err = d.ag.Run(runCtx, &d.link)
	switch {
	case errors.Is(err, agent.ErrHalted):
		d.log.Warn("halted: another host is primary for this VM; restart this one as a secondary to re-protect it", "err", err)
		return exitHalted
	case ctx.Err() != nil:
		d.log.Info("stopped by signal")
		return exitOK
	case err != nil:
		d.log.Error("failed", "err", err)
		return exitFailure
	}
	d.log.Info("the guest exited and every output has left")
	return exitOK
}

// join dials the primary (retrying while nothing answers) and sends
// through it until this host goes live.
func (d *daemon) join(ctx context.Context) {
	c := d.trCfg
	if c.TLS != nil {
		c.TLS = c.TLS.Clone()
		c.TLS.ServerName = d.cfg.peerName
	}
	tr, err := tcpfallback.Dial(ctx, d.cfg.peer, c)
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
func (d *daemon) watch(tr *tcpfallback.Transport) {
	for ev := range tr.Events() {
		switch ev.Kind {
		case transport.EventLaneDown:
			d.log.Info("peer connection lost", "lane", ev.Lane, "peer", ev.Peer, "err", ev.Err)
			if ev.Lane == transport.LaneControl && d.link.current() == tr {
				d.ag.PeerLost()
			}
		case transport.EventLaneUp:
			d.log.Info("peer connected", "lane", ev.Lane, "peer", ev.Peer)
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
func (d *daemon) transports() []*tcpfallback.Transport {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ts []*tcpfallback.Transport
	for _, t := range []*tcpfallback.Transport{d.listener, d.dialer} {
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
	tty := isTerminal(d.term)
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	syncing := false
	var began time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := d.ag.Status()
		sent, total := d.ag.SyncProgress()
		switch {
		case s.Syncing && !syncing:
			syncing, began = true, time.Now()
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

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
