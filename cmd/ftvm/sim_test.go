package main

import (
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/sim"
)

func TestSimRunsSeedsAndReports(t *testing.T) {
	code, out, errs := runFtvm("sim", "--seeds", "20", "--mode", "compare")
	if code != exitOK {
		t.Fatalf("ftvm sim: exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	if !strings.Contains(out, "20 seeds, 0 failed") || !strings.Contains(out, "seeds/s") {
		t.Fatalf("ftvm sim output lacks the summary: %s", out)
	}
}

// The parallel split must cover exactly the seeds a sequential run covers.
func TestSimParallelSplitMatchesSequential(t *testing.T) {
	o := sim.DefaultOptions(lockstep.AckOnCompare)
	seq := sim.RunMany(5, 13, o)
	par := runSeedsParallel(5, 13, 4, o)
	if seq.Seeds != par.Seeds || seq.Outputs != par.Outputs || seq.Steps != par.Steps || seq.Failovers != par.Failovers {
		t.Fatalf("parallel %+v differs from sequential %+v", par, seq)
	}
}

func TestSimOneSeedTraceAndUsage(t *testing.T) {
	code, out, _ := runFtvm("sim", "--seed", "3", "--mode", "receipt")
	if code != exitOK || !strings.Contains(out, "seed 3:") {
		t.Fatalf("ftvm sim --seed 3: exit %d, output %q", code, out)
	}
	if strings.Count(out, "\n") < 10 {
		t.Fatalf("ftvm sim --seed printed no trace: %q", out)
	}
	for _, args := range [][]string{{"sim", "--mode", "x"}, {"sim", "--seed", "1"}, {"sim", "--seeds", "0"}} {
		if code, _, _ := runFtvm(args...); code != exitUsage {
			t.Errorf("ftvm %q: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestReproduceCommandNamesTheCLI(t *testing.T) {
	got := sim.ReproduceCommand(lockstep.AckOnReceipt, 42, true)
	if got != "ftvm sim --mode receipt --seed 42 --harsh" {
		t.Fatalf("reproduce command %q", got)
	}
}
