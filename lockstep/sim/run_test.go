package sim

import (
	"flag"
	"fmt"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
)

var (
	flagSeeds = flag.Int("sim.seeds", 0, "number of seeds per mode for TestSimSeeds (0: the CI default)")
	flagSeed  = flag.Int64("sim.seed", -1, "run only this seed, with a trace")
)

func TestDebugOne(t *testing.T) {
	if *flagSeed < 0 {
		t.Skip("needs -sim.seed")
	}
	for _, mode := range []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt} {
		o := DefaultOptions(mode)
		o.Trace = func(s string) { fmt.Println(s) }
		r := Run(uint64(*flagSeed), o)
		t.Log(mode, r)
	}
}

func TestQuick(t *testing.T) {
	for _, mode := range []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt} {
		fails := 0
		for seed := uint64(1); seed <= 200; seed++ {
			r := Run(seed, DefaultOptions(mode))
			if r.Failed() {
				fails++
				if fails < 4 {
					t.Errorf("%s %s", mode, r)
				}
			} else if seed < 4 {
				t.Logf("%s %s", mode, r)
			}
		}
		t.Logf("%s: %d failing", mode, fails)
	}
}
