package tcpbench

import (
	"flag"
	"fmt"
	"strings"
	"testing"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/ftvm/ftvm/internal/testutil"
)

// rttWarmup round trips are made before timing each pinger.
const rttWarmup = 2000

var busyPoll = flag.Bool("tcpbench.busypoll", false, "also run the spinning pingers (bare-busypoll, ftvm-busypoll) in BenchmarkRTT")

// BenchmarkRTT measures the round trip of a 64-byte log entry to its
// acknowledgement for each pinger, then BenchmarkRTT/vs-bare reports the
// ratios over all samples each pinger took in this process (every -count,
// every b.N step merged).
func BenchmarkRTT(b *testing.B) {
	merged := map[string]*hdrhistogram.Histogram{}
	kinds := Kinds
	if *busyPoll {
		kinds = append(append([]string(nil), Kinds...), BusyPollKinds...)
	}
	for _, kind := range kinds {
		b.Run(kind, func(b *testing.B) {
			p, err := NewPinger(kind, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			if err := p.RoundTrips(rttWarmup, NewHistogram()); err != nil {
				b.Fatal(err)
			}
			h := NewHistogram()
			b.ResetTimer()
			if err := p.RoundTrips(b.N, h); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			r := Summarize(kind, h)
			if merged[kind] == nil {
				merged[kind] = NewHistogram()
			}
			merged[kind].Merge(h)
			b.ReportMetric(float64(r.P50.Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(r.P99.Nanoseconds()), "p99-ns")
			b.ReportMetric(float64(r.P999.Nanoseconds()), "p999-ns")
		})
	}
	b.Run("vs-bare", func(b *testing.B) {
		rs := make([]Result, 0, len(kinds))
		for _, k := range kinds {
			h, ok := merged[k]
			if !ok {
				testutil.SkipChosen(b, fmt.Sprintf("run all of BenchmarkRTT (missing %s) to get ratios", k))
			}
			rs = append(rs, Summarize(k, h))
		}
		AddRatios(rs)
		for _, r := range rs[1:] {
			b.ReportMetric(r.RatioToBare50, r.Kind+"-p50-x")
			b.ReportMetric(r.RatioToBare99, r.Kind+"-p99-x")
		}
		b.ReportMetric(rs[1].SpeedupOverGRPC50, "grpc/ftvm-p50-x")
		if *busyPoll {
			byKind := map[string]Result{}
			for _, r := range rs {
				byKind[r.Kind] = r
			}
			b.ReportMetric(byKind[KindFtvmBusyPoll].SpeedupOverGRPC50, "grpc/ftvm-busypoll-p50-x")
			b.ReportMetric(float64(byKind[KindFtvmBusyPoll].P50)/float64(byKind[KindBareBusyPoll].P50), "ftvm-busypoll/bare-busypoll-p50-x")
		}
		if b.N == 1 { // the body runs again for larger b.N; print once
			b.Logf("\n%s", FormatResults(rs))
		}
	})
}

// BenchmarkThroughput: 64-byte log entries batched by SendSpan, and 1 MiB
// checkpoint chunks, over one loopback connection each; the -tls variants
// show what encryption costs.
func BenchmarkThroughput(b *testing.B) {
	for _, withTLS := range []bool{false, true} {
		suffix := ""
		if withTLS {
			suffix = "-tls"
		}
		b.Run("entries64"+suffix, func(b *testing.B) {
			l, err := NewLink(withTLS, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			span := Span(DefaultEntriesPerSpan, 64)
			b.SetBytes(64)
			b.ResetTimer()
			if err := l.SendEntries(b.N, span, DefaultEntriesPerSpan); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
		b.Run("chunk1M"+suffix, func(b *testing.B) {
			l, err := NewLink(withTLS, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			chunk := make([]byte, ChunkBytes)
			b.SetBytes(ChunkBytes)
			b.ResetTimer()
			if err := l.SendChunks(b.N, chunk); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestCompareRTTReportsEveryKind runs the exported comparison briefly: the
// ftvm bench command depends on it.
func TestCompareRTTReportsEveryKind(t *testing.T) {
	rs, err := CompareRTT(300, 100, 50, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(Kinds) {
		t.Fatalf("%d results, want %d", len(rs), len(Kinds))
	}
	for _, r := range rs {
		if r.Count != 300 || r.P50 <= 0 || r.P99 < r.P50 || r.P999 < r.P99 {
			t.Errorf("%s: count %d p50 %v p99 %v p999 %v", r.Kind, r.Count, r.P50, r.P99, r.P999)
		}
		if r.Kind == KindBare && r.RatioToBare50 != 1 {
			t.Errorf("bare/bare = %v", r.RatioToBare50)
		}
	}
	t.Logf("\n%s", FormatResults(rs))
}

func TestReportNamesEveryTarget(t *testing.T) {
	var buf strings.Builder
	err := Report(&buf, ReportOptions{RTTSamples: 200, RTTRound: 100, RTTWarmup: 20, Entries: 5000, Chunks: 3})
	if err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"ftvm p50 / bare p50", "ftvm-tls p50 / bare p50", "grpc p50 / ftvm p50", "entries64", "chunk1M MB/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, KindFtvmBusyPoll) {
		t.Errorf("busy-poll pingers ran without being asked for:\n%s", out)
	}
	t.Log("\n" + out)
}

func TestThroughputLinkDeliversEverything(t *testing.T) {
	l, err := NewLink(false, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// 1000 is not a multiple of the span size: the tail span is partial.
	tp, err := MeasureEntries(l, 1000, 64, DefaultEntriesPerSpan)
	if err != nil {
		l.Close()
		for ev := range l.primary.Events() {
			t.Log("primary:", ev)
		}
		for ev := range l.secondary.Events() {
			t.Log("secondary:", ev)
		}
		t.Fatal(err)
	}
	if got := l.delivered(); got != 1000 {
		t.Fatalf("delivered %d entries, want 1000", got)
	}
	if _, err := MeasureChunks(l, 3); err != nil {
		t.Fatal(err)
	}
	if got := l.delivered(); got != 1003 {
		t.Fatalf("delivered %d frames, want 1003", got)
	}
	t.Log(tp)
}

// The spinning pingers must work even though they are not run by default.
func TestBusyPollPingersRoundTrip(t *testing.T) {
	for _, k := range BusyPollKinds {
		p, err := NewPinger(k, Options{})
		if err != nil {
			t.Fatal(err)
		}
		h := NewHistogram()
		err = p.RoundTrips(200, h)
		p.Close()
		if err != nil || h.TotalCount() != 200 {
			t.Fatalf("%s: %d round trips recorded, %v", k, h.TotalCount(), err)
		}
	}
}

// countingPinger records the calls made of it into a shared trace.
type countingPinger struct {
	kind   string
	trace  *[]string
	closed bool
}

func (p *countingPinger) RoundTrips(n int, h *hdrhistogram.Histogram) error {
	*p.trace = append(*p.trace, fmt.Sprintf("%s:%d", p.kind, n))
	for range n {
		h.RecordValue(1000)
	}
	return nil
}

func (p *countingPinger) Close() error { p.closed = true; return nil }

// Interleave warms every pinger up, then takes their rounds in turn, each
// after its round warm-up, records only the rounds, and closes them all.
func TestInterleaveTakesRoundsInTurn(t *testing.T) {
	var trace []string
	var made []*countingPinger
	newPinger := func(k string) (Pinger, error) {
		p := &countingPinger{kind: k, trace: &trace}
		made = append(made, p)
		return p, nil
	}
	rs, err := Interleave([]string{"a", "b"}, newPinger, Rounds{Samples: 5, Round: 2, Warmup: 7, RoundWarmup: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := "a:7 b:7 a:3 a:2 b:3 b:2 a:3 a:2 b:3 b:2 a:3 a:1 b:3 b:1"
	if got := strings.Join(trace, " "); got != want {
		t.Fatalf("calls %s\nwant  %s", got, want)
	}
	for i, r := range rs {
		if want := []string{"a", "b"}[i]; r.Kind != want || r.Count != 5 {
			t.Fatalf("result %d: %s with %d samples, want %s with the 5 of its rounds", i, r.Kind, r.Count, want)
		}
	}
	for _, p := range made {
		if !p.closed {
			t.Fatalf("pinger %s left open", p.kind)
		}
	}
}
