package linearize

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// hist builds histories by hand; times are plain numbers on one clock.
type hist struct {
	ops  []Op
	next uint64
}

func (h *hist) add(op Op) *Op {
	h.next++
	op.ID = h.next
	if op.Attempts == 0 {
		op.Attempts = 1
	}
	h.ops = append(h.ops, op)
	return &h.ops[len(h.ops)-1]
}

func (h *hist) put(key, val string, inv, comp int64, ver uint64) {
	h.add(Op{Kind: Put, Key: key, Value: val, Invoke: inv, Complete: comp, Outcome: OK, Version: ver})
}

// get records a GET that read ver/val; ver 0 means NONE.
func (h *hist) get(key string, inv, comp int64, ver uint64, val string) {
	h.add(Op{Kind: Get, Key: key, Value: val, Invoke: inv, Complete: comp, Outcome: OK, Found: ver > 0, Version: ver})
}

func (h *hist) inc(key string, inv, comp int64, n uint64) {
	h.add(Op{Kind: Inc, Key: key, Invoke: inv, Complete: comp, Outcome: OK, Version: n})
}

func (h *hist) lost(kind Kind, key, val string, inv int64, attempts int) {
	h.add(Op{Kind: kind, Key: key, Value: val, Invoke: inv, Outcome: Unknown, Attempts: attempts})
}

func TestValidHistoriesPass(t *testing.T) {
	cases := map[string]func(h *hist){
		"empty": func(h *hist) {},
		"sequential register": func(h *hist) {
			h.get("k", 0, 1, 0, "")
			h.put("k", "a", 2, 3, 1)
			h.get("k", 4, 5, 1, "a")
			h.put("k", "b", 6, 7, 2)
			h.get("k", 8, 9, 2, "b")
		},
		"overlapping writes and reads": func(h *hist) {
			h.put("k", "a", 0, 10, 1)
			h.put("k", "b", 5, 15, 2)
			h.get("k", 1, 3, 0, "")   // before either took effect
			h.get("k", 6, 8, 2, "b")  // both in flight: either order is fine
			h.get("k", 4, 20, 1, "a") // overlaps the GET that read 2
			h.get("k", 16, 17, 2, "b")
		},
		"write order opposite to invoke order": func(h *hist) {
			h.put("k", "a", 0, 10, 2)
			h.put("k", "b", 1, 9, 1)
			h.get("k", 11, 12, 2, "a")
		},
		"timed-out write never observed": func(h *hist) {
			h.lost(Put, "k", "a", 0, 3)
			h.get("k", 100, 101, 0, "")
		},
		"timed-out write observed later": func(h *hist) {
			h.put("k", "a", 0, 1, 1)
			h.lost(Put, "k", "b", 2, 3)
			h.get("k", 50, 51, 2, "b")
			h.put("k", "c", 52, 53, 3)
		},
		"retried write applied twice": func(h *hist) {
			// The first attempt was applied (version 1) but its reply was
			// lost; the retry was applied again and acknowledged as 2.
			h.add(Op{Kind: Put, Key: "k", Value: "a", Invoke: 0, Complete: 30, Outcome: OK, Version: 2, Attempts: 2})
			h.get("k", 5, 6, 1, "a")
			h.get("k", 31, 32, 2, "a")
		},
		"failed write not applied": func(h *hist) {
			h.add(Op{Kind: Put, Key: "k", Value: "a", Invoke: 0, Complete: 1, Outcome: Failed, Reply: "1 ERR walfull", Attempts: 1})
			h.get("k", 2, 3, 0, "")
		},
		"concurrent counters": func(h *hist) {
			h.inc("c", 0, 10, 2)
			h.inc("c", 1, 5, 1)
			h.get("c", 6, 7, 1, "1")
			h.inc("c", 11, 12, 3)
			h.get("c", 13, 14, 3, "3")
		},
		"counter with a timed-out increment": func(h *hist) {
			h.inc("c", 0, 1, 1)
			h.lost(Inc, "c", "", 2, 2)
			h.inc("c", 20, 21, 4) // the lost INC may have been applied twice
			h.get("c", 22, 23, 4, "4")
		},
		"keys are independent": func(h *hist) {
			h.put("x", "a", 0, 1, 1)
			h.get("y", 2, 3, 0, "")
			h.inc("z", 4, 5, 1)
		},
	}
	for name, build := range cases {
		t.Run(name, func(t *testing.T) {
			var h hist
			build(&h)
			if err := Check(h.ops); err != nil {
				t.Fatalf("valid history rejected: %v", err)
			}
		})
	}
}

