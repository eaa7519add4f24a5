package sim

import (
	"fmt"

	"github.com/ftvm/ftvm/lockstep"
)

// maxFailuresKept bounds the failing results a Summary keeps in full.
const maxFailuresKept = 10

// Summary is what RunMany found over a range of seeds.
type Summary struct {
	Mode      lockstep.Mode
	Seeds     int
	Failed    int
	Failures  []Result // the first maxFailuresKept failing runs
	Outputs   int
	Repeats   int
	Failovers int
	Resyncs   int
	Crashes   int
	Steps     int
}

// RunMany runs seeds first..first+count-1 with opts and sums what they found.
func RunMany(first uint64, count int, opts Options) Summary {
	sum := Summary{Mode: opts.Mode}
	for i := range count {
		r := Run(first+uint64(i), opts)
		sum.Seeds++
		sum.Outputs += r.Outputs
		sum.Repeats += r.Repeats
		sum.Failovers += r.Failovers
		sum.Resyncs += r.Resyncs
		sum.Crashes += r.Crashes
		sum.Steps += r.Steps
		if r.Failed() {
			sum.Failed++
			if len(sum.Failures) < maxFailuresKept {
				sum.Failures = append(sum.Failures, r)
			}
		}
	}
	return sum
}

// ReproduceCommand is the one line that replays a failing seed with a trace.
func ReproduceCommand(mode lockstep.Mode, seed uint64) string {
	m := "compare"
	if mode == lockstep.AckOnReceipt {
		m = "receipt"
	}
	return fmt.Sprintf("go test ./lockstep/sim -run 'TestSimSeeds$' -v -sim.mode %s -sim.seed %d", m, seed)
}

func (s Summary) String() string {
	out := fmt.Sprintf("%s: %d seeds, %d failed; %d outputs (%d repeats), %d failovers, %d resyncs, %d crashes, %d steps",
		s.Mode, s.Seeds, s.Failed, s.Outputs, s.Repeats, s.Failovers, s.Resyncs, s.Crashes, s.Steps)
	for _, f := range s.Failures {
		out += "\n" + f.String() + "\n  reproduce: " + ReproduceCommand(s.Mode, f.Seed)
	}
	return out
}
