package ft

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latency is a distribution's percentiles, in microseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
}

// Row is one cell of the table: a workload on a setup, measured over one
// window.
type Row struct {
	Workload string  `json:"workload"`
	Setup    Setup   `json:"setup"`
	WindowS  float64 `json:"window_s"` // the measured window, seconds
	// Ops is what the window counted: answered requests, iterations or
	// lines; Throughput is Ops per second of the window, in Unit.
	Ops        uint64  `json:"ops"`
	Throughput float64 `json:"throughput"`
	Unit       string  `json:"unit"`
	// OfferedRate is the fixed-rate load's requests per second (0: a
	// closed loop or the guest's own pace).
	OfferedRate float64 `json:"offered_rate,omitempty"`
	// Ratio is Throughput over BaselineThroughput, the unprotected row's
	// Throughput for this workload in the same run (1 for that row).
	Ratio              float64 `json:"ratio"`
	BaselineThroughput float64 `json:"baseline_throughput"`
	// Target is the ratio asked for (0: none); Met says whether Ratio
	// reached it (protected rows with a target only).
	Target float64 `json:"target,omitempty"`
	Met    *bool   `json:"met,omitempty"`
	// Client is the client's latency (kvstore workloads only).
	Client *Latency `json:"client_latency,omitempty"`
	// Hold is the primary's output-hold latency over the window.
	Hold Latency `json:"hold_latency"`
	// LogBytes is what the primary's transport sent over the window.
	LogBytes      uint64  `json:"log_bytes"`
	LogMbitPerSec float64 `json:"log_mbit_per_s"`
	LogBytesPerOp float64 `json:"log_bytes_per_op"`
	PerOp         string  `json:"per_op"`
	// FramesPerOp is the frames each daemon's transport sent over the
	// window (heartbeats included) per op, host a's (the primary's) and
	// host b's; WakeupsPerOp the times each daemon's threads were put on
	// a CPU (schedstat: wake-ups and returns after a preemption) per op,
	// 0 where schedstat could not be read. The secondary's are 0 in an
	// unprotected row.
	FramesPerOpPrimary    float64 `json:"frames_per_op_primary"`
	FramesPerOpSecondary  float64 `json:"frames_per_op_secondary"`
	WakeupsPerOpPrimary   float64 `json:"wakeups_per_op_primary"`
	WakeupsPerOpSecondary float64 `json:"wakeups_per_op_secondary"`
	// WritesPerOp: the write system calls on each daemon's TCP sockets
	// per op (a frame each, or a batch of them).
	WritesPerOpPrimary   float64 `json:"writes_per_op_primary"`
	WritesPerOpSecondary float64 `json:"writes_per_op_secondary"`
	// Resyncs are the secondary's restores over the window; ResyncPause
	// their pause (checkpoint taken on the primary to restored on the
	// secondary), in microseconds.
	Resyncs       uint64   `json:"resyncs"`
	ResyncsPerSec float64  `json:"resyncs_per_s"`
	ResyncPause   *Latency `json:"resync_pause,omitempty"`
	// Stalls counts the times the primary's vCPU waited for a secondary
	// that lagged a log window behind, over the window.
	Stalls uint64 `json:"stalls"`
	// CPU is each daemon's user+system time over the window, in percent
	// of one core: host a runs the primary, host b the secondary.
	CPUPrimary   float64 `json:"cpu_primary_pct"`
	CPUSecondary float64 `json:"cpu_secondary_pct"`
	// CPUClient is the harness's own (the kvstore client's) CPU time,
	// which shares the same cores.
	CPUClient float64 `json:"cpu_client_pct"`
	// Sched is where the vCPU threads' time went and how busy the
	// machine was (nil where schedstat could not be read).
	Sched *Sched `json:"sched,omitempty"`
	// LoadAverage is /proc/loadavg as the window began.
	LoadAverage string `json:"load_average"`
	// Why says, where Ratio misses Target, what the figures of the row
	// show about it.
	Why string `json:"why,omitempty"`

	// The distributions behind Client and Hold, for the plots.
	clientHist, holdHist *hdrhistogram.Histogram
}

// Report is a whole run.
type Report struct {
	Started     time.Time      `json:"started"`
	Finished    time.Time      `json:"finished"`
	CPUs        int            `json:"cpus"`
	LoadAverage string         `json:"load_average"` // at the start
	Quick       bool           `json:"quick"`
	WarmupS     float64        `json:"warmup_s"`
	WindowS     float64        `json:"window_s"`
	Transports  []string       `json:"transports"`
	Workloads   []WorkloadInfo `json:"workloads"`
	Rows        []Row          `json:"rows"`
}

// WorkloadInfo is what a report says of each workload it ran.
type WorkloadInfo struct {
	Name    string  `json:"name"`
	Title   string  `json:"title"`
	Guest   string  `json:"guest"`
	Cmdline string  `json:"cmdline,omitempty"`
	Unit    string  `json:"unit"`
	Target  float64 `json:"target,omitempty"`
}