func TestPlantedViolationsAreDetected(t *testing.T) {
	cases := []struct {
		name  string
		build func(h *hist)
		key   string
		rule  Rule
		ids   []uint64 // operations the error must name
	}{
		{"acknowledged write lost (NONE)", func(h *hist) {
			h.put("k", "a", 0, 1, 1)
			h.get("k", 2, 3, 0, "")
		}, "k", LostWrite, []uint64{1, 2}},
		{"acknowledged write lost (older version)", func(h *hist) {
			h.put("k", "a", 0, 1, 1)
			h.put("k", "b", 2, 3, 2)
			h.get("k", 4, 5, 1, "a")
		}, "k", LostWrite, []uint64{2, 3}},
		{"stale read after a newer read", func(h *hist) {
			h.put("k", "a", 0, 1, 1)
			h.put("k", "b", 2, 20, 2)
			h.get("k", 3, 4, 2, "b")
			h.get("k", 5, 6, 1, "a")
		}, "k", StaleRead, []uint64{3, 4}},
		{"counter value acknowledged twice", func(h *hist) {
			h.inc("c", 0, 10, 1)
			h.inc("c", 1, 9, 1)
		}, "c", DuplicateVersion, []uint64{1, 2}},
		{"PUT version acknowledged twice", func(h *hist) {
			h.put("k", "a", 0, 1, 1)
			h.put("k", "b", 2, 3, 1)
		}, "k", DuplicateVersion, []uint64{1, 2}},
		{"counter going backwards", func(h *hist) {
			h.lost(Inc, "c", "", 0, 1)
			h.inc("c", 1, 2, 2)
			h.inc("c", 3, 4, 1)
		}, "c", WentBackwards, []uint64{2, 3}},
		{"counter behind a read", func(h *hist) {
			h.lost(Inc, "c", "", 0, 2)
			h.get("c", 1, 2, 2, "2")
			h.inc("c", 3, 4, 2)
		}, "c", WentBackwards, []uint64{2, 3}},
		{"read from the future", func(h *hist) {
			h.get("k", 0, 1, 1, "a")
			h.put("k", "a", 2, 3, 1)
		}, "k", WentBackwards, []uint64{1, 2}},
		{"GET of a value never written", func(h *hist) {
			h.lost(Put, "k", "a", 0, 1)
			h.get("k", 2, 3, 1, "zzz")
		}, "k", ValueFromNowhere, []uint64{2}},
		{"GET of another value at an acknowledged version", func(h *hist) {
			h.put("k", "a", 0, 1, 1)
			h.get("k", 2, 3, 1, "b")
		}, "k", ValueMismatch, []uint64{1, 2}},
		{"GET of a timed-out write invoked after the GET completed", func(h *hist) {
			h.get("k", 0, 1, 1, "a")
			h.lost(Put, "k", "a", 2, 1)
		}, "k", ValueFromNowhere, []uint64{1}},
		{"two GETs of one version disagree", func(h *hist) {
			h.lost(Put, "k", "a", 0, 1)
			h.lost(Put, "k", "b", 0, 1)
			h.get("k", 2, 3, 1, "a")
			h.get("k", 4, 5, 1, "b")
		}, "k", ValueMismatch, []uint64{3, 4}},
		{"counter GET value differs from its version", func(h *hist) {
			h.inc("c", 0, 1, 1)
			h.get("c", 2, 3, 1, "7")
		}, "c", ValueMismatch, []uint64{2}},
		{"version from nowhere", func(h *hist) {
			h.put("k", "a", 0, 1, 5)
		}, "k", VersionBudget, []uint64{1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h hist
			tc.build(&h)
			// A healthy key next to the broken one must not be blamed.
			h.ops = append(h.ops, Op{ID: 99, Kind: Put, Key: "other", Value: "x", Invoke: 0, Complete: 1, Outcome: OK, Version: 1, Attempts: 1})
			err := Check(h.ops)
			vs := AsViolations(err)
			if vs == nil {
				t.Fatalf("planted %s not detected; Check returned %v", tc.rule, err)
			}
			if !vs.Has(tc.key, tc.rule) {
				t.Fatalf("want a %q violation on key %q, got:\n%v", tc.rule, tc.key, err)
			}
			if vs.Has("other", tc.rule) {
				t.Fatalf("healthy key blamed:\n%v", err)
			}
			msg := err.Error()
			for _, id := range tc.ids {
				if !strings.Contains(msg, fmt.Sprintf("#%d ", id)) {
					t.Errorf("error does not name operation #%d:\n%s", id, msg)
				}
			}
			if !strings.Contains(msg, fmt.Sprintf("key %q", tc.key)) {
				t.Errorf("error does not name key %q:\n%s", tc.key, msg)
			}
		})
	}
}

func TestMalformedHistoryIsAnInputError(t *testing.T) {
	cases := map[string][]Op{
		"no attempts":       {{ID: 1, Kind: Get, Key: "k", Outcome: Unknown}},
		"empty key":         {{ID: 1, Kind: Get, Outcome: Unknown, Attempts: 1}},
		"bad kind":          {{ID: 1, Key: "k", Outcome: Unknown, Attempts: 1}},
		"time runs back":    {{ID: 1, Kind: Get, Key: "k", Invoke: 5, Complete: 4, Outcome: OK, Attempts: 1}},
		"write version 0":   {{ID: 1, Kind: Put, Key: "k", Value: "a", Outcome: OK, Attempts: 1}},
		"NONE with version": {{ID: 1, Kind: Get, Key: "k", Outcome: OK, Version: 3, Attempts: 1}},
		"PUT and INC on one key": {
			{ID: 1, Kind: Inc, Key: "k", Outcome: OK, Version: 1, Attempts: 1},
			{ID: 2, Kind: Put, Key: "k", Value: "a", Outcome: OK, Version: 2, Attempts: 1},
		},
	}
	for name, ops := range cases {
		t.Run(name, func(t *testing.T) {
			err := Check(ops)
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("want *InputError, got %v", err)
			}
			if AsViolations(err) != nil {
				t.Fatalf("a malformed history must not be reported as a violation: %v", err)
			}
		})
	}
}

func TestViolationReportIsBounded(t *testing.T) {
	var h hist
	h.put("k", "a", 0, 1, 1)
	for i := 0; i < 3*violationsReportedMax; i++ {
		h.get("k", int64(10+2*i), int64(11+2*i), 0, "")
	}
	vs := AsViolations(Check(h.ops))
	if vs == nil {
		t.Fatal("lost write not detected")
	}
	if len(vs.List) != violationsReportedMax || vs.Omitted != 2*violationsReportedMax {
		t.Fatalf("reported %d, omitted %d; want %d and %d", len(vs.List), vs.Omitted, violationsReportedMax, 2*violationsReportedMax)
	}
}
