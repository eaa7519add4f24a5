package main

import (
	"os"
	"runtime"
)

// vcpuSpareProcs is how many Ps (Go's processors) the daemon runs with
// beyond Go's default of one a CPU. The vCPU thread enters KVM_RUN through
// a syscall that keeps its P until sysmon takes it back (20 µs to 10 ms
// later), so with one P a CPU a daemon whose vCPU runs has one P fewer
// for its lane readers, its loop and its disk writer than the machine
// has CPUs, and a goroutine the vCPU thread woke (a reader that wanted
// the agent's lock) may wait on its P meanwhile. With a P to spare, ftvm
// probe measured at the demo's load, in three alternating pairs on a
// 2-core machine: the wait for the acknowledgement an output is held for
// p50 0.31–0.34 ms against 0.62–0.69 ms, the hold p99 3.3–11 ms against
// 10–48 ms (go test -bench SteadyHold ./bench/probe/ with
// FTVM_PROBE_GOMAXPROCS=2 for the old setting; README, Where the hold
// goes).
const vcpuSpareProcs = 1

// watchdogSpareProcs: the transport's watchdog threads (one a CPU, two at
// most, for the whole process) each hold a P while they sleep
// (tcpfallback, sleepUntil), so that their heartbeats never wait for one.
const watchdogSpareProcs = 2

// setDaemonProcs raises GOMAXPROCS by vcpuSpareProcs and
// watchdogSpareProcs, unless the environment sets it.
func setDaemonProcs() {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + vcpuSpareProcs + watchdogSpareProcs)
}
