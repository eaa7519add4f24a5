package main

import (
	"flag"
	"fmt"

	"github.com/ftvm/ftvm/rdma/rdmabench"
	"github.com/ftvm/ftvm/tcpfallback/tcpbench"
)

func init() {
	benchSuites.add(&command{
		name:    "transport",
		summary: "transport round trips and throughput: TCP against bare TCP and gRPC, shm against a bare cache line and TCP",
		run:     runBenchTransport,
	})
}

func runBenchTransport(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm bench transport", flag.ContinueOnError)
	samples := fs.Int("samples", 20000, "round-trip samples per transport")
	entries := fs.Int("entries", 2_000_000, "64-byte entries sent for the entry throughput")
	chunks := fs.Int("chunks", 500, "1 MiB chunks sent for the chunk throughput")
	noTLS := fs.Bool("no-tls", false, "leave out the TLS transport (it writes temporary certificates)")
	busyPoll := fs.Bool("busy-poll", false, "also measure busy-polling receivers (each holds a whole core while it runs)")
	noShm := fs.Bool("no-shm", false, "leave out the one-host part: shm against a bare cache line and TCP (it spins two threads while it runs)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm bench transport [flags]

Measures over loopback, in one run: the round trip of a 64-byte log entry to
its acknowledgement through the ftvm TCP transport (plain and mutual TLS),
a bare Go TCP ping-pong of the same size, and a gRPC bidirectional stream
carrying the same messages; then 64-byte entries per second and MB/s of
1 MiB checkpoint chunks. It prints p50/p99/p99.9 and each ratio against its
baseline and target. Then, on one host: the same round trip through the
rdma transport over shared memory (rdma/shm: the entry into the peer's ring,
the acknowledgement back into ours, read by the sender's thread) against a
bare cache line passed between two threads (the physical floor) and the ftvm
TCP transport, with the ratios against their targets (shm p50 within 2x the
cache line; TCP at least 10x shm at p50 and p99). The same bodies run under
'go test -bench . ./tcpfallback/tcpbench/ ./rdma/rdmabench/'.

Exit codes: 0 ok, 1 a measurement failed, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	err := tcpbench.Report(e.stdout, tcpbench.ReportOptions{
		RTTSamples: *samples,
		Entries:    *entries,
		Chunks:     *chunks,
		SkipTLS:    *noTLS,
		BusyPoll:   *busyPoll,
	})
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm bench transport: %v\n", err)
		return exitFailure
	}
	if !*noShm {
		fmt.Fprintln(e.stdout)
		if err := rdmabench.Report(e.stdout, *samples, 1000, 2000, 0); err != nil {
			fmt.Fprintf(e.stderr, "ftvm bench transport: shm: %v\n", err)
			return exitFailure
		}
	}
	return exitOK
}
