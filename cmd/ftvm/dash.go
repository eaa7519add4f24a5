package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ftvm/ftvm/bench/dash"
)

func init() {
	commands.add(&command{
		name:    "dash",
		summary: "serve a live web dashboard of a protected VM: hold latency, lag, bandwidth, round trip, events",
		run:     runDash,
	})
}

const defaultDashListen = "127.0.0.1:8080"

func runDash(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm dash", flag.ContinueOnError)
	vmID := fs.String("vm-id", defaultVMID, "the VM whose daemon to watch when --control is not given (names the default socket)")
	control := fs.String("control", "", "the daemons' control sockets, comma-separated, NAME=PATH or PATH (one per host of the pair; default "+defaultControlDir+"/VM-ID.sock)")
	listen := fs.String("listen", defaultDashListen, "address to serve the page on (host:port)")
	interval := fs.Duration("interval", dash.DefaultPollInterval, "how often to ask the daemons and update the page")
	yellow := fs.Float64("lag-yellow", dash.DefaultLagYellowSeconds, "the lag, in seconds, above which it shows yellow")
	red := fs.Float64("lag-red", dash.DefaultLagRedSeconds, "the lag, in seconds, above which it shows red")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm dash [--control [a=]PATH[,[b=]PATH]] [--listen 127.0.0.1:8080] [--interval 250ms]

Serves a live page for one protected VM at http://LISTEN/: for each host
given (both hosts of a pair, by their control sockets) its role, epoch,
lag, held outputs, counters and join progress; the output-hold latency
p50/p99/p99.9 of each interval from the daemons' HDR histograms; the
latency distribution of the last 10 s; the secondary's lag coloured as
VMware FT colours its vLockstep interval (green up to --lag-yellow,
yellow up to --lag-red, red beyond or when unprotected); the log
bandwidth; the transport's round trip; and a timeline of events
(failover, a host down, resync, join, divergence). The page updates
every --interval over server-sent events; it needs no network beyond
this address (its script is in the binary).

The page is served on loopback by default: it shows the VM's state to
whoever reaches it.

Exit codes: 0 stopped by SIGINT/SIGTERM, 1 failure, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	list := *control
	if list == "" {
		list = defaultControlDir + "/" + *vmID + ".sock"
	}
	sources, err := dash.ParseSources(list)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm dash: --control: %v\n", err)
		return exitUsage
	}
	if *interval <= 0 {
		fmt.Fprintln(e.stderr, "ftvm dash: --interval must be positive")
		return exitUsage
	}
	srv, err := dash.NewServer(dash.Config{Sources: sources, PollInterval: *interval, LagYellowSeconds: *yellow, LagRedSeconds: *red})
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm dash: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	url, err := startDash(ctx, *listen, srv)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm dash: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "ftvm dash: serving %s (watching %s)\n", url, list)
	<-ctx.Done()
	return exitOK
}

// startDash polls and serves srv on addr until ctx ends; it returns the
// page's URL.
func startDash(ctx context.Context, addr string, srv *dash.Server) (string, error) {
	_, bound, err := dash.Listen(ctx, addr, srv)
	if err != nil {
		return "", fmt.Errorf("--listen %s: %w", addr, err)
	}
	go srv.Run(ctx)
	return "http://" + bound + "/", nil
}
