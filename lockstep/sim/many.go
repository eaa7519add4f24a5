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
	Harsh     bool // the seeds ran under HarshOptions
	Seeds     int
	Failed    int
	Failures  []Result // the first maxFailuresKept failing runs
	Outputs   int
	Repeats   int
	Failovers int
	Resyncs   int
	// Increments of the resyncs were restored as increments onto the
	// secondary's VM; RestoreFailures were refused (a full one followed).
	Increments      int
	RestoreFailures int
	Crashes         int
	Steps           int
}

// RunMany runs seeds first..first+count-1 with opts and sums what they found.
func RunMany(first uint64, count int, opts Options) Summary {
	sum := Summary{Mode: opts.Mode, Harsh: opts.Harsh}
	for i := range count {
		sum.add(Run(first+uint64(i), opts))
	}
	return sum
}

func (s *Summary) add(r Result) {
	one := Summary{Seeds: 1, Outputs: r.Outputs, Repeats: r.Repeats, Failovers: r.Failovers,
		Resyncs: r.Resyncs, Increments: r.Increments, RestoreFailures: r.RestoreFailures, Crashes: r.Crashes, Steps: r.Steps}
	if r.Failed() {
		one.Failed, one.Failures = 1, []Result{r}
	}
	s.Merge(one)
}

// Merge adds o, a summary of other seeds run with the same options, to s;
// it lets callers split a seed range across goroutines.
func (s *Summary) Merge(o Summary) {
	s.Seeds += o.Seeds
	s.Failed += o.Failed
	s.Outputs += o.Outputs
	s.Repeats += o.Repeats
	s.Failovers += o.Failovers
	s.Resyncs += o.Resyncs
	s.Increments += o.Increments
	s.RestoreFailures += o.RestoreFailures
	s.Crashes += o.Crashes
	s.Steps += o.Steps
	for _, f := range o.Failures {
		if len(s.Failures) < maxFailuresKept {
			s.Failures = append(s.Failures, f)
		}
	}
}

// ReproduceCommand is the one line that replays a failing seed with a trace.
func ReproduceCommand(mode lockstep.Mode, seed uint64, harsh bool) string {
	m := "compare"
	if mode == lockstep.AckOnReceipt {
		m = "receipt"
	}
	cmd := fmt.Sprintf("ftvm sim --mode %s --seed %d", m, seed)
	if harsh {
		cmd += " --harsh"
	}
	return cmd
}

func (s Summary) String() string {
	out := fmt.Sprintf("%s: %d seeds, %d failed; %d outputs (%d repeats), %d failovers, %d resyncs (%d increments, %d increments refused), %d crashes, %d steps",
		s.Mode, s.Seeds, s.Failed, s.Outputs, s.Repeats, s.Failovers, s.Resyncs, s.Increments, s.RestoreFailures, s.Crashes, s.Steps)
	for _, f := range s.Failures {
		out += "\n" + f.String() + "\n  reproduce: " + ReproduceCommand(s.Mode, f.Seed, s.Harsh)
	}
	return out
}
