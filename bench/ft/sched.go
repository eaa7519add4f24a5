package ft

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Sched is where a cell's vCPU threads spent the window and how busy the
// machine was: whether a protected pair that serves less is waiting for
// something (the vCPU thread neither runs nor waits to run) or for CPUs
// (it waits runnable: the machine is CPU-bound, and outstanding requests
// or a larger log window cannot help).
type Sched struct {
	// VCPURun and VCPUWait are, for each daemon's busiest thread (the
	// vCPU's: it runs the guest), the time it ran and the time it was
	// runnable but waited for a CPU, in percent of the window
	// (/proc/PID/task/TID/schedstat). Secondary figures are 0 for an
	// unprotected row.
	VCPURunPrimary    float64 `json:"vcpu_run_primary_pct"`
	VCPUWaitPrimary   float64 `json:"vcpu_wait_primary_pct"`
	VCPURunSecondary  float64 `json:"vcpu_run_secondary_pct,omitempty"`
	VCPUWaitSecondary float64 `json:"vcpu_wait_secondary_pct,omitempty"`
	// MachineIdle and MachineSteal are the machine's idle time and the
	// time its hypervisor took (a VM's steal), in percent of all its
	// CPUs over the window (/proc/stat).
	MachineIdle  float64 `json:"machine_idle_pct"`
	MachineSteal float64 `json:"machine_steal_pct"`
}

// threadTimes is one thread's schedstat: ns on a CPU, ns runnable and
// waiting for one, and the times it was put on a CPU (its third field:
// each wake-up, and each return after a preemption).
type threadTimes struct{ run, wait, slices int64 }

// threadsOf reads every thread's schedstat of a process. A kernel
// without schedstat (CONFIG_SCHED_INFO) gives an error, and the row goes
// without Sched.
func threadsOf(pid int) (map[int]threadTimes, error) {
	dirs, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(dirs) == 0 {
		return nil, fmt.Errorf("no threads of %d: %v", pid, err)
	}
	out := map[int]threadTimes{}
	for _, d := range dirs {
		tid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "schedstat"))
		if os.IsNotExist(err) && len(out) > 0 {
			continue // the thread ended meanwhile
		}
		if err != nil {
			return nil, err
		}
		f := strings.Fields(string(b))
		if len(f) < 3 {
			return nil, fmt.Errorf("%s/schedstat: %q", d, b)
		}
		run, err1 := strconv.ParseInt(f[0], 10, 64)
		wait, err2 := strconv.ParseInt(f[1], 10, 64)
		slices, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("%s/schedstat: %q", d, b)
		}
		out[tid] = threadTimes{run, wait, slices}
	}
	return out, nil
}

// busiest is the thread that ran longest between two readings, and its
// run and wait over them.
func busiest(before, after map[int]threadTimes) threadTimes {
	var best threadTimes
	for tid, a := range after {
		b, ok := before[tid]
		if !ok {
			continue
		}
		if d := (threadTimes{a.run - b.run, a.wait - b.wait, a.slices - b.slices}); d.run > best.run {
			best = d
		}
	}
	return best
}

// slicesBetween is how many times the threads of a process were put on a
// CPU between two readings (threads that began meanwhile from zero):
// the process's wake-ups, preemptions included.
func slicesBetween(before, after map[int]threadTimes) int64 {
	var n int64
	for tid, a := range after {
		n += a.slices - before[tid].slices
	}
	return n
}

// machineTimes is /proc/stat's first line: all CPUs' time (user to steal;
// guest time is within user), idle and steal, in clock ticks.
type machineTimes struct{ total, idle, steal uint64 }

func readMachineTimes() (machineTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return machineTimes{}, fmt.Errorf("/proc/stat: first line %q", line)
	}
	var m machineTimes
	for i := 1; i <= 8; i++ { // user nice system idle iowait irq softirq steal
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return machineTimes{}, fmt.Errorf("/proc/stat: %q", line)
		}
		m.total += v
		switch i {
		case 4:
			m.idle = v
		case 8:
			m.steal = v
		}
	}
	return m, nil
}

// schedOf is a window's Sched from the readings at either end, or nil if
// any reading is missing.
func schedOf(before, after *snap, winNs int64) *Sched {
	if before.threadsP == nil || after.threadsP == nil || !before.machineOK || !after.machineOK || winNs <= 0 {
		return nil
	}
	pct := func(ns int64) float64 { return 100 * float64(ns) / float64(winNs) }
	s := &Sched{}
	p := busiest(before.threadsP, after.threadsP)
	s.VCPURunPrimary, s.VCPUWaitPrimary = pct(p.run), pct(p.wait)
	if before.threadsS != nil && after.threadsS != nil {
		q := busiest(before.threadsS, after.threadsS)
		s.VCPURunSecondary, s.VCPUWaitSecondary = pct(q.run), pct(q.wait)
	}
	if d := after.machine.total - before.machine.total; d > 0 {
		s.MachineIdle = 100 * float64(after.machine.idle-before.machine.idle) / float64(d)
		s.MachineSteal = 100 * float64(after.machine.steal-before.machine.steal) / float64(d)
	}
	return s
}
