package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
)

// cpuProfileEnv names the directory a daemon writes a CPU profile of its
// whole life into, as cpu-ROLE-PID.pprof (go tool pprof reads it), when
// set: to find where a protected VM's time goes (README, What protection
// costs). Unset, nothing is profiled. The profile is complete only if the
// daemon ends by returning (SIGTERM, SIGINT), not by SIGKILL.
const cpuProfileEnv = "FTVM_CPUPROFILE"

// startCPUProfile starts the profile cpuProfileEnv asks for, and returns
// what stops it and writes it out (a no-op when unset or when it could not
// start, which it says on stderr: a profile is never a reason not to run).
func startCPUProfile(e *env, role string) func() {
	dir := os.Getenv(cpuProfileEnv)
	if dir == "" {
		return func() {}
	}
	path := filepath.Join(dir, fmt.Sprintf("cpu-%s-%d.pprof", role, os.Getpid()))
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm %s: %s: %v (running without a CPU profile)\n", role, cpuProfileEnv, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		fmt.Fprintf(e.stderr, "ftvm %s: %s: %v (running without a CPU profile)\n", role, cpuProfileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(e.stderr, "ftvm %s: %s: %v\n", role, cpuProfileEnv, err)
		}
	}
}
