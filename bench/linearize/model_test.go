package linearize

import (
	"fmt"
	"math/rand"
	"sort"
	"strconv"
	"testing"
)

// genConfig shapes the histories genHistory makes.
type genConfig struct {
	ops, registers, counters int
	spanNs                   int64 // invoke times fall in [0, spanNs)
	durationMaxNs            int64 // an operation lasts 3..durationMaxNs
	unknownPercent           int   // operations whose reply is lost
	retryPercent             int   // acknowledged writes that were applied twice
}

var defaultGen = genConfig{ops: 300, registers: 3, counters: 2, spanNs: 20_000, durationMaxNs: 400, unknownPercent: 8, retryPercent: 5}

// genHistory runs random operations against a sequential reference model:
// each operation takes effect at a random instant inside its
// [Invoke, Complete] window, in instant order, so the history it returns is
// linearizable by construction. Operations with a lost reply took effect
// with probability 1/2; some acknowledged writes took effect twice (a
// retried request whose first reply was lost).
func genHistory(rng *rand.Rand, c genConfig) []Op {
	type effect struct {
		at    int64
		op    int
		acked bool // this application produced the recorded reply
	}
	ops := make([]Op, c.ops)
	var effects []effect
	for i := range ops {
		op := &ops[i]
		op.ID = uint64(i + 1)
		op.Attempts = 1
		op.Invoke = rng.Int63n(c.spanNs)
		op.Complete = op.Invoke + 3 + rng.Int63n(c.durationMaxNs-2)
		within := func() int64 { return op.Invoke + 1 + rng.Int63n(op.Complete-op.Invoke-1) }
		k := rng.Intn(c.registers + c.counters)
		if k < c.registers {
			op.Key = "r" + strconv.Itoa(k)
			if rng.Intn(2) == 0 {
				op.Kind, op.Value = Put, fmt.Sprintf("v%d", op.ID)
			} else {
				op.Kind = Get
			}
		} else {
			op.Key = "c" + strconv.Itoa(k-c.registers)
			op.Kind = [2]Kind{Inc, Get}[rng.Intn(2)]
		}
		switch {
		case rng.Intn(100) < c.unknownPercent:
			op.Outcome, op.Attempts = Unknown, 1+rng.Intn(3)
			if op.Kind != Get {
				for a := 0; a < op.Attempts; a++ {
					if rng.Intn(2) == 0 {
						effects = append(effects, effect{at: within(), op: i})
					}
				}
			}
		case op.Kind != Get && rng.Intn(100) < c.retryPercent:
			op.Outcome, op.Attempts = OK, 2
			a, b := within(), within()
			if a > b {
				a, b = b, a
			}
			effects = append(effects, effect{at: a, op: i}, effect{at: b, op: i, acked: true})
		default:
			op.Outcome = OK
			effects = append(effects, effect{at: within(), op: i, acked: true})
		}
	}
	sort.Slice(effects, func(i, j int) bool { return effects[i].at < effects[j].at })
	type state struct {
		version uint64
		value   string
	}
	model := map[string]*state{}
	for _, e := range effects {
		op := &ops[e.op]
		s := model[op.Key]
		if s == nil {
			s = &state{}
			model[op.Key] = s
		}
		switch op.Kind {
		case Put:
			s.version++
			s.value = op.Value
		case Inc:
			s.version++
			s.value = strconv.FormatUint(s.version, 10)
		}
		if !e.acked {
			continue
		}
		op.Version = s.version
		if op.Kind == Get {
			op.Found, op.Value = s.version > 0, s.value
		}
	}
	return ops
}

// corruption changes one reply of a valid history so that the result is
// guaranteed not to be linearizable; it returns false if the history offers
// no place for it.
type corruption struct {
	name  string
	apply func(rng *rand.Rand, ops []Op) bool
}

func acked(ops []Op, pred func(*Op) bool) []int {
	var idx []int
	for i := range ops {
		if ops[i].Outcome == OK && pred(&ops[i]) {
			idx = append(idx, i)
		}
	}
	return idx
}

