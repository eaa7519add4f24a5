package e2e

import (
	"context"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// HoldSnapshot fetches host h's output-hold latency histogram (ns) as it
// stands, for HistogramSince: what a measurement window recorded is the
// difference of two snapshots of one daemon.
func (c *Cluster) HoldSnapshot(ctx context.Context, h Host) (*hdrhistogram.Snapshot, error) {
	return c.holdSnapshot(ctx, h)
}

// HistogramSince is what one histogram recorded between two of its
// snapshots (before, after), as a histogram of its own.
func HistogramSince(before, after *hdrhistogram.Snapshot) (*hdrhistogram.Histogram, error) {
	return histogramSince(before, after)
}
