package ft

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
)

// Workload is one guest under one load.
type Workload struct {
	Name  string // short name, used in --workloads, file names and the table
	Title string // what it is, for the table's legend
	Guest string // the guest program's name under the guests directory
	// Cmdline is the guest's command line; NoNetwork runs it without a NIC.
	Cmdline   string
	NoNetwork bool
	// Load, if set, is the kvclient load driven from the client; the
	// throughput is its answered requests. Without it the throughput is
	// the guest's own progress: the number that starts the last line of
	// its released console (ProgressLine).
	Load         *kvclient.Config
	ProgressLine string // a regexp with one group: the guest's own count
	Unit         string // of the throughput: "req/s", "iter/s", "lines/s"
	PerOp        string // what the log bytes are counted per: "req", "iter", "line"
	// Target is the protected/unprotected throughput the issue asks for
	// (0: none).
	Target float64
	// Flags are more daemon flags for both roles (memory, disk size).
	Flags []string
}

// Setup is one way of running a workload: unprotected, or protected in an
// ack mode over a transport.
type Setup struct {
	Name      string `json:"name"`
	Protected bool   `json:"protected"`
	Mode      string `json:"mode,omitempty"`      // receipt or compare
	Transport string `json:"transport,omitempty"` // a name of Transports
}

// Transports names what may carry a protected pair's log: each is given
// to the daemons as --transport, and a cell checks that its pair runs
// over it (status transport_in_use). shm works on the test bed because
// its hosts are namespaces of one machine; rdma needs an RDMA device. A
// new transport of the daemon plugs in here.
var Transports = map[string]string{
	"tcp":  "a TCP connection per lane, mutual TLS (tcpfallback)",
	"shm":  "the log and acknowledgements in shared-memory rings, the RDMA protocol's twin (rdma/shm)",
	"rdma": "the log written into the peer's ring by RDMA (rdma)",
}

// DefaultTransports are what a run measures unless told otherwise.
var DefaultTransports = []string{"tcp", "shm"}

// TransportNames lists Transports in order.
func TransportNames() []string {
	var names []string
	for n := range Transports {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Setups is the unprotected baseline, then each ack mode over each
// transport.
func Setups(transports []string) ([]Setup, error) {
	setups := []Setup{{Name: "unprotected"}}
	for _, t := range transports {
		if _, ok := Transports[t]; !ok {
			return nil, fmt.Errorf("transport %q: this build knows %s", t, strings.Join(TransportNames(), ", "))
		}
		for _, m := range []string{"receipt", "compare"} {
			setups = append(setups, Setup{Name: "ack-on-" + m + "/" + t, Protected: true, Mode: m, Transport: t})
		}
	}
	return setups, nil
}

// kvRetry is how hard the client tries: long enough attempts that a
// loaded pair is not flooded with resends, enough of them to ride out a
// slow moment.
var kvRetry = kvclient.Retry{AttemptTimeout: 100 * time.Millisecond, AttemptsMax: 50}

// Parameters of the workloads.
const (
	// SaturationConcurrency is the closed loop's outstanding requests:
	// more than the kvstore serves at once (one datagram per exit), so
	// that it never waits for the client.
	SaturationConcurrency = 32
	// FixedRatePerSec is the fixed-rate workload's offered load, well
	// under saturation on these machines.
	FixedRatePerSec = 1000
)

// Workloads returns every workload, in the order a run measures them.
func Workloads() []Workload {
	return []Workload{
		{
			Name: "kv-sat", Title: "kvstore at saturation: a closed loop of 32 outstanding requests, PUT/GET/INC 4/4/2",
			Guest: "kvstore",
			Load:  &kvclient.Config{Concurrency: SaturationConcurrency, Retry: kvRetry},
			Unit:  "req/s", PerOp: "req", Target: 0.9,
		},
		{
			Name: "kv-rate", Title: "kvstore at a fixed rate: 1000 requests/s offered, PUT/GET/INC 4/4/2",
			Guest: "kvstore",
			Load:  &kvclient.Config{RatePerSec: FixedRatePerSec, Concurrency: 64, Retry: kvRetry},
			Unit:  "req/s", PerOp: "req",
		},
		{
			Name: "memstress", Title: "memstress: 1 MiB of an 8 MiB working set rewritten per iteration, one console line each",
			Guest: "memstress", NoNetwork: true,
			Cmdline:      "pages=2048 dirty=256 pattern=random iters=1000000000",
			ProgressLine: `^iter (\d+) sum`,
			Unit:         "iter/s", PerOp: "iter", Target: 0.95,
			Flags: []string{"--mem", "32MiB"},
		},
		{
			Name: "kv-disk", Title: "kvstore, disk-heavy: closed loop of 32, 90% PUTs of 64-byte values over 2048 keys (a 512-byte WAL sector and an fdatasync each)",
			Guest: "kvstore",
			Load: &kvclient.Config{Concurrency: SaturationConcurrency, Retry: kvRetry,
				Mix: kvclient.Mix{Put: 9, Get: 1}, RegisterKeys: 2048, ValueBytes: kvclient.ValueBytesMax},
			Unit: "req/s", PerOp: "req",
			Flags: []string{"--disk-size", "16MiB"},
		},
		{
			Name: "nondet", Title: "nondet: a line of RDTSC values every 5 ms, which no replay reproduces: a divergence and a resync on every line",
			Guest: "nondet", NoNetwork: true,
			Cmdline:      "count=100000000 diverge=output interval_us=5000",
			ProgressLine: `^nondet: (\d+) tsc=`,
			Unit:         "lines/s", PerOp: "line",
		},
	}
}

// SelectWorkloads returns the workloads names lists (all when empty), in
// the order of Workloads.
func SelectWorkloads(names []string) ([]Workload, error) {
	all := Workloads()
	if len(names) == 0 {
		return all, nil
	}
	var known []string
	for _, w := range all {
		known = append(known, w.Name)
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return nil, fmt.Errorf("workload %q: the workloads are %s", n, strings.Join(known, ", "))
		}
	}
	var out []Workload
	for _, w := range all {
		if slices.Contains(names, w.Name) {
			out = append(out, w)
		}
	}
	return out, nil
}
