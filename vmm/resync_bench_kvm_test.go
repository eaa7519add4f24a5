package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
)

// resyncBenchPair is a primary with kvstore booted and paused, and a
// secondary restored from its full snapshot: both at one base.
type resyncBenchPair struct {
	cfgB Config // the secondary's, for the full baseline's fresh VMs
	a, b *Machine
}

func newResyncBenchPair(b *testing.B, memBytes uint64, image []byte) *resyncBenchPair {
	b.Helper()
	disk := func(name string) *os.File {
		f, err := os.Create(filepath.Join(b.TempDir(), name))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		if err := f.Truncate(1 << 20); err != nil {
			b.Fatal(err)
		}
		return f
	}
	p := &resyncBenchPair{cfgB: Config{MemSizeBytes: memBytes, Disk: disk("b")}}
	p.a = newTestVM(b, Config{MemSizeBytes: memBytes, Disk: disk("a")})
	mustLoad(b, p.a, image)
	// kvstore formats its log and waits for a frame (100 ms WAITs): at
	// 20 exits it is serving.
	if st, err := p.a.Run(20); err != nil || st.State != Paused {
		b.Fatalf("booting kvstore: %+v %v", st, err)
	}
	base, err := p.a.Snapshot(Full)
	if err != nil {
		b.Fatal(err)
	}
	p.b = newTestVM(b, p.cfgB)
	if err := p.b.Restore(base); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.b.Close() })
	return p
}

// resyncBenchPages are the n pages both VMs write: scattered (a stride
// prime to the span) over the same 60 MiB at 2 MiB on every memory size,
// so that the differing pages are the same on both sizes.
func resyncBenchPages(n int) []uint64 {
	const first, span = 512, 15000
	pages := make([]uint64, n)
	for i := range pages {
		pages[i] = first + uint64(i)*7919%span
	}
	slices.Sort(pages)
	return pages
}

