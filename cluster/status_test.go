package cluster

import (
	"reflect"
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	prot := map[string]DaemonState{"a": {Role: "primary", Protected: true}, "b": {Role: "secondary", Synced: true}}
	p := pool(map[string]int{"a": 2, "b": 2, "d": 1},
		&VM{ID: "ok", Place: placed("a", "b", 1), Holder: "a", At: prot},
		&VM{ID: "joining", Place: placed("a", "d", 2), Holder: "a", At: map[string]DaemonState{"a": {Role: "primary"}}},
		&VM{ID: "nosec", Place: placed("b", "", 2), Holder: "b", At: map[string]DaemonState{"b": {Role: "primary"}}},
		&VM{ID: "takeover", Place: placed("x", "b", 1), Holder: "x", At: map[string]DaemonState{"b": {Role: "secondary"}}},
		&VM{ID: "halted", Place: placed("x", "b", 1), At: map[string]DaemonState{"b": {Role: "halted"}}},
		&VM{ID: "lost", Place: placed("x", "", 2)},
		&VM{ID: "new"},
		// A primary that says it is protected but does not hold the
		// arbiter's lease is not counted protected.
		&VM{ID: "stale", Place: placed("a", "b", 1), Holder: "b", At: prot},
	)
	r := Describe(p)
	want := []string{"halted", "joining", "lost", "new", "nosec", "stale", "takeover"}
	if !reflect.DeepEqual(r.Unprotected, want) {
		t.Errorf("Unprotected = %v, want %v", r.Unprotected, want)
	}
	states := map[string]string{}
	for _, v := range r.VMs {
		states[v.ID] = v.State
	}
	for id, inState := range map[string]string{
		"ok": "protected", "joining": "secondary joining on d", "nosec": "no live host with a free slot",
		"takeover": "takes over once", "lost": "LOST", "new": "not placed", "halted": "LOST: the primary's host is dead and the secondary's daemon stopped",
	} {
		if !strings.Contains(states[id], inState) {
			t.Errorf("%s: state %q, want it to say %q", id, states[id], inState)
		}
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "unprotected now: halted, joining, lost, new, nosec, stale, takeover") ||
		!strings.Contains(out, "a (b holds the lease)") {
		t.Errorf("text report:\n%s", out)
	}
}
