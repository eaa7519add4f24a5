package dash

import (
	"math"
	"sort"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The hold-latency histogram is the agent's HDR histogram (1 µs to 60 s,
// 3 significant digits) re-binned at scrape time; nothing is observed on
// the vCPU thread for it.
//
// holdBucketsSeconds are its classic buckets: 1-2.5-5 steps from 1 µs to
// 10 s, so that p99 of a few hundred µs (today's) and of a few ms (over a
// slow link) both fall between two bounds a factor 2-2.5 apart.
var holdBucketsSeconds = []float64{
	1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

// holdNativeSchema is the native histogram's resolution: bucket bounds
// grow by 2^(2^-3) = 1.09, finer than the classic buckets and coarser
// than the HDR's 0.1%, so the re-binning loses nothing a user reads.
const holdNativeSchema = 3

// holdMetric is one scrape's hold-latency histogram, classic and native
// in one dto.Histogram.
type holdMetric struct {
	desc *prometheus.Desc
	h    *dto.Histogram
}

func (m *holdMetric) Desc() *prometheus.Desc { return m.desc }

func (m *holdMetric) Write(out *dto.Metric) error {
	out.Histogram = m.h
	out.Label = append(out.Label, constLabelPairs(m.desc)...)
	return nil
}

// constLabelPairs recovers the desc's constant labels (vm), which
// prometheus.Desc keeps to itself; NewConstMetric's metrics carry them
// the same way.
func constLabelPairs(d *prometheus.Desc) []*dto.LabelPair {
	var tmp dto.Metric
	m := prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 0)
	_ = m.Write(&tmp)
	return tmp.Label
}

// newHoldMetric converts an HDR snapshot in nanoseconds (nil: empty).
func newHoldMetric(d *prometheus.Desc, snap *hdrhistogram.Snapshot, created time.Time) prometheus.Metric {
	return &holdMetric{desc: d, h: holdHistogram(snap, created)}
}

func holdHistogram(snap *hdrhistogram.Snapshot, created time.Time) *dto.Histogram {
	var count uint64
	var sum float64
	classic := make([]uint64, len(holdBucketsSeconds))
	native := map[int]int64{}
	if snap != nil {
		for _, bar := range hdrhistogram.Import(snap).Distribution() {
			if bar.Count == 0 {
				continue
			}
			// Every value in the bar is within its resolution (0.1%,
			// or 512 ns below 1 ms at the agent's bounds) of its middle.
			v := float64(bar.From+bar.To) / 2 / 1e9
			n := uint64(bar.Count)
			count += n
			sum += v * float64(bar.Count)
			if i := sort.SearchFloat64s(holdBucketsSeconds, v); i < len(classic) {
				classic[i] += n
			}
			native[nativeIndex(v, holdNativeSchema)] += bar.Count
		}
	}
	h := &dto.Histogram{
		SampleCount:      &count,
		SampleSum:        &sum,
		Schema:           ptr(int32(holdNativeSchema)),
		ZeroThreshold:    ptr(0.0),
		ZeroCount:        ptr(uint64(0)),
		CreatedTimestamp: timestamppb.New(created),
	}
	var cum uint64
	for i, ub := range holdBucketsSeconds {
		cum += classic[i]
		h.Bucket = append(h.Bucket, &dto.Bucket{CumulativeCount: ptr(cum), UpperBound: ptr(ub)})
	}
	h.PositiveSpan, h.PositiveDelta = nativeSpans(native)
	if count == 0 {
		// A native histogram with no observation still needs a span for
		// scrapers to tell it from a classic-only one.
		h.PositiveSpan = []*dto.BucketSpan{{Offset: ptr(int32(0)), Length: ptr(uint32(0))}}
	}
	return h
}

// nativeIndex is the native bucket holding v > 0: bucket i covers
// (2^((i-1)/2^s), 2^(i/2^s)].
func nativeIndex(v float64, schema int) int {
	return int(math.Ceil(math.Log2(v) * float64(int(1)<<schema)))
}

// nativeSpans encodes buckets as spans of consecutive indexes and count
// deltas, as the native histogram format wants.
func nativeSpans(buckets map[int]int64) ([]*dto.BucketSpan, []int64) {
	idx := make([]int, 0, len(buckets))
	for i := range buckets {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	var spans []*dto.BucketSpan
	var deltas []int64
	var prevCount int64
	for k, i := range idx {
		switch {
		case k == 0:
			spans = append(spans, &dto.BucketSpan{Offset: ptr(int32(i)), Length: ptr(uint32(1))})
		case i == idx[k-1]+1:
			*spans[len(spans)-1].Length++
		default:
			spans = append(spans, &dto.BucketSpan{Offset: ptr(int32(i - idx[k-1] - 1)), Length: ptr(uint32(1))})
		}
		deltas = append(deltas, buckets[i]-prevCount)
		prevCount = buckets[i]
	}
	return spans, deltas
}

func ptr[T any](v T) *T { return &v }
