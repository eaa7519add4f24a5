package sim

import (
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/internal/bugs"
)

// seedsToCatchBug bounds how many seeds the simulator may need to catch a
// planted bug: a checker that needs more is too weak to trust.
const seedsToCatchBug = 50

// TestPlantedBugsAreCaught proves each checker can fail: with a known bug
// planted in the nodes, some seed within seedsToCatchBug must report a
// violation of the kind the bug causes.
func TestPlantedBugsAreCaught(t *testing.T) {
	cases := []struct {
		name string
		bug  bugs.Set
		mode lockstep.Mode
		want Checker
	}{
		{"release before ack (receipt)", bugs.Set{ReleaseBeforeAck: true}, lockstep.AckOnReceipt, OutputRule},
		{"release before ack (compare)", bugs.Set{ReleaseBeforeAck: true}, lockstep.AckOnCompare, OutputRule},
		{"skip fence check", bugs.Set{SkipFenceCheck: true}, lockstep.AckOnCompare, SplitBrain},
		{"ack before append", bugs.Set{AckBeforeAppend: true}, lockstep.AckOnReceipt, OutputRule},
		{"resync without pause", bugs.Set{ResyncWithoutPause: true}, lockstep.AckOnCompare, Resync},
		{"go live before draining the log", bugs.Set{GoLiveBeforeDrain: true}, lockstep.AckOnReceipt, Consistency},
		{"persist unmatched outputs at a restore", bugs.Set{PersistUnmatched: true}, lockstep.AckOnCompare, Storage},
		{"restore a pre-copy part as the chain's end", bugs.Set{PrecopySkipFinal: true}, lockstep.AckOnCompare, Resync},
		{"resend whole checkpoints on a timer", bugs.Set{ResendWholeCheckpoint: true}, lockstep.AckOnCompare, Traffic},
		{"a resync's increment one page short", bugs.Set{IncrementPageShort: true}, lockstep.AckOnCompare, Resync},
		{"a resync's increment one page short (receipt)", bugs.Set{IncrementPageShort: true}, lockstep.AckOnReceipt, Resync},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := DefaultOptions(c.mode)
			o.Bugs = c.bug
			for seed := uint64(1); seed <= seedsToCatchBug; seed++ {
				for _, v := range Run(seed, o).Violations {
					if v.Checker == c.want {
						t.Logf("caught at seed %d: %s", seed, v)
						return
					}
				}
			}
			t.Fatalf("no seed in 1..%d made the %s checker catch the planted bug", seedsToCatchBug, c.want)
		})
	}
}

// TestLivenessCheckerFires: hosts that never come back cannot be protected
// again, and the liveness checker must say so.
func TestLivenessCheckerFires(t *testing.T) {
	o := DefaultOptions(lockstep.AckOnCompare)
	o.RestartDelaySteps = o.SafetySteps + o.LivenessSteps + 1
	for seed := uint64(1); seed <= seedsToCatchBug; seed++ {
		for _, v := range Run(seed, o).Violations {
			if v.Checker == Liveness {
				t.Logf("caught at seed %d: %s", seed, v)
				return
			}
		}
	}
	t.Fatalf("no seed in 1..%d tripped the liveness checker with hosts that never restart", seedsToCatchBug)
}

// TestReceiptModeExposure shows why a secondary that diverged in
// ack-on-receipt mode must not go live: that mode releases outputs before
// comparing, so a replica that diverged and then takes over contradicts
// what the world saw. With the rule off (bugs.GoLiveDiverged) the
// consistency checker catches it; with it on, the same seeds hold.
func TestReceiptModeExposure(t *testing.T) {
	o := DefaultOptions(lockstep.AckOnReceipt)
	o.DivergeInReceiptMode = true
	o.DivergePer10k = 300
	for seed := uint64(1); seed <= seedsToCatchBug; seed++ {
		if r := Run(seed, o); r.Failed() {
			t.Errorf("with the rule on, seed %d failed: %s", seed, r)
		}
	}
	o.Bugs.GoLiveDiverged = true
	for seed := uint64(1); seed <= seedsToCatchBug; seed++ {
		for _, v := range Run(seed, o).Violations {
			if v.Checker == Consistency {
				t.Logf("seed %d: %s", seed, v)
				return
			}
		}
	}
	t.Fatalf("no seed in 1..%d showed ack-on-receipt's exposure to divergence", seedsToCatchBug)
}
