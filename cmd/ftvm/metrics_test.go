package main

import (
	"testing"
	"time"
)

// TestLagFromSamples: the lag is measured from the first sample whose
// log position reached the acknowledged one.
func TestLagFromSamples(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var m metricsState
	for i, seq := range []uint64{10, 10, 12, 15, 20} {
		m.points = append(m.points, lagPoint{t: t0.Add(time.Duration(i) * 10 * time.Millisecond), seq: seq, sent: uint64(100 * i)})
	}
	now := t0.Add(50 * time.Millisecond)
	for _, c := range []struct {
		acked     uint64
		wantBytes uint64
		wantMs    float64
	}{
		{acked: 11, wantBytes: 1000 - 200, wantMs: 30}, // first reached at the third sample (seq 12)
		{acked: 15, wantBytes: 1000 - 300, wantMs: 20},
		{acked: 5, wantBytes: 1000, wantMs: 50}, // older than every sample: the oldest, a lower bound
		{acked: 21, wantBytes: 0, wantMs: 0},    // written after the latest sample: under the resolution
		{acked: 20, wantBytes: 1000 - 400, wantMs: 10},
	} {
		b, s := m.lag(c.acked, 1000, now)
		if b != c.wantBytes || s*1e3 < c.wantMs-0.001 || s*1e3 > c.wantMs+0.001 {
			t.Errorf("acked %d: lag %d bytes %.3f ms, want %d bytes %.0f ms", c.acked, b, s*1e3, c.wantBytes, c.wantMs)
		}
	}
}
