package sim

import (
	"testing"

	"github.com/ftvm/ftvm/lockstep"
)

// harshOptions is a second fault regime: a lossy, slow, reordering network
// with frequent partitions and crashes, agents slow to act on Ready, and a
// tiny log window, so timeouts, retransmissions and flow control are hit far
// more often than by default.
func harshOptions(mode lockstep.Mode) Options {
	o := DefaultOptions(mode)
	o.LossPct, o.DupPct, o.MaxDelaySteps = 20, 10, 15
	o.CrashPer10k, o.PartitionPer10k, o.HealPer10k = 40, 60, 100
	o.DivergePer10k = 150
	o.AgentLagPct = 30
	o.Node.LogWindowEntries = 8
	o.Node.MaxPendingOutputs = 4
	o.Node.PeerTimeoutTicks = 8
	o.LivenessSteps = 900
	return o
}

const (
	harshSeedsPerMode     = 300
	harshRaceSeedsPerMode = 100
)

func TestSimHarsh(t *testing.T) {
	n := harshSeedsPerMode
	if raceEnabled {
		n = harshRaceSeedsPerMode
	}
	if *flagSeeds > 0 {
		n = *flagSeeds
	}
	for _, mode := range modes(t) {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			sum := RunMany(*flagFirst, n, harshOptions(mode))
			t.Log(sum)
			if sum.Failed > 0 {
				t.Errorf("%d of %d seeds failed; reproduce one with the command above plus -sim.harsh", sum.Failed, sum.Seeds)
			}
		})
	}
}
