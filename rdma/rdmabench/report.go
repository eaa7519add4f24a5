package rdmabench

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/ftvm/ftvm/tcpfallback/tcpbench"
)

var quietLogger = slog.New(slog.DiscardHandler)

// Ratios are the figures the targets are held to.
type Ratios struct {
	ShmP50OverCacheLine, ShmP99OverCacheLine float64
	FtvmOverShmP50, FtvmOverShmP99           float64
}

// RatiosOf computes Ratios from results holding every kind.
func RatiosOf(rs []tcpbench.Result) (Ratios, error) {
	by := map[string]tcpbench.Result{}
	for _, r := range rs {
		by[r.Kind] = r
	}
	c, s, f := by[KindCacheLine], by[KindShm], by[KindFtvm]
	if c.P50 <= 0 || s.P50 <= 0 || f.P50 <= 0 {
		return Ratios{}, fmt.Errorf("rdmabench: ratios need %v, each with samples", Kinds)
	}
	return Ratios{
		ShmP50OverCacheLine: float64(s.P50) / float64(c.P50),
		ShmP99OverCacheLine: float64(s.P99) / float64(c.P99),
		FtvmOverShmP50:      float64(f.P50) / float64(s.P50),
		FtvmOverShmP99:      float64(f.P99) / float64(s.P99),
	}, nil
}

// Report measures every kind and writes the table and the ratios against
// their targets.
func Report(w io.Writer, samples, round, warmup, messageBytes int) error {
	if messageBytes <= 0 {
		messageBytes = tcpbench.DefaultMessageBytes
	}
	fmt.Fprintf(w, "one-host round trip of a %d-byte log entry to its acknowledgement, %d samples each, interleaved in rounds of %d, each after %d unrecorded:\n", messageBytes, samples, round, roundWarmup)
	fmt.Fprintf(w, "  cacheline = a bare cache line between two threads (the floor), shm = rdma.Transport over rdma/shm (ring, Poll on the sender's thread), ftvm = the TCP transport\n")
	rs, err := Compare(Kinds, samples, round, warmup, messageBytes)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%-10s %9s %10s %10s %10s\n", "kind", "samples", "p50", "p99", "p99.9")
	for _, r := range rs {
		fmt.Fprintf(w, "%-10s %9d %10v %10v %10v\n", r.Kind, r.Count, r.P50, r.P99, r.P999)
	}
	q, err := RatiosOf(rs)
	if err != nil {
		return err
	}
	verdict := func(ok bool) string {
		if ok {
			return "meets"
		}
		return "MISSES"
	}
	fmt.Fprintf(w, "shm p50 / cacheline p50 %6.2f  (target ≤ %.1f: %s); p99 ratio %.2f\n", q.ShmP50OverCacheLine, TargetShmP50OverCacheLine, verdict(q.ShmP50OverCacheLine <= TargetShmP50OverCacheLine), q.ShmP99OverCacheLine)
	fmt.Fprintf(w, "ftvm / shm at p50 %6.1f, at p99 %6.1f  (target ≥ %.0f at both: %s)\n", q.FtvmOverShmP50, q.FtvmOverShmP99, TargetFtvmOverShm, verdict(q.FtvmOverShmP50 >= TargetFtvmOverShm && q.FtvmOverShmP99 >= TargetFtvmOverShm))
	fmt.Fprintf(w, "each sample includes one reading of the clock, which costs %v here (time.Now, p50 of back-to-back pairs)\n", clockCost())
	return nil
}

// clockCost is the p50 of the time between two back-to-back clock
// readings: what each sample's own timing adds to it.
func clockCost() time.Duration {
	h := tcpbench.NewHistogram()
	for i := 0; i < 10000; i++ {
		t0 := time.Now()
		h.RecordValue(int64(time.Since(t0)))
	}
	return time.Duration(h.ValueAtQuantile(50))
}
