package main

import (
	"strings"
	"testing"
)

// TestBenchFTUsage checks what ftvm bench ft refuses before it runs
// anything (the run itself is bench/ft's TestBenchFTEndToEnd).
func TestBenchFTUsage(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"bench", "ft", "--help"}, exitOK, "usage: ftvm bench ft"},
		{[]string{"bench", "ft", "extra"}, exitUsage, "unexpected arguments"},
		{[]string{"bench", "ft", "--workloads", "kv-sat,nope"}, exitUsage, `workload "nope": the workloads are kv-sat, kv-rate, memstress, kv-disk, nondet`},
		{[]string{"bench", "ft", "--transports", "pigeon"}, exitUsage, `transport "pigeon"`},
		{[]string{"bench", "ft", "--transports", ","}, exitUsage, "--transports is empty"},
		{[]string{"bench", "ft", "--window", "-1s"}, exitUsage, "--warmup and --window must be positive"},
		{[]string{"bench", "ft", "--prefix", "no/slash"}, exitUsage, "--prefix"},
	}
	for _, c := range cases {
		code, _, errs := runFtvm(c.args...)
		if code != c.code || !strings.Contains(errs, c.inStderr) {
			t.Errorf("ftvm %q: exit %d, stderr %q; want exit %d with %q", c.args, code, errs, c.code, c.inStderr)
		}
	}
}
