package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/bench/e2e"
	"github.com/ftvm/ftvm/bench/ft"
	"github.com/ftvm/ftvm/internal/term"
)

func init() {
	benchSuites.add(&command{
		name:    "ft",
		summary: "what fault tolerance costs: each workload unprotected and protected (both ack modes) in one run, the paper-style table",
		run:     runBenchFT,
	})
}

// The cell lengths of a full run and of --quick: 5 workloads × 5 setups
// (unprotected, two ack modes over tcp and shm) fit 10 minutes, and 1
// minute with --quick.
const (
	benchFTWarmup      = 3 * time.Second
	benchFTWindow      = 15 * time.Second
	benchFTQuickWarmup = 500 * time.Millisecond
	benchFTQuickWindow = 1200 * time.Millisecond
)

func runBenchFT(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm bench ft", flag.ContinueOnError)
	quick := fs.Bool("quick", false, fmt.Sprintf("short cells (%v warm-up, %v measured): about a minute in all", benchFTQuickWarmup, benchFTQuickWindow))
	warmup := fs.Duration("warmup", 0, fmt.Sprintf("how long each cell runs before it is measured (default %v, --quick %v)", benchFTWarmup, benchFTQuickWarmup))
	window := fs.Duration("window", 0, fmt.Sprintf("how long each cell is measured (default %v, --quick %v)", benchFTWindow, benchFTQuickWindow))
	out := fs.String("out", "", "output directory for results.md, results.json, the SVG plots, and the daemons' logs and files in logs/ and work/, which a run replaces (default: ftvm-bench-ft-DATE-TIME here)")
	workloads := fs.String("workloads", "", "comma-separated workloads to run (default all: "+strings.Join(workloadNames(), ",")+")")
	transports := fs.String("transports", strings.Join(ft.DefaultTransports, ","), "comma-separated transports of the protected setups: "+strings.Join(ft.TransportNames(), ", ")+" (rdma needs an RDMA device)")
	prefix := fs.String("prefix", "ftvm-bench", "names the test bed's network namespaces (PREFIX-a, -b, -c, -sw): two runs at once need two prefixes")
	guests := fs.String("guests", "vmm/guests/build", "directory of the guest programs (make guests builds them)")
	daemonFlags := fs.String("daemon-flags", "", "more flags for every daemon, space-separated (e.g. '--heartbeat-timeout 300ms' on a machine so loaded that pairs break by themselves; the default is the daemon's own)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm bench ft [--quick] [--out DIR] [--workloads a,b] [--transports tcp,shm]

Measures what protecting a VM costs, as the VMware FT paper's tables do:
each workload runs on an unprotected VM (a primary with no secondary) and
on a protected pair with ack-on-receipt and with ack-on-compare over each
transport, one after the other in the same run, each cell on a fresh pair
of ftvm daemons in the test bed of 'ftvm demo' (two hosts and a client in
network namespaces). Every protected throughput is divided by the
unprotected one of the same run.

Workloads: kv-sat (kvstore, closed loop), kv-rate (kvstore at 1000
requests/s), memstress (its own iterations per second), kv-disk (kvstore,
PUTs of 64-byte values, a write-ahead log sector and an fdatasync each),
nondet (a divergence and a resync on every line).

Columns: throughput and protected/unprotected (with the target where the
issue sets one: 0.9 for kv-sat, 0.95 for memstress), client latency
p50/p99/p99.9, output-hold latency, log bandwidth (Mbit/s, bytes per
request), the frames each daemon's transport sent per request (heartbeats
included) and the times each daemon's threads were put on a CPU per
request (wake-ups, from schedstat), resyncs per second and their pause,
and the CPU each daemon used (/proc/PID/stat); results.json also has the
writes (system calls) per request. A row below its target says why from its own figures,
among them how long each vCPU thread ran and waited for a CPU, and the
machine's idle and steal time ("CPU-bound" when the vCPU waited for CPUs
rather than for the protocol).
It writes results.md, results.json and latency-distribution plots (SVG)
into --out, and draws a progress line while it runs: about 8 minutes in
all, --quick under one (with the default transports, tcp and shm).