var guaranteedCorruptions = []corruption{
	{"write acknowledged with another write's version", func(rng *rand.Rand, ops []Op) bool {
		writes := acked(ops, isWrite)
		rng.Shuffle(len(writes), func(i, j int) { writes[i], writes[j] = writes[j], writes[i] })
		for _, i := range writes {
			for _, j := range writes {
				if i != j && ops[i].Key == ops[j].Key && ops[i].Version != ops[j].Version {
					ops[i].Version = ops[j].Version
					return true
				}
			}
		}
		return false
	}},
	{"GET returns a value nobody wrote", func(rng *rand.Rand, ops []Op) bool {
		reads := acked(ops, func(op *Op) bool { return op.Kind == Get && op.Found })
		if len(reads) == 0 {
			return false
		}
		ops[reads[rng.Intn(len(reads))]].Value = "never-written"
		return true
	}},
	{"GET returns NONE after an acknowledged write", func(rng *rand.Rand, ops []Op) bool {
		reads := acked(ops, func(op *Op) bool { return op.Kind == Get && op.Found })
		rng.Shuffle(len(reads), func(i, j int) { reads[i], reads[j] = reads[j], reads[i] })
		for _, r := range reads {
			for _, w := range acked(ops, isWrite) {
				if ops[w].Key == ops[r].Key && ops[w].Complete < ops[r].Invoke {
					ops[r].Found, ops[r].Version, ops[r].Value = false, 0, ""
					return true
				}
			}
		}
		return false
	}},
	{"INC acknowledged with a value seen before it was invoked", func(rng *rand.Rand, ops []Op) bool {
		incs := acked(ops, func(op *Op) bool { return op.Kind == Inc })
		rng.Shuffle(len(incs), func(i, j int) { incs[i], incs[j] = incs[j], incs[i] })
		for _, b := range incs {
			for _, a := range acked(ops, func(op *Op) bool { return op.Version > 0 }) {
				if a != b && ops[a].Key == ops[b].Key && ops[a].Complete < ops[b].Invoke {
					ops[b].Version = ops[a].Version
					return true
				}
			}
		}
		return false
	}},
}

// randomCorruption changes one acknowledged reply at random; the change is
// not always detectable (a version moved inside an overlap can still be
// explained), so only the rate at which it is caught is reported.
func randomCorruption(rng *rand.Rand, ops []Op) bool {
	all := acked(ops, func(op *Op) bool { return op.Version > 0 })
	if len(all) == 0 {
		return false
	}
	op := &ops[all[rng.Intn(len(all))]]
	switch rng.Intn(3) {
	case 0:
		op.Version++
	case 1:
		op.Version--
		if op.Version == 0 && op.Kind == Get {
			op.Found, op.Value = false, ""
		}
		if op.Version == 0 && op.Kind != Get {
			op.Version = 2 // a write's version starts at 1
		}
	default:
		if op.Kind == Put {
			op.Version += 2
		} else {
			op.Value += "x"
		}
	}
	return true
}

func TestGeneratedHistoriesAreAccepted(t *testing.T) {
	const historiesCount = 300
	for seed := int64(1); seed <= historiesCount; seed++ {
		ops := genHistory(rand.New(rand.NewSource(seed)), defaultGen)
		if err := Check(ops); err != nil {
			t.Fatalf("seed %d: a history from the sequential model was rejected: %v", seed, err)
		}
	}
}

func TestCorruptedHistoriesAreRejected(t *testing.T) {
	const historiesCount = 300
	for _, c := range guaranteedCorruptions {
		t.Run(c.name, func(t *testing.T) {
			applied := 0
			for seed := int64(1); seed <= historiesCount; seed++ {
				rng := rand.New(rand.NewSource(seed))
				ops := genHistory(rng, defaultGen)
				if !c.apply(rng, ops) {
					continue
				}
				applied++
				if AsViolations(Check(ops)) == nil {
					t.Fatalf("seed %d: corruption %q not detected", seed, c.name)
				}
			}
			if applied < historiesCount/2 {
				t.Fatalf("corruption applied to only %d of %d histories; the generator no longer exercises it", applied, historiesCount)
			}
		})
	}
	t.Run("random reply", func(t *testing.T) {
		// "Mostly": a bar well under the rate the seeds below give, so the
		// test fails if the checker loses a whole class of detection.
		const detectedPercentMin = 80
		caught, tried := 0, 0
		for seed := int64(1); seed <= historiesCount; seed++ {
			rng := rand.New(rand.NewSource(seed))
			ops := genHistory(rng, defaultGen)
			if !randomCorruption(rng, ops) {
				continue
			}
			tried++
			if AsViolations(Check(ops)) != nil {
				caught++
			}
		}
		t.Logf("random one-reply corruption detected in %d of %d histories", caught, tried)
		if caught*100 < tried*detectedPercentMin {
			t.Fatalf("detected %d of %d random corruptions, want at least %d%%", caught, tried, detectedPercentMin)
		}
	})
}

// FuzzCheck: for any seed and shape, the model's history is accepted and
// every guaranteed corruption of it is rejected.
func FuzzCheck(f *testing.F) {
	f.Add(int64(1), uint8(3), uint8(2), uint8(8))
	f.Add(int64(7), uint8(1), uint8(1), uint8(40))
	f.Fuzz(func(t *testing.T, seed int64, registers, counters, unknownPercent uint8) {
		c := defaultGen
		c.ops = 120
		c.registers, c.counters = 1+int(registers%4), 1+int(counters%4)
		c.unknownPercent = int(unknownPercent % 60)
		ops := genHistory(rand.New(rand.NewSource(seed)), c)
		if err := Check(ops); err != nil {
			t.Fatalf("model history rejected: %v", err)
		}
		for _, corr := range guaranteedCorruptions {
			bad := append([]Op(nil), ops...)
			rng := rand.New(rand.NewSource(seed))
			if corr.apply(rng, bad) && AsViolations(Check(bad)) == nil {
				t.Fatalf("corruption %q not detected", corr.name)
			}
		}
	})
}
