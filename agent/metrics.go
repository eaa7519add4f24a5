package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Bounds of the hold-latency histogram: 1 µs to 60 s at 3 significant
// digits (about 30 KiB of counters).
const (
	holdLatencyMinNs  = 1_000
	holdLatencyMaxNs  = 60_000_000_000
	holdLatencyDigits = 3
)

// latencyRecorder is a histogram the loop records into and status readers
// copy out of.
type latencyRecorder struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func (r *latencyRecorder) init() {
	r.h = hdrhistogram.New(holdLatencyMinNs, holdLatencyMaxNs, holdLatencyDigits)
}

func (r *latencyRecorder) record(d time.Duration) {
	ns := min(max(d.Nanoseconds(), holdLatencyMinNs), holdLatencyMaxNs)
	r.mu.Lock()
	_ = r.h.RecordValue(ns) // in range by the clamp above
	r.mu.Unlock()
}

// Latency summarises a latency distribution.
type Latency struct {
	Count          int64
	P50, P99, P999 time.Duration
	Max            time.Duration
}

func (r *latencyRecorder) summary() Latency {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Count: r.h.TotalCount(),
		P50:   time.Duration(r.h.ValueAtQuantile(50)),
		P99:   time.Duration(r.h.ValueAtQuantile(99)),
		P999:  time.Duration(r.h.ValueAtQuantile(99.9)),
		Max:   time.Duration(r.h.Max()),
	}
}

// HoldLatency is how long this host, as primary, held its outputs: from
// the exit that made one to its release, over every output released while
// a secondary protected it (an unprotected primary releases at once).
func (a *Agent) HoldLatency() Latency { return a.holdLatency.summary() }

// HoldHistogram is the distribution behind HoldLatency, in nanoseconds,
// for merging with other hosts' (hdrhistogram.Import).
func (a *Agent) HoldHistogram() *hdrhistogram.Snapshot {
	a.holdLatency.mu.Lock()
	defer a.holdLatency.mu.Unlock()
	return a.holdLatency.h.Export()
}

// syncProgress follows the checkpoint a primary ships to a secondary.
type syncProgress struct {
	total, sent atomic.Int64
}

// SyncProgress reports the bytes of the checkpoint under way to a
// secondary and how many of them have been sent (a retransmission counts
// again, up to total); both are zero when none was taken yet.
func (a *Agent) SyncProgress() (sent, total int64) {
	t := a.sync.total.Load()
	return min(a.sync.sent.Load(), t), t
}
