package probe

import (
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
)

// overheadLoadFor is how long each side of a round of
// BenchmarkProbeOverhead loads the kvstore.
const overheadLoadFor = 2 * time.Second

// BenchmarkProbeOverhead measures what the probe costs the kvstore's
// throughput at saturation (a closed loop, 32 requests always
// outstanding): on one protected pair, each iteration a round of a load
// of overheadLoadFor without the probe, then one with it attached (to the
// primary and its peer). It reports the median over the rounds of each
// round's probed/plain throughput (1 is no cost; the median, because on a
// machine shared with other work a round's two halves can meet very
// different loads), and the mean rates. Run with -benchtime 5x or more:
//
//	go test -run '^$' -bench ProbeOverhead -benchtime 5x ./bench/probe/
func BenchmarkProbeOverhead(b *testing.B) {
	bd := newBed(b, "probeb")
	p := bd.startPair(b, nil)
	saturate := kvclient.Config{RatePerSec: 0, Concurrency: 32, Duration: overheadLoadFor}
	var plain, probed float64
	var ratios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := p.load(b, saturate)
		plainRate := float64(res.Stats.Served) / overheadLoadFor.Seconds()

		cfg := Config{PID: p.primary, PeerPID: p.peer, skip: map[string]bool{}}
		for _, h := range strings.Fields(os.Getenv("FTVM_PROBE_SKIP")) {
			cfg.skip[h] = true // to measure what each hook costs
		}
		pr, err := Attach(cfg)
		if err != nil {
			b.Fatal(err)
		}
		res = p.load(b, saturate)
		s, err := pr.Snapshot()
		pr.Close()
		if err != nil {
			b.Fatal(err)
		}
		if s.Counters[CounterReleased] == 0 && s.Counters[CounterExits] == 0 {
			b.Fatal("the probe saw nothing under load")
		}
		probedRate := float64(res.Stats.Served) / overheadLoadFor.Seconds()
		plain += plainRate
		probed += probedRate
		ratios = append(ratios, probedRate/plainRate)
	}
	b.StopTimer()
	sort.Float64s(ratios)
	n := float64(b.N)
	b.ReportMetric(plain/n, "plain-req/s")
	b.ReportMetric(probed/n, "probed-req/s")
	b.ReportMetric(ratios[len(ratios)/2], "probed/plain")
	b.ReportMetric(0, "ns/op")
	b.Logf("probed/plain by round, sorted: %.3f", ratios)
}
