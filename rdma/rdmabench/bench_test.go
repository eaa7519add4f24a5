package rdmabench

import (
	"fmt"
	"strings"
	"testing"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/tcpfallback/tcpbench"
)

const rttWarmup = 2000

// BenchmarkRTT measures each pinger; BenchmarkRTT/vs-cacheline reports
// the ratios over every sample each took in this process.
func BenchmarkRTT(b *testing.B) {
	merged := map[string]*hdrhistogram.Histogram{}
	for _, kind := range Kinds {
		b.Run(kind, func(b *testing.B) {
			p, err := NewPinger(kind, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			if err := p.RoundTrips(rttWarmup, tcpbench.NewHistogram()); err != nil {
				b.Fatal(err)
			}
			h := tcpbench.NewHistogram()
			b.ResetTimer()
			if err := p.RoundTrips(b.N, h); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if merged[kind] == nil {
				merged[kind] = tcpbench.NewHistogram()
			}
			merged[kind].Merge(h)
			r := tcpbench.Summarize(kind, h)
			b.ReportMetric(float64(r.P50.Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(r.P99.Nanoseconds()), "p99-ns")
		})
	}
	b.Run("vs-cacheline", func(b *testing.B) {
		var rs []tcpbench.Result
		for _, k := range Kinds {
			h, ok := merged[k]
			if !ok {
				testutil.SkipChosen(b, fmt.Sprintf("run all of BenchmarkRTT (missing %s) to get ratios", k))
			}
			rs = append(rs, tcpbench.Summarize(k, h))
		}
		q, err := RatiosOf(rs)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(q.ShmP50OverCacheLine, "shm/cacheline-p50-x")
		b.ReportMetric(q.FtvmOverShmP50, "ftvm/shm-p50-x")
		b.ReportMetric(q.FtvmOverShmP99, "ftvm/shm-p99-x")
	})
}

// The report runs every pinger and names every target.
func TestReportNamesEveryTarget(t *testing.T) {
	var sb strings.Builder
	if err := Report(&sb, 300, 100, 100, 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{KindCacheLine, KindShm, KindFtvm, "shm p50 / cacheline p50", "ftvm / shm"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, sb.String())
		}
	}
}
