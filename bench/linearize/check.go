package linearize

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// violationsReportedMax bounds how many violations one Check reports; a
// broken run can produce thousands and the first few say what broke.
const violationsReportedMax = 32

// Rule names the condition a violation broke (see the package comment).
type Rule string

// The rules.
const (
	// DuplicateVersion: two writes were acknowledged with the same version
	// (for a counter: the same value).
	DuplicateVersion Rule = "duplicate version"
	// LostWrite: a GET returned an older version than a write acknowledged
	// before the GET was invoked.
	LostWrite Rule = "lost acknowledged write"
	// StaleRead: a GET returned an older version than a GET that completed
	// before it was invoked.
	StaleRead Rule = "stale read"
	// WentBackwards: a write was acknowledged with a version (a counter
	// value) not above one that was visible before the write was invoked.
	WentBackwards Rule = "went backwards"
	// ValueMismatch: a GET of version v returned a value other than the one
	// written at v.
	ValueMismatch Rule = "value mismatch"
	// ValueFromNowhere: a GET returned a version no acknowledged write
	// created, and no write with an unknown effect could have written it.
	ValueFromNowhere Rule = "value never written"
	// VersionBudget: an operation saw a version higher than the number of
	// times writes invoked before it completed could have been applied.
	VersionBudget Rule = "version from nowhere"
)

// Violation is one reason a history is not linearizable.
type Violation struct {
	Key  string
	Rule Rule
	Ops  []Op // the operations involved, the offending one first
	Why  string
}

func (v *Violation) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "key %q: %s: %s", v.Key, v.Rule, v.Why)
	for i := range v.Ops {
		b.WriteString("\n    ")
		b.WriteString(v.Ops[i].String())
	}
	return b.String()
}

// Violations is the error Check returns for a history that is not
// linearizable.
type Violations struct {
	List    []Violation
	Omitted int // violations found beyond violationsReportedMax
}

func (v *Violations) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "history is not linearizable: %d violation(s)", len(v.List)+v.Omitted)
	for i := range v.List {
		b.WriteString("\n  ")
		b.WriteString(v.List[i].Error())
	}
	if v.Omitted > 0 {
		fmt.Fprintf(&b, "\n  ... and %d more", v.Omitted)
	}
	return b.String()
}

// Has reports whether a violation of rule on key is in the list.
func (v *Violations) Has(key string, rule Rule) bool {
	for i := range v.List {
		if v.List[i].Key == key && v.List[i].Rule == rule {
			return true
		}
	}
	return false
}

func (v *Violations) add(x Violation) {
	if len(v.List) < violationsReportedMax {
		v.List = append(v.List, x)
		return
	}
	v.Omitted++
}

// InputError says that a history cannot be checked because an operation in
// it is malformed; it is a bug in whatever recorded the history.
type InputError struct {
	Index   int // position in the history
	Op      Op
	Problem string
}

func (e *InputError) Error() string {
	return fmt.Sprintf("linearize: history[%d] (%s): %s", e.Index, e.Op.String(), e.Problem)
}