It needs root, /dev/kvm, /dev/net/tun, network namespaces and the ip and
nft commands, and says which is missing. On a machine shared with other
work the ratios move with its load; the load average is in the table.

Exit codes: 0 ok (a missed target is reported, not an error), 1 a cell
could not run, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	o := ft.Options{Warmup: benchFTWarmup, Window: benchFTWindow, Quick: *quick, Prefix: *prefix, DaemonFlags: strings.Fields(*daemonFlags)}
	if *quick {
		o.Warmup, o.Window = benchFTQuickWarmup, benchFTQuickWindow
	}
	if *warmup != 0 {
		o.Warmup = *warmup
	}
	if *window != 0 {
		o.Window = *window
	}
	if o.Warmup <= 0 || o.Window <= 0 {
		fmt.Fprintln(e.stderr, "ftvm bench ft: --warmup and --window must be positive")
		return exitUsage
	}
	if err := e2e.ValidatePrefix(*prefix); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: --prefix: %v\n", err)
		return exitUsage
	}
	var err error
	if o.Workloads, err = ft.SelectWorkloads(splitList(*workloads)); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: --workloads: %v\n", err)
		return exitUsage
	}
	o.Transports = splitList(*transports)
	if _, err := ft.Setups(o.Transports); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: --transports: %v\n", err)
		return exitUsage
	}
	if len(o.Transports) == 0 {
		fmt.Fprintln(e.stderr, "ftvm bench ft: --transports is empty: give at least one (tcp)")
		return exitUsage
	}
	if o.GuestsDir, err = filepath.Abs(*guests); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: %v\n", err)
		return exitFailure
	}
	var missing []string
	for _, w := range o.Workloads {
		if _, err := os.Stat(filepath.Join(o.GuestsDir, w.Guest)); err != nil {
			missing = append(missing, fmt.Sprintf("the %s guest in %s: build it with make guests, or give --guests", w.Guest, o.GuestsDir))
			break
		}
	}
	missing = append(missing, demoMissing(filepath.Join(o.GuestsDir, "kvstore"))...)
	if len(missing) > 0 {
		fmt.Fprintln(e.stderr, "ftvm bench ft cannot run on this machine:")
		for _, m := range missing {
			fmt.Fprintln(e.stderr, "  - "+m)
		}
		return exitFailure
	}
	if o.Ftvm, err = os.Executable(); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: finding the ftvm binary to run as the daemons: %v\n", err)
		return exitFailure
	}
	o.OutDir = *out
	if o.OutDir == "" {
		o.OutDir = "ftvm-bench-ft-" + time.Now().Format("20060102-150405")
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: --out: %v\n", err)
		return exitFailure
	}
	// One line redrawn in place on a terminal, a line a second otherwise.
	tty := term.IsTerminal(e.stdout)
	clearLine := ""
	if tty {
		clearLine = "\r\x1b[K"
	}
	var last time.Time
	o.Progress = func(s string) {
		if tty {
			fmt.Fprint(e.stdout, clearLine+s)
		} else if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintln(e.stdout, s)
		}
	}
	o.Event = func(s string) { fmt.Fprintln(e.stdout, clearLine+s) }

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	rep, err := ft.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s\nftvm bench ft: %v (the daemons' logs are in %s)\n", clearLine, err, filepath.Join(o.OutDir, "logs"))
		return exitFailure
	}
	paths, err := rep.Write(o.OutDir)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench ft: writing the results: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "%s\n%s\nran in %v; wrote %s\n", clearLine, rep.Markdown(), time.Since(started).Round(time.Second), strings.Join(paths, ", "))
	return exitOK
}

func workloadNames() []string {
	var names []string
	for _, w := range ft.Workloads() {
		names = append(names, w.Name)
	}
	return names
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
