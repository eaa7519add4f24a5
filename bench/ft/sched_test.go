package ft

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestWhySaysCPUBound: a protected row whose vCPU waited runnable with
// the machine busy says CPU-bound, with the figures; one whose vCPU slept
// (waiting on the protocol, not on CPUs) or whose machine had idle CPUs
// does not.
func TestWhySaysCPUBound(t *testing.T) {
	cases := map[string]struct {
		sc   Sched
		want bool
	}{
		"waits runnable, machine busy": {Sched{VCPURunPrimary: 48, VCPUWaitPrimary: 54, VCPURunSecondary: 40, VCPUWaitSecondary: 51, MachineIdle: 8}, true},
		"runs most, waits the rest":    {Sched{VCPURunPrimary: 68, VCPUWaitPrimary: 30, MachineIdle: 3}, true},
		"vCPU sleeps, machine busy":    {Sched{VCPURunPrimary: 40, VCPUWaitPrimary: 25, MachineIdle: 8}, false},
		"hardly waits":                 {Sched{VCPURunPrimary: 85, VCPUWaitPrimary: 5, MachineIdle: 8}, false},
		"waits runnable, CPUs idle":    {Sched{VCPURunPrimary: 48, VCPUWaitPrimary: 54, MachineIdle: 40}, false},
	}
	for name, c := range cases {
		rep := sampleReport()
		base := Sched{VCPURunPrimary: 74, VCPUWaitPrimary: 29, MachineIdle: 11}
		rep.Rows[0].Sched = &base
		sc := c.sc
		rep.Rows[1].Sched = &sc // kv-sat ack-on-receipt: below its target
		ComputeRatios(rep)
		w := rep.Rows[1].Why
		if got := strings.Contains(w, "CPU-bound"); got != c.want {
			t.Errorf("%s: why %q: CPU-bound %v, want %v", name, w, got, c.want)
		}
		if !strings.Contains(w, "vCPU threads ran") || !strings.Contains(w, "(unprotected: ran 74%, waited 29%)") {
			t.Errorf("%s: why %q lacks the vCPU threads' figures against the baseline's", name, w)
		}
		if err := Check(rep, rep.Markdown()); err != nil {
			t.Errorf("%s: Check: %v", name, err)
		}
	}
}

// TestSchedOfThisProcess reads this process's threads and the machine
// twice around a busy spell of one goroutine: the busiest thread ran for
// most of it, and the shares are within 0 and 100 % of the window.
func TestSchedOfThisProcess(t *testing.T) {
	read := func() *snap {
		th, err := threadsOf(os.Getpid())
		if err != nil {
			t.Fatalf("reading this process's schedstat: %v", err)
		}
		m, err := readMachineTimes()
		if err != nil {
			t.Fatal(err)
		}
		return &snap{at: time.Now(), threadsP: th, machine: m, machineOK: true}
	}
	before := read()
	end := time.Now().Add(300 * time.Millisecond)
	for n := 0; time.Now().Before(end); n++ {
		_ = n * n
	}
	after := read()
	sc := schedOf(before, after, after.at.Sub(before.at).Nanoseconds())
	if sc == nil {
		t.Fatal("no Sched from two readings")
	}
	// The spinning thread ran the whole spell unless the machine took
	// its CPU: ran plus waited covers most of it either way.
	if got := sc.VCPURunPrimary + sc.VCPUWaitPrimary; got < 50 || sc.VCPURunPrimary > 101 {
		t.Errorf("busiest thread ran %.0f%% and waited %.0f%% of a spell it spent spinning", sc.VCPURunPrimary, sc.VCPUWaitPrimary)
	}
	if sc.MachineIdle < 0 || sc.MachineIdle > 100 || sc.MachineSteal < 0 || sc.MachineSteal > 100 {
		t.Errorf("machine idle %.0f%% steal %.0f%%", sc.MachineIdle, sc.MachineSteal)
	}
	if schedOf(before, &snap{at: after.at}, 1) != nil {
		t.Error("schedOf with a reading missing gave a Sched")
	}
}