// Check returns nil if history is linearizable, an error wrapping
// *Violations if it is not, and an *InputError if an operation is malformed.
// It does not modify history.
func Check(history []Op) error {
	byKey := map[string][]int{}
	for i := range history {
		if err := validate(i, &history[i]); err != nil {
			return err
		}
		byKey[history[i].Key] = append(byKey[history[i].Key], i)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var vs Violations
	for _, k := range keys {
		ops := make([]*Op, len(byKey[k]))
		for j, i := range byKey[k] {
			ops[j] = &history[i]
		}
		if err := checkKey(k, ops, byKey[k], &vs); err != nil {
			return err
		}
	}
	if len(vs.List) > 0 {
		return &vs
	}
	return nil
}

// AsViolations returns the *Violations inside err, or nil.
func AsViolations(err error) *Violations {
	var v *Violations
	if errors.As(err, &v) {
		return v
	}
	return nil
}

func validate(i int, op *Op) error {
	bad := func(problem string) error { return &InputError{Index: i, Op: *op, Problem: problem} }
	switch {
	case op.Kind != Put && op.Kind != Get && op.Kind != Inc:
		return bad("Kind must be Put, Get or Inc")
	case op.Key == "":
		return bad("Key is empty")
	case op.Attempts < 1:
		return bad("Attempts must be at least 1 (the first send counts)")
	case op.Outcome != Unknown && op.Outcome != OK && op.Outcome != Failed:
		return bad("Outcome must be Unknown, OK or Failed")
	case op.Outcome != Unknown && op.Complete < op.Invoke:
		return bad("Complete is before Invoke; both must come from one monotonic clock")
	case op.Outcome == OK && op.Kind != Get && op.Version == 0:
		return bad("an acknowledged write must carry the version (INC: the value) it created, which starts at 1")
	case op.Outcome == OK && op.Kind == Get && op.Found && op.Version == 0:
		return bad("a GET that found the key must carry the version it read, which starts at 1")
	case op.Outcome == OK && op.Kind == Get && !op.Found && op.Version != 0:
		return bad("a GET that got NONE must have Version 0")
	}
	return nil
}

func isWrite(op *Op) bool { return op.Kind == Put || op.Kind == Inc }

// extraApplications is how many times op may have been applied beyond what
// its reply shows: attempts whose replies never came.
func extraApplications(op *Op) int {
	if op.Outcome == Unknown {
		return op.Attempts
	}
	return op.Attempts - 1
}

// maxApplications is how many times a write may have been applied at all.
func maxApplications(op *Op) int {
	if op.Outcome == Failed {
		return op.Attempts - 1
	}
	return op.Attempts
}

// position is the version an acknowledged operation occupies in the key's
// sequence of states; ok is false when the operation revealed none.
func position(op *Op) (v uint64, ok bool) {
	if op.Outcome != OK {
		return 0, false
	}
	return op.Version, true
}

func checkKey(key string, ops []*Op, index []int, vs *Violations) error {
	counter := false
	for _, op := range ops {
		counter = counter || op.Kind == Inc
	}
	for j, op := range ops {
		if counter && op.Kind == Put {
			return &InputError{Index: index[j], Op: *op, Problem: "key has both INC and PUT operations; the checker models a key as a counter or a register, not both: use separate keys"}
		}
	}
	// writtenValue is the value a write leaves at its version.
	writtenValue := func(op *Op) string {
		if op.Kind == Inc {
			return strconv.FormatUint(op.Version, 10)
		}
		return op.Value
	}
	what := "version"
	if counter {
		what = "counter value"
	}

	var positioned []*Op
	writeAt := map[uint64]*Op{}
	readAt := map[uint64]*Op{}
	for _, op := range ops {
		v, ok := position(op)
		if !ok {
			continue
		}
		positioned = append(positioned, op)
		if !isWrite(op) {
			continue
		}
		// Rule 1: unique write versions.
		if prev := writeAt[v]; prev != nil {
			vs.add(Violation{Key: key, Rule: DuplicateVersion, Ops: []Op{*op, *prev},
				Why: fmt.Sprintf("%s %d was acknowledged to two writes, so one of them was lost", what, v)})
			continue
		}
		writeAt[v] = op
	}

	// Rules 3 and 4: reads match writes.
	for _, r := range positioned {
		if isWrite(r) || !r.Found {
			continue
		}
		v := r.Version
		if counter && r.Value != strconv.FormatUint(v, 10) {
			vs.add(Violation{Key: key, Rule: ValueMismatch, Ops: []Op{*r},
				Why: fmt.Sprintf("a counter's value equals its version, but the GET read version %d with value %q", v, r.Value)})
			continue
		}
		if w := writeAt[v]; w != nil {
			if r.Value != writtenValue(w) {
				vs.add(Violation{Key: key, Rule: ValueMismatch, Ops: []Op{*r, *w},
					Why: fmt.Sprintf("the GET read %q at version %d, but version %d was written with %q", r.Value, v, v, writtenValue(w))})
			}
			continue
		}
		if other := readAt[v]; other != nil && other.Value != r.Value {
			vs.add(Violation{Key: key, Rule: ValueMismatch, Ops: []Op{*r, *other},
				Why: fmt.Sprintf("two GETs read version %d with different values", v)})
			continue
		}
		readAt[v] = r
		if !explainedByUncertainWrite(r, ops, counter) {
			why := fmt.Sprintf("no acknowledged write created version %d, and no write whose effect is uncertain (timed out or retried) and invoked before the GET completed could have", v)
			if !counter && !anyWrote(ops, r.Value) {
				why = fmt.Sprintf("no PUT in the history wrote %q", r.Value)
			}
			vs.add(Violation{Key: key, Rule: ValueFromNowhere, Ops: []Op{*r}, Why: why})
		}
	}

	// Rule 5: version budget.
	writes := make([]*Op, 0, len(ops))
	for _, op := range ops {
		if isWrite(op) {
			writes = append(writes, op)
		}
	}
	sort.SliceStable(writes, func(i, j int) bool { return writes[i].Invoke < writes[j].Invoke })
	budget := make([]int, len(writes)+1) // budget[i]: applications of writes[:i]
	for i, w := range writes {
		budget[i+1] = budget[i] + maxApplications(w)
	}
	for _, op := range positioned {
		n := sort.Search(len(writes), func(i int) bool { return writes[i].Invoke >= op.Complete })
		if op.Version > uint64(budget[n]) {
			vs.add(Violation{Key: key, Rule: VersionBudget, Ops: []Op{*op},
				Why: fmt.Sprintf("reaching %s %d takes %d applied writes, but the writes invoked before this operation completed could have been applied at most %d times", what, op.Version, op.Version, budget[n])})
		}
	}

	// Rule 2: real-time order. Sweep the operations in invoke order while
	// folding in those that completed strictly before; the highest versions
	// written and read among those are the floor for the next one.
	byComplete := append([]*Op(nil), positioned...)
	sort.SliceStable(byComplete, func(i, j int) bool { return byComplete[i].Complete < byComplete[j].Complete })
	byInvoke := append([]*Op(nil), positioned...)
	sort.SliceStable(byInvoke, func(i, j int) bool { return byInvoke[i].Invoke < byInvoke[j].Invoke })
	var topWrite, topRead *Op // highest version among completed writes, reads
	next := 0
	for _, b := range byInvoke {
		for next < len(byComplete) && byComplete[next].Complete < b.Invoke {
			a := byComplete[next]
			top := &topRead
			if isWrite(a) {
				top = &topWrite
			}
			if *top == nil || a.Version > (*top).Version {
				*top = a
			}
			next++
		}
		if isWrite(b) {
			// Equal to an earlier write is a duplicate, reported by rule 1.
			if topWrite != nil && b.Version < topWrite.Version {
				vs.add(Violation{Key: key, Rule: WentBackwards, Ops: []Op{*b, *topWrite},
					Why: fmt.Sprintf("the write was acknowledged with %s %d, but a write acknowledged with %d completed before it was invoked", what, b.Version, topWrite.Version)})
			} else if topRead != nil && b.Version <= topRead.Version {
				vs.add(Violation{Key: key, Rule: WentBackwards, Ops: []Op{*b, *topRead},
					Why: fmt.Sprintf("the write was acknowledged with %s %d, but a GET that completed before it was invoked had already read %d", what, b.Version, topRead.Version)})
			}
			continue
		}
		if topWrite != nil && b.Version < topWrite.Version {
			vs.add(Violation{Key: key, Rule: LostWrite, Ops: []Op{*b, *topWrite},
				Why: fmt.Sprintf("the GET read %s %d (0 = NONE) though a write acknowledged with %d completed before the GET was invoked", what, b.Version, topWrite.Version)})
		} else if topRead != nil && b.Version < topRead.Version {
			vs.add(Violation{Key: key, Rule: StaleRead, Ops: []Op{*b, *topRead},
				Why: fmt.Sprintf("the GET read %s %d (0 = NONE) after a GET that completed before it was invoked had read %d", what, b.Version, topRead.Version)})
		}
	}
	return nil
}

// explainedByUncertainWrite reports whether some write whose effect the
// client cannot rule out may have produced what read r saw.
func explainedByUncertainWrite(r *Op, ops []*Op, counter bool) bool {
	for _, w := range ops {
		if !isWrite(w) || extraApplications(w) == 0 || w.Invoke >= r.Complete {
			continue
		}
		if counter || w.Value == r.Value {
			return true
		}
	}
	return false
}

func anyWrote(ops []*Op, value string) bool {
	for _, w := range ops {
		if w.Kind == Put && w.Value == value {
			return true
		}
	}
	return false
}
