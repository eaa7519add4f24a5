package probe

import "github.com/HdrHistogram/hdrhistogram-go"

func hdrExact(values []uint64) *hdrhistogram.Histogram {
	h := hdrhistogram.New(1, 1<<41, 3)
	for _, v := range values {
		h.RecordValue(int64(v))
	}
	return h
}
