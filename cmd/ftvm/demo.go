package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/bench/dash"
	"github.com/ftvm/ftvm/bench/e2e"
	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/internal/term"
)

func init() {
	commands.add(&command{
		name:    "demo",
		summary: "protect a kvstore VM on two namespace hosts, kill the primary under load, show the failover",
		run:     runDemo,
	})
}

func runDemo(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm demo", flag.ContinueOnError)
	kills := fs.Int("kills", 1, "how many times to kill the primary")
	settle := fs.Duration("settle", 3*time.Second, "how long the protected pair serves before each kill, and after the last")
	rate := fs.Float64("rate", 1000, "client requests per second")
	mode := fs.String("mode", "receipt", "ack mode: receipt or compare")
	guest := fs.String("guest", defaultGuest, "the kvstore guest (make guests builds it)")
	transportKind := fs.String("transport", "tcp", "what carries the daemons' control lane: tcp, or shm (a shared-memory ring: the two hosts are namespaces of this machine); the report measures the same transport's round trip")
	keep := fs.String("keep", "", "keep the daemons' logs, consoles and disks in this directory (default: a temporary one, removed)")
	dashAddr := fs.String("dash", "", "serve the live dashboard (ftvm dash) of the pair on this address, e.g. 127.0.0.1:8080, and keep it and the pair up after the table until interrupted")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm demo [--kills N] [--settle 3s] [--rate 1000] [--mode receipt|compare] [--transport tcp|shm] [--dash ADDR]

Runs the whole of ftvm on this machine, as root: three network namespaces
on a switch (two hosts and a client, see bench/e2e), ftvm primary and ftvm
secondary as separate processes on the two hosts, each with its own disk
and a TAP for the kvstore VM, a client sending a steady stream of PUT, GET
and INC requests with a live progress line, and then SIGKILL of the
primary. The secondary takes over, the killed host comes back as a new
secondary and the VM is protected again. It ends with a table: requests
served, failover time, output-hold latency against the transport's round
trip, log bandwidth, and whether the client's history is linearizable.
With --transport shm the daemons' control lane (log entries and
acknowledgements) runs over shared-memory rings instead of TCP, and the
round trip the hold latency is held against is measured over shm too.

It needs root, /dev/kvm, /dev/net/tun, network namespaces and the ip and
nft commands, and says which is missing.

Exit codes: 0 the run held (linearizable, served after every kill),
1 it did not or could not run, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	if *kills < 1 || *rate <= 0 || *settle <= 0 {
		fmt.Fprintln(e.stderr, "ftvm demo: --kills, --rate and --settle must be positive")
		return exitUsage
	}
	if *mode != "receipt" && *mode != "compare" {
		fmt.Fprintf(e.stderr, "ftvm demo: --mode %q: want receipt or compare\n", *mode)
		return exitUsage
	}
	if *transportKind != transportTCP && *transportKind != transportShm {
		fmt.Fprintf(e.stderr, "ftvm demo: --transport %q: want tcp or shm (both hosts of the demo are on this machine)\n", *transportKind)
		return exitUsage
	}
	if missing := demoMissing(*guest); len(missing) > 0 {
		fmt.Fprintln(e.stderr, "ftvm demo cannot run on this machine:")
		for _, m := range missing {
			fmt.Fprintln(e.stderr, "  - "+m)
		}
		return exitFailure
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm demo: finding the ftvm binary to run as the daemons: %v\n", err)
		return exitFailure
	}
	guestPath, err := filepath.Abs(*guest)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm demo: %v\n", err)
		return exitFailure
	}
	dir := *keep
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ftvm-demo"); err != nil {
			fmt.Fprintf(e.stderr, "ftvm demo: %v\n", err)
			return exitFailure
		}
		defer os.RemoveAll(dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, e, demoConfig{ftvm: self, guest: guestPath, dir: dir, kills: *kills, settle: *settle, rate: *rate, mode: *mode, dash: *dashAddr, transport: *transportKind}); err != nil {
		fmt.Fprintf(e.stderr, "\nftvm demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}

type demoConfig struct {
	ftvm, guest, dir string
	kills            int
	settle           time.Duration
	rate             float64
	mode             string
	dash             string // serve the dashboard here ("": none)
	transport        string
}

// demoMissing lists what this machine lacks for the demo, each with what
// to do about it.
func demoMissing(guest string) []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root: the demo makes network namespaces, bridges and TAP devices (run it with sudo)")
	}
	for _, dev := range []struct{ path, why string }{
		{"/dev/kvm", "KVM runs the VMs (load kvm_intel or kvm_amd, or use a host with virtualisation on)"},
		{"/dev/net/tun", "TUN/TAP gives each VM its NIC (modprobe tun)"},
	} {
		f, err := os.OpenFile(dev.path, os.O_RDWR, 0)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s: %v: %s", dev.path, err, dev.why))
			continue
		}
		f.Close()
	}
	if err := e2e.CheckTools(); err != nil {
		missing = append(missing, err.Error())
	}
	if _, err := os.Stat(guest); err != nil {
		missing = append(missing, fmt.Sprintf("the kvstore guest %s: build it with make guests", guest))
	}
	return missing
}

