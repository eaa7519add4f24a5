package linearize

import (
	"math/rand"
	"sort"
	"testing"
)

// BenchmarkCheck checks a 100k-operation model history; the baseline sorts
// the same history by invoke time once, the least any checker that looks at
// real-time order must do. Compare the two ns/op in one run.
func BenchmarkCheck(b *testing.B) {
	c := defaultGen
	c.ops, c.registers, c.counters, c.spanNs = 100_000, 16, 8, 10_000_000
	ops := genHistory(rand.New(rand.NewSource(1)), c)
	if err := Check(ops); err != nil {
		b.Fatal(err)
	}
	b.Run("baseline=sort", func(b *testing.B) {
		work := make([]Op, len(ops))
		for i := 0; i < b.N; i++ {
			copy(work, ops)
			sort.Slice(work, func(i, j int) bool { return work[i].Invoke < work[j].Invoke })
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(ops)), "ns/histop")
	})
	b.Run("check", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := Check(ops); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(ops)), "ns/histop")
	})
}
