package probe

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSteadyHold is the measurement behind the README's breakdown
// of the steady hold: the demo's load (1000 requests a second, open
// loop; FTVM_PROBE_RATE sets another) on a protected pair for 5 s with
// the probe attached, and the transport's round trip measured in the same
// run. It reports the hold's p99 (the probe's and the daemon's), the
// transport's, and their ratio (the target is 1.5 at most), and logs the
// probe's table. FTVM_PROBE_PIN=1 runs each host's daemon on a CPU of its
// own (host a on CPU 0, host b on CPU 1: the deployment, where each host
// has its own CPUs), else they share both CPUs with the client;
// FTVM_PROBE_NICE=N runs both daemons' threads at nice N, and
// FTVM_PROBE_GOMAXPROCS=N starts them with GOMAXPROCS=N.
//
//	go test -run '^$' -bench SteadyHold -benchtime 1x -v ./bench/probe/
func BenchmarkSteadyHold(b *testing.B) {
	rate := 1000.0
	if v := os.Getenv("FTVM_PROBE_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 {
			b.Fatalf("FTVM_PROBE_RATE=%q: want requests per second", v)
		}
		rate = r
	}
	bd := newBed(b, "probes")
	var holdP99, daemonP99, rttP99 float64
	for i := 0; i < b.N; i++ {
		var env map[string]string
		if v := os.Getenv("FTVM_PROBE_GOMAXPROCS"); v != "" {
			env = map[string]string{"GOMAXPROCS": v}
		}
		p := bd.startPair(b, env)
		if os.Getenv("FTVM_PROBE_PIN") == "1" {
			pinProcess(b, p.primary, 0)
			pinProcess(b, p.peer, 1)
		}
		if v := os.Getenv("FTVM_PROBE_NICE"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				b.Fatalf("FTVM_PROBE_NICE=%q: want a nice value", v)
			}
			reniceProcess(b, p.primary, n)
			reniceProcess(b, p.peer, n)
		}
		r := p.probedLoad(b, steadyLoad(rate, 5*time.Second))
		holdP99 += float64(r.probe.Stage(StageHold).ValueAtQuantile(99))
		daemonP99 += float64(r.daemon.ValueAtQuantile(99))
		rttP99 += float64(p.rtt.ValueAtQuantile(99))
		b.Logf("transport round trip (same run): p50 %v p99 %v", ns(p.rtt.ValueAtQuantile(50)), ns(p.rtt.ValueAtQuantile(99)))
		p.c.Close()
	}
	n := float64(b.N)
	b.ReportMetric(holdP99/n/1e3, "hold-p99-µs")
	b.ReportMetric(daemonP99/n/1e3, "daemon-hold-p99-µs")
	b.ReportMetric(rttP99/n/1e3, "rtt-p99-µs")
	b.ReportMetric(holdP99/rttP99, "hold/rtt-p99")
	b.ReportMetric(0, "ns/op")
}

// reniceProcess sets the nice value of every thread of process pid.
func reniceProcess(t testing.TB, pid, nice int) {
	t.Helper()
	tids, err := threadsOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		if err := unix.Setpriority(unix.PRIO_PROCESS, int(tid), nice); err != nil {
			t.Fatal(fmt.Errorf("renicing thread %d of %d to %d: %w", tid, pid, nice, err))
		}
	}
}

// pinProcess sets the CPU affinity of every thread of process pid (its
// threads made later inherit it from the thread that makes them).
func pinProcess(t testing.TB, pid, cpu int) {
	t.Helper()
	tids, err := threadsOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	for _, tid := range tids {
		if err := unix.SchedSetaffinity(int(tid), &set); err != nil {
			t.Fatal(fmt.Errorf("pinning thread %d of %d to CPU %d: %w", tid, pid, cpu, err))
		}
	}
}