func demo(ctx context.Context, e *env, c demoConfig) error {
	// On a terminal the client's progress line is redrawn in place, and a
	// message first clears it; elsewhere no escape codes are written.
	tty := term.IsTerminal(e.stdout)
	clearLine := ""
	if tty {
		clearLine = "\r\x1b[K"
	}
	say := func(format string, a ...any) { fmt.Fprintf(e.stdout, clearLine+format+"\n", a...) }
	logs := filepath.Join(c.dir, "logs")
	work := filepath.Join(c.dir, "work")
	for _, d := range []string{logs, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	say("setting up two hosts and a client in network namespaces (logs in %s)", logs)
	topo, err := e2e.Up(ctx, "ftvm-demo", e2e.WithLogDir(logs))
	if err != nil {
		return err
	}
	defer topo.Down()
	cluster, err := e2e.NewCluster(ctx, topo, e2e.ClusterConfig{Ftvm: c.ftvm, Guest: c.guest, Mode: c.mode, WorkDir: work, Transport: c.transport})
	if err != nil {
		return err
	}
	defer cluster.Close()
	say("host a %s, host b %s, client %s; the VM is %s (%s), kvstore on UDP port 7000",
		e2e.HostAddr(e2e.HostA), e2e.HostAddr(e2e.HostB), e2e.HostAddr(e2e.Client), e2e.VMAddr, e2e.VMMAC)
	if c.dash != "" {
		srv, err := dash.NewServer(dash.Config{Sources: []dash.Source{
			dash.ControlSource(string(e2e.HostA), cluster.ControlPath(e2e.HostA)),
			dash.ControlSource(string(e2e.HostB), cluster.ControlPath(e2e.HostB)),
		}})
		if err != nil {
			return err
		}
		url, err := startDash(ctx, c.dash, srv)
		if err != nil {
			return err
		}
		say("dashboard: %s", url)
		defer func() {
			say("the dashboard stays at %s with the pair serving; press Ctrl-C to stop", url)
			<-ctx.Done()
		}()
	}
	last := time.Time{}
	rep, err := e2e.Run(ctx, cluster, e2e.RunConfig{
		Fault:  e2e.KillPrimary,
		Rounds: c.kills,
		Settle: c.settle,
		Load: kvclient.Config{
			RatePerSec:  c.rate,
			Concurrency: 64,
			Retry:       kvclient.Retry{AttemptTimeout: 20 * time.Millisecond, AttemptsMax: 250},
		},
		Progress: func(s string) { say("%s", s) },
		LoadProgress: func(p kvclient.Progress) {
			// One line redrawn in place on a terminal, a line a second
			// otherwise.
			if tty {
				fmt.Fprintf(e.stdout, "\r\x1b[Kclient: %s", p.Line())
			} else if time.Since(last) >= time.Second {
				last = time.Now()
				fmt.Fprintf(e.stdout, "client: %s\n", p.Line())
			}
		},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s\n%s", clearLine, rep.Summary())
	var problems []string
	if rep.Linearizable != nil {
		problems = append(problems, "the client's history is not linearizable")
	}
	for i, r := range rep.Rounds {
		if r.Failover == 0 {
			problems = append(problems, fmt.Sprintf("no reply after kill %d", i+1))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
