package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// BenchmarkHoldRecordScraped measures what /metrics and the dashboard
// cost the hot path. Neither adds work on the vCPU thread; they share
// one lock with it, the hold-latency recorder's, which every release
// takes to record (ready.go) and every scrape takes to copy the histogram
// out (HoldHistogram). Each op records latencies for a second with no
// reader (the baseline, same run), then for a second while a reader
// copies the histogram out at rate hz: 4 Hz is the dashboard's poll,
// 1 kHz is 250 times that. Reported: ns per record and the p99.9 and max of
// single records, bare and scraped, and the ratios.
func BenchmarkHoldRecordScraped(b *testing.B) {
	const phase = time.Second
	for _, hz := range []int{4, 1000} {
		b.Run(fmt.Sprintf("scrape=%dHz", hz), func(b *testing.B) {
			var r latencyRecorder
			r.init()
			bare := hdrhistogram.New(1, 10_000_000, 3)
			scraped := hdrhistogram.New(1, 10_000_000, 3)
			var bareNs, scrapedNs time.Duration
			var bareN, scrapedN int
			scrapes := 0
			for b.Loop() {
				d, k := timeRecords(&r, phase, bare)
				bareNs, bareN = bareNs+d, bareN+k
				stop := make(chan struct{})
				done := make(chan int)
				go func() {
					t := time.NewTicker(time.Second / time.Duration(hz))
					defer t.Stop()
					n := 0
					for {
						select {
						case <-stop:
							done <- n
							return
						case <-t.C:
							r.mu.Lock()
							_ = r.h.Export()
							r.mu.Unlock()
							n++
						}
					}
				}()
				d, k = timeRecords(&r, phase, scraped)
				scrapedNs, scrapedN = scrapedNs+d, scrapedN+k
				close(stop)
				scrapes += <-done
			}
			perBare, perScraped := float64(bareNs)/float64(bareN), float64(scrapedNs)/float64(scrapedN)
			b.ReportMetric(perBare, "ns/record-bare")
			b.ReportMetric(perScraped, "ns/record-scraped")
			b.ReportMetric(perScraped/perBare, "mean-ratio")
			b.ReportMetric(float64(bare.ValueAtQuantile(99.9)), "p99.9-ns-bare")
			b.ReportMetric(float64(scraped.ValueAtQuantile(99.9)), "p99.9-ns-scraped")
			b.ReportMetric(float64(bare.Max()), "max-ns-bare")
			b.ReportMetric(float64(scraped.Max()), "max-ns-scraped")
			b.ReportMetric(float64(scrapes)/float64(b.N), "scrapes/op")
		})
	}
}

// timeRecords records latencies into r for about d, timing each into
// into, and returns the time taken and the records made.
func timeRecords(r *latencyRecorder, d time.Duration, into *hdrhistogram.Histogram) (time.Duration, int) {
	start := time.Now()
	last := start
	n := 0
	for last.Sub(start) < d {
		r.record(time.Duration(1000+n%5000) * time.Microsecond)
		now := time.Now()
		_ = into.RecordValue(int64(now.Sub(last)))
		last = now
		n++
	}
	return last.Sub(start), n
}
