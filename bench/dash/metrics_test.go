package dash

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func testSample(values ...int64) *Sample {
	h := hdrhistogram.New(1_000, 60_000_000_000, 3)
	for _, v := range values {
		h.RecordValue(v)
	}
	return &Sample{Time: time.Now(), VM: "vm1", Role: "primary", Epoch: 7, Fence: 9, Protected: true, Transport: "tcp",
		LagEntries: 3, LagBytes: 240, LagSeconds: 0.002, HeldOutputs: 2, ReleasedOutputs: 100, Stalls: 1, Divergences: 2,
		CheckpointsTaken: 4, CheckpointPauses: 1, CheckpointPauseSeconds: 0.005, Failovers: 1, Joins: 2,
		JoinSentBytes: 10, JoinTotalBytes: 20,
		Lanes: []Lane{{Name: "control", SentBytes: 1000, ReceivedBytes: 500, RTTSeconds: 20e-6}, {Name: "bulk", SentBytes: 1 << 20}},
		Hold:  h.Export()}
}

func gather(t *testing.T, s *Sample) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector("vm1", time.Now().Add(-time.Hour), func(context.Context) (*Sample, error) { return s, nil }))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// TestMetricsExported checks that every metric of the table is served,
// with its type, the vm label and a name that follows the conventions.
func TestMetricsExported(t *testing.T) {
	fams := gather(t, testSample(5_000, 20_000, 400_000))
	types := map[string]dto.MetricType{"counter": dto.MetricType_COUNTER, "gauge": dto.MetricType_GAUGE, "histogram": dto.MetricType_HISTOGRAM}
	for _, m := range Metrics {
		f := fams[m.Name]
		if f == nil {
			t.Errorf("%s: not exported", m.Name)
			continue
		}
		if f.GetType() != types[m.Type] {
			t.Errorf("%s: type %v, table says %s", m.Name, f.GetType(), m.Type)
		}
		if (m.Type == "counter") != strings.HasSuffix(m.Name, "_total") {
			t.Errorf("%s: counters, and only they, end in _total", m.Name)
		}
		for _, mm := range f.Metric {
			vm := false
			for _, l := range mm.Label {
				vm = vm || l.GetName() == "vm" && l.GetValue() == "vm1"
			}
			if !vm {
				t.Errorf("%s: a series without vm=\"vm1\": %v", m.Name, mm.Label)
			}
		}
	}
	if got := fams["ftvm_epoch"].Metric[0].GetGauge().GetValue(); got != 7 {
		t.Errorf("ftvm_epoch = %v, want 7", got)
	}
	for _, mm := range fams["ftvm_role"].Metric {
		want := 0.0
		if mm.Label[0].GetValue() == "primary" || mm.Label[1].GetValue() == "primary" {
			want = 1
		}
		if mm.GetGauge().GetValue() != want {
			t.Errorf("ftvm_role %v = %v, want %v", mm.Label, mm.GetGauge().GetValue(), want)
		}
	}
}

