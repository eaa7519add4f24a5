package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/bench/probe"
	"github.com/ftvm/ftvm/internal/term"
)

func init() {
	commands.add(&command{
		name:    "probe",
		summary: "time where a running primary's outputs spend their hold, with eBPF (root)",
		run:     runProbe,
	})
}

func runProbe(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm probe", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "the primary daemon's process ID (default: ask the daemon at --control)")
	vmID := fs.String("vm-id", defaultVMID, "the VM whose daemon to probe (names the default socket)")
	control := fs.String("control", "", "the primary's control socket, to find its process (default "+defaultControlDir+"/VM-ID.sock)")
	peerPID := fs.Int("peer-pid", 0, "its secondary's process ID, when it runs on this machine: time its turnaround and run-queue delays too")
	peerControl := fs.String("peer-control", "", "the secondary's control socket, instead of --peer-pid")
	duration := fs.Duration("duration", 0, "stop after this long (default: at SIGINT or when the daemon exits)")
	interval := fs.Duration("interval", time.Second, "how often the live table is redrawn")
	asJSON := fs.Bool("json", false, "print no live table, only the final report as one JSON object")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm probe [--pid N | --control PATH | --vm-id ID] [--peer-pid N | --peer-control PATH]
                  [--duration D] [--interval 1s] [--json]

Attaches eBPF probes (root) to a running ftvm primary and times where each
output spends its hold: the vCPU's exit to user space, the output held,
its log record written to the transport, the secondary's acknowledgement,
the release to the device backend and the frame's write into the TAP;
and how long each of the daemon's threads (the vCPU, the lane readers,
the loop, the rest) waited for a CPU once runnable. With --peer-pid (a
secondary on this machine) its turnaround from a transport read to the
next write and its threads' run-queue delays too. Prints a live table of
percentiles to p99.9, in microseconds, since the probe started; --json
prints the final report instead (fields: bench/probe.Report).

The probe points are functions of the daemon found by name in its ELF
symbol table (a stripped binary cannot be probed). tracefs is mounted at
/sys/kernel/tracing when it is not.

Exit codes: 0 ok, 1 the probe could not attach or read, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	if *interval <= 0 {
		fmt.Fprintf(e.stderr, "ftvm probe: --interval %v: give a positive interval\n", *interval)
		return exitUsage
	}
	if *pid == 0 {
		path := *control
		if path == "" {
			path = defaultControlDir + "/" + *vmID + ".sock"
		}
		r, err := queryStatus(context.Background(), path)
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm probe: %v (or give --pid)\n", err)
			return exitFailure
		}
		if r.Role != "primary" {
			fmt.Fprintf(e.stderr, "ftvm probe: the daemon at %s is a %s; probe the primary (its outputs are the ones held)\n", path, r.Role)
			return exitFailure
		}
		*pid = r.PID
	}
	if *peerPID == 0 && *peerControl != "" {
		r, err := queryStatus(context.Background(), *peerControl)
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm probe: --peer-control: %v\n", err)
			return exitFailure
		}
		*peerPID = r.PID
	}
	cfg := probe.Config{PID: *pid, PeerPID: *peerPID}
	p, err := probe.Attach(cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm probe: %v\n", err)
		return exitFailure
	}
	defer p.Close()
	started := time.Now()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	redraw := term.IsTerminal(e.stdout)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			// A tick at the deadline is the final report's, not a table more.
			done = ctx.Err() != nil
			if err := p.Err(); err != nil {
				fmt.Fprintf(e.stderr, "ftvm probe: %v; stopping\n", err)
				done = true
			}
		}
		if *asJSON && !done {
			continue
		}
		s, err := p.Snapshot()
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm probe: %v\n", err)
			return exitFailure
		}
		rep := s.Report(cfg, time.Since(started))
		switch {
		case *asJSON:
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			enc.Encode(rep)
		default:
			if redraw {
				fmt.Fprint(e.stdout, "\x1b[H\x1b[2J")
			}
			fmt.Fprintf(e.stdout, "ftvm probe: daemon %d", cfg.PID)
			if cfg.PeerPID != 0 {
				fmt.Fprintf(e.stdout, ", peer %d", cfg.PeerPID)
			}
			fmt.Fprintln(e.stdout)
			rep.WriteTable(e.stdout)
			if !redraw {
				fmt.Fprintln(e.stdout)
			}
		}
	}
	return exitOK
}
