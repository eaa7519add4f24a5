package sim

import (
	"testing"
)

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
			sum := RunMany(*flagFirst, n, HarshOptions(mode))
			t.Log(sum)
			if sum.Failed > 0 {
				t.Errorf("%d of %d seeds failed; reproduce one with the command above", sum.Failed, sum.Seeds)
			}
		})
	}
}