// TestHoldHistogram compares the exported histogram, classic and native,
// with the HDR histogram it comes from.
func TestHoldHistogram(t *testing.T) {
	var values []int64
	for i := int64(1); i <= 2000; i++ {
		values = append(values, i*i*10) // 10 ns .. 40 ms, skewed
	}
	s := testSample(values...)
	h := gather(t, s)["ftvm_output_hold_seconds"].Metric[0].GetHistogram()
	if h.GetSampleCount() != uint64(len(values)) {
		t.Fatalf("count %d, want %d", h.GetSampleCount(), len(values))
	}
	// Classic: cumulative counts against a direct count of the values
	// (clamped at the HDR's 1 µs floor).
	for _, b := range h.Bucket {
		// The HDR's resolution: 0.1%, and 512 ns below 1 ms.
		ub := b.GetUpperBound() * 1e9
		slack := max(ub/1000, 512)
		var lo, hi uint64
		for _, v := range values {
			if float64(v) <= ub-slack {
				lo++
			}
			if float64(v) <= ub+slack {
				hi++
			}
		}
		if got := b.GetCumulativeCount(); got < lo || got > hi {
			t.Errorf("bucket le=%g: %d, want %d to %d", b.GetUpperBound(), got, lo, hi)
		}
	}
	// Native: decode the spans and deltas and read p99 off the buckets.
	if h.GetSchema() != holdNativeSchema || len(h.PositiveSpan) == 0 {
		t.Fatalf("no native histogram: schema %d, spans %v", h.GetSchema(), h.PositiveSpan)
	}
	idx, count := 0, int64(0)
	var bounds []float64
	var counts []int64
	d := 0
	for k, sp := range h.PositiveSpan {
		if k == 0 {
			idx = int(sp.GetOffset())
		} else {
			idx += int(sp.GetOffset())
		}
		for j := 0; j < int(sp.GetLength()); j++ {
			count += h.PositiveDelta[d]
			d++
			bounds = append(bounds, math.Pow(2, float64(idx)/8))
			counts = append(counts, count)
			idx++
		}
	}
	var total int64
	for _, c := range counts {
		total += c
	}
	if total != int64(len(values)) {
		t.Fatalf("native buckets hold %d, want %d", total, len(values))
	}
	var cum int64
	p99 := 0.0
	for i, c := range counts {
		cum += c
		if cum >= int64(len(values))*99/100 {
			p99 = bounds[i]
			break
		}
	}
	hdrP99 := float64(hdrhistogram.Import(s.Hold).ValueAtQuantile(99)) / 1e9
	if p99 < hdrP99*0.99 || p99 > hdrP99*1.1 {
		t.Errorf("native p99 bucket bound %g s, HDR p99 %g s: more than a bucket apart", p99, hdrP99)
	}
}

// TestMetricsHandler scrapes the handler's text format, as Prometheus
// would without native histograms.
func TestMetricsHandler(t *testing.T) {
	c := NewCollector("vm1", time.Now(), func(context.Context) (*Sample, error) { return testSample(5_000), nil })
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("the text exposition does not parse: %v\n%s", err, b)
	}
	for _, m := range Metrics {
		if fams[m.Name] == nil {
			t.Errorf("%s missing from the text format", m.Name)
		}
	}
	if fams["go_goroutines"] == nil {
		t.Error("the Go runtime's metrics are missing")
	}
}

// TestMetricsTableInREADME holds the README's table to Metrics: the same
// names, in the same order.
func TestMetricsTableInREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(ftvm_[a-z_]+)(\\{[a-z]+\\})?` \\| (counter|gauge|histogram) \\|")
	var names []string
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1]+"/"+m[3])
	}
	var want []string
	for _, m := range Metrics {
		want = append(want, m.Name+"/"+m.Type)
	}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("README's metrics table:\n  %s\nwant (bench/dash.Metrics):\n  %s", strings.Join(names, " "), strings.Join(want, " "))
	}
}

// BenchmarkScrape is the cost of one /metrics scrape's conversion: the
// sample's HDR histogram (a day of outputs spread over 1 µs to 1 s)
// re-binned into classic and native buckets, and every other metric.
// It runs off the hot path, on the scraper's goroutine.
func BenchmarkScrape(b *testing.B) {
	var values []int64
	for i := int64(0); i < 100_000; i++ {
		values = append(values, 1_000+i*i%1_000_000_000)
	}
	s := testSample(values...)
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector("vm1", time.Now(), func(context.Context) (*Sample, error) { return s, nil }))
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMetricsHandlerNative scrapes as a Prometheus with native
// histograms on does (protobuf): the hold histogram comes with both its
// native buckets and its classic ones.
func TestMetricsHandlerNative(t *testing.T) {
	c := NewCollector("vm1", time.Now(), func(context.Context) (*Sample, error) { return testSample(5_000, 70_000, 900_000), nil })
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept", string(expfmt.FmtProtoDelim))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	for {
		var f dto.MetricFamily
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("no ftvm_output_hold_seconds in the protobuf answer (%v)", err)
		}
		if f.GetName() != "ftvm_output_hold_seconds" {
			continue
		}
		h := f.Metric[0].GetHistogram()
		if h.GetSchema() != holdNativeSchema || len(h.PositiveDelta) != 3 || len(h.Bucket) != len(holdBucketsSeconds) || h.GetSampleCount() != 3 {
			t.Fatalf("hold histogram over protobuf: schema %d, %d native buckets, %d classic, count %d; want schema %d, 3, %d, 3",
				h.GetSchema(), len(h.PositiveDelta), len(h.Bucket), h.GetSampleCount(), holdNativeSchema, len(holdBucketsSeconds))
		}
		return
	}
}