// dirtyPagesAsVMM writes v over each page, as the VMM's devices write
// guest memory, on a VM that is not running.
func dirtyPagesAsVMM(b *testing.B, m *Machine, pages []uint64, v byte) {
	b.Helper()
	buf := make([]byte, PageBytes)
	for i := range buf {
		buf[i] = v
	}
	if err := m.do(func() error {
		for _, p := range pages {
			if err := m.mem.Write(p*PageBytes, buf); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// resyncSteps are the steps of an incremental resync's pause, in order:
// the primary's covering snapshot (the dirty set decoded, then
// SnapshotCovering), its encoding, its digest (lockstep.DataDigest, as
// the agent computes it for the node), the secondary's check of that
// digest (as its node does on the data assembled), its decoding, its
// Successor and its Restore.
var resyncSteps = []string{"cover", "encode", "digest", "check", "decode", "successor", "restore"}

// incrementalResync is one resync from the secondary's dirty set, timed
// from the primary's covering snapshot to the secondary's successor
// restored (the pause): the dirty set is sent with the request, before.
// It returns the pause and the time of each of resyncSteps.
func (p *resyncBenchPair) incrementalResync(b *testing.B) (time.Duration, []time.Duration) {
	d, err := p.b.DirtySinceBase()
	if err != nil {
		b.Fatal(err)
	}
	blob, err := d.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	t := []time.Time{time.Now()}
	step := func() { t = append(t, time.Now()) }
	other, err := UnmarshalDirtySet(blob)
	if err != nil {
		b.Fatal(err)
	}
	inc, err := p.a.SnapshotCovering(other, nil)
	if err != nil {
		b.Fatal(err)
	}
	step()
	enc, err := inc.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	step()
	sum := lockstep.DataDigest(enc)
	step()
	if lockstep.DataDigest(enc) != sum {
		b.Fatal("the digest of the same bytes differs")
	}
	step()
	dec, err := UnmarshalSnapshot(enc)
	if err != nil {
		b.Fatal(err)
	}
	step()
	next, err := p.b.Successor(nil)
	if err != nil {
		b.Fatal(err)
	}
	p.b = next
	step()
	if err := next.Restore(dec); err != nil {
		b.Fatal(err)
	}
	step()
	steps := make([]time.Duration, len(t)-1)
	for i := range steps {
		steps[i] = t[i+1].Sub(t[i])
	}
	return t[len(t)-1].Sub(t[0]), steps
}

// fullResync is today's resync: a full snapshot restored into a fresh VM.
func (p *resyncBenchPair) fullResync(b *testing.B) time.Duration {
	t0 := time.Now()
	s, err := p.a.Snapshot(Full)
	if err != nil {
		b.Fatal(err)
	}
	enc, err := s.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	dec, err := UnmarshalSnapshot(enc)
	if err != nil {
		b.Fatal(err)
	}
	vm, err := New(p.cfgB)
	if err != nil {
		b.Fatal(err)
	}
	if err := vm.Restore(dec); err != nil {
		b.Fatal(err)
	}
	took := time.Since(t0)
	vm.Close()
	return took
}

// resyncSample is one resync's pause and steps, for the log of the worst.
type resyncSample struct {
	mem   string
	took  time.Duration
	steps []time.Duration
	gc    bool
}

// gcCycles is the number of garbage collections completed so far.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func percentile(samples []time.Duration, q float64) time.Duration {
	s := slices.Clone(samples)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// BenchmarkIncrementalResync measures the pause of an incremental resync
// (SnapshotCovering, encode, the checkpoint data's digest on both sides,
// decode, Successor, Restore) for 10, 1,000 and
// 10,000 differing pages on a 64 MiB and a 1 GiB VM, and a full resync
// (Full snapshot, encode, decode, a fresh VM, Restore) as the baseline,
// all in one run; b.N resyncs of each. The pages differ because both VMMs
// write them (both VMs paused, kvstore booted). It reports p50 and p99 in
// ms, the ratio 1 GiB / 64 MiB at 1,000 pages (the pause should not grow
// with the VM: target at most 1.5) and full / incremental at 1,000 pages,
// the p50 and the worst of each of resyncSteps at 1,000 pages, where the
// pause goes, and the share of those resyncs whose successor's VM was
// made ahead (successorPrep; the benchmark waits for it between resyncs,
// as the VM's run between two resyncs gives it time).
//
//	go test -run '^$' -bench IncrementalResync -benchtime 20x ./vmm/
//
// With FTVM_SUCCESSOR_IN_PAUSE=1 the successor's VM is made in the pause,
// as before successorPrep.
func BenchmarkIncrementalResync(b *testing.B) {
	if os.Getenv("FTVM_SUCCESSOR_IN_PAUSE") != "" {
		// For before-and-after runs: the successor's VM made in the pause.
		prepareSuccessorOff = true
		defer func() { prepareSuccessorOff = false }()
	}
	image := guestELF(b, "kvstore")
	type key struct {
		mem   string
		pages int // 0: the full baseline
	}
	p50, p99 := map[key]time.Duration{}, map[key]time.Duration{}
	stepP50 := map[key]time.Duration{} // at 1,000 pages, keyed by size and step
	stepMax := map[key]time.Duration{} // the same, the worst of b.N
	prepared := map[key]int{}          // resyncs whose successor's VM was made ahead
	var worst []resyncSample           // at 1,000 pages, for the log of the worst
	for _, mem := range []struct {
		name  string
		bytes uint64
	}{{"64MiB", 64 << 20}, {"1GiB", 1 << 30}} {
		pair := newResyncBenchPair(b, mem.bytes, image)
		for _, n := range []int{10, 1000, 10000} {
			pages := resyncBenchPages(n)
			var samples []time.Duration
			stepSamples := make([][]time.Duration, len(resyncSteps))
			for i := 0; i < b.N; i++ {
				// Resyncs come apart, with the VMs running between
				// them: what the next pause needs is made meanwhile
				// (the primary's spare, the secondary's successor's
				// VM), as Resume has it made. (The guests do not run:
				// the pages the VMMs wrote over are kvstore's.)
				pair.a.prepareAhead()
				pair.b.prepareAhead()
				dirtyPagesAsVMM(b, pair.a, pages, byte(2*i+1))
				dirtyPagesAsVMM(b, pair.b, pages, byte(2*i+2))
				waitSpareReady(pair.a)
				if waitSuccessorPrepared(pair.b) {
					prepared[key{mem.name, n}]++
				}
				gc0 := gcCycles()
				took, steps := pair.incrementalResync(b)
				gc := gcCycles() != gc0
				samples = append(samples, took)
				for j, d := range steps {
					stepSamples[j] = append(stepSamples[j], d)
				}
				if n == 1000 {
					worst = append(worst, resyncSample{mem.name, took, steps, gc})
				}
			}
			k := key{mem.name, n}
			p50[k], p99[k] = percentile(samples, 0.5), percentile(samples, 0.99)
			if n == 1000 {
				for j, name := range resyncSteps {
					stepP50[key{mem.name + "-" + name, n}] = percentile(stepSamples[j], 0.5)
					stepMax[key{mem.name + "-" + name, n}] = slices.Max(stepSamples[j])
				}
			}
		}
		var samples []time.Duration
		for i := 0; i < b.N; i++ {
			samples = append(samples, pair.fullResync(b))
		}
		k := key{mem.name, 0}
		p50[k], p99[k] = percentile(samples, 0.5), percentile(samples, 0.99)
	}
	for _, mem := range []string{"64MiB", "1GiB"} {
		for _, n := range []int{10, 1000, 10000} {
			k := key{mem, n}
			b.ReportMetric(ms(p50[k]), fmt.Sprintf("%s-%dpg-p50-ms", mem, n))
			b.ReportMetric(ms(p99[k]), fmt.Sprintf("%s-%dpg-p99-ms", mem, n))
		}
		for _, name := range resyncSteps {
			b.ReportMetric(ms(stepP50[key{mem + "-" + name, 1000}]), fmt.Sprintf("%s-1000pg-%s-p50-ms", mem, name))
			b.ReportMetric(ms(stepMax[key{mem + "-" + name, 1000}]), fmt.Sprintf("%s-1000pg-%s-max-ms", mem, name))
		}
		b.ReportMetric(float64(prepared[key{mem, 1000}])/float64(b.N), mem+"-1000pg-prepared")
		full := key{mem, 0}
		b.ReportMetric(ms(p50[full]), mem+"-full-p50-ms")
		b.ReportMetric(ms(p99[full]), mem+"-full-p99-ms")
		b.ReportMetric(float64(p50[full])/float64(p50[key{mem, 1000}]), mem+"-full/1000pg-p50")
	}
	// Where the worst pauses went, and whether a collection ended in
	// them: outliers of the host or of our own allocations.
	slices.SortFunc(worst, func(x, y resyncSample) int { return int(y.took - x.took) })
	for _, w := range worst[:min(len(worst), 4)] {
		b.Logf("worst 1,000-page pauses: %s %.2f ms, steps %v, GC cycle ended in it: %v", w.mem, ms(w.took), w.steps, w.gc)
	}
	small, large := key{"64MiB", 1000}, key{"1GiB", 1000}
	b.ReportMetric(float64(p50[large])/float64(p50[small]), "1GiB/64MiB-1000pg-p50")
	b.ReportMetric(float64(p99[large])/float64(p99[small]), "1GiB/64MiB-1000pg-p99")
	b.ReportMetric(float64(p50[small].Nanoseconds()), "ns/op")
}
