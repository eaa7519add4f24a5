package sim

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
)

var (
	flagSeeds = flag.Int("sim.seeds", 0, "seeds per mode for TestSimSeeds (0: the CI default)")
	flagFirst = flag.Uint64("sim.first", 1, "first seed for TestSimSeeds")
	flagSeed  = flag.Int64("sim.seed", -1, "run only this seed, printing its trace")
	flagMode  = flag.String("sim.mode", "both", "ack mode to simulate: compare, receipt or both")
	flagHarsh = flag.Bool("sim.harsh", false, "with -sim.seed: use TestSimHarsh's fault regime")
)

func options(mode lockstep.Mode) Options {
	if *flagHarsh {
		return HarshOptions(mode)
	}
	return DefaultOptions(mode)
}

// CI seed counts per mode: 3,000 seeds in all without the race detector,
// 1,500 with it (the detector makes the simulator about six times slower;
// `make test` runs with it, and stays near 40 s for this package).
const (
	ciSeedsPerMode     = 1500
	ciRaceSeedsPerMode = 750
)

func modes(t *testing.T) []lockstep.Mode {
	switch *flagMode {
	case "compare":
		return []lockstep.Mode{lockstep.AckOnCompare}
	case "receipt":
		return []lockstep.Mode{lockstep.AckOnReceipt}
	case "both":
		return []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt}
	}
	t.Fatalf("-sim.mode %q: want compare, receipt or both", *flagMode)
	return nil
}

// TestSimSeeds runs many seeds with every fault on and fails on any checker
// violation, printing a reproduce command per failing seed.
func TestSimSeeds(t *testing.T) {
	if *flagSeed >= 0 {
		for _, mode := range modes(t) {
			o := options(mode)
			o.Trace = func(s string) { fmt.Println(s) }
			r := Run(uint64(*flagSeed), o)
			if r.Failed() {
				t.Errorf("%s %s", mode, r)
			} else {
				t.Logf("%s %s", mode, r)
			}
		}
		return
	}
	n := *flagSeeds
	if n == 0 {
		n = ciSeedsPerMode
		if raceEnabled {
			n = ciRaceSeedsPerMode
		}
		if testing.Short() {
			n /= 10
		}
	}
	for _, mode := range modes(t) {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			sum := RunMany(*flagFirst, n, DefaultOptions(mode))
			el := time.Since(start)
			t.Logf("%s\n%.0f seeds/s (race detector: %v)", sum, float64(sum.Seeds)/el.Seconds(), raceEnabled)
			if sum.Failed > 0 {
				t.Errorf("%d of %d seeds failed", sum.Failed, sum.Seeds)
			}
			// A run that never fails over, resyncs or crashes proves little.
			// Nor one whose resyncs never take the incremental path, or
			// never fall back from it to a full one.
			if sum.Failovers == 0 || sum.Resyncs == 0 || sum.Crashes == 0 || sum.Outputs == 0 || sum.Increments == 0 || sum.RestoreFailures == 0 {
				t.Errorf("faults were not exercised: %s", sum)
			}
		})
	}
}

// TestDeterministic: one seed, one run. The whole run is compared, not
// its summary: every trace line and every frame sent, hashed, so that a
// difference that leaves the counters alone still fails.
func TestDeterministic(t *testing.T) {
	for _, mode := range []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt} {
		for seed := uint64(1); seed <= 5; seed++ {
			a, b := runHashed(seed, DefaultOptions(mode)), runHashed(seed, DefaultOptions(mode))
			if a != b {
				t.Fatalf("%s seed %d ran twice differently: trace and frames hash to %x and %x", mode, seed, a, b)
			}
		}
	}
}

// runHashed runs one seed and hashes its trace, every frame sent and its
// result.
func runHashed(seed uint64, o Options) [sha256.Size]byte {
	h := sha256.New()
	o.Trace = func(s string) { h.Write([]byte(s)); h.Write([]byte{'\n'}) }
	o.Frames = func(from string, b []byte) { h.Write([]byte(from)); h.Write(b) }
	r := Run(seed, o)
	h.Write([]byte(r.String()))
	return [sha256.Size]byte(h.Sum(nil))
}
