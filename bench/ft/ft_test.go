package ft

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ftvm/ftvm/bench/e2e"
	"github.com/ftvm/ftvm/internal/testutil"
)

// repoRoot is the module's root, from this package's directory.
const repoRoot = "../.."

var (
	buildOnce sync.Once
	ftvmBin   string
	buildErr  error
)

// ftvmBinary builds cmd/ftvm and the guests once per test binary.
func ftvmBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() { ftvmBin, buildErr = e2e.BuildFtvm(repoRoot) })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ftvmBin
}

// TestBenchFTEndToEnd runs `ftvm bench ft` with tiny cells on real daemons
// (kv-sat, memstress and nondet, each unprotected and in both ack modes
// over TCP and over shm) and checks what it wrote: the table's shape, every ratio
// computed from the throughputs of this run (Check), and figures that
// only a real protected pair produces: log bytes, a secondary's CPU, hold
// samples, and resyncs where the guest diverges.
func TestBenchFTEndToEnd(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.Netns, testutil.TUN, testutil.KVM)
	if err := e2e.CheckTools(); err != nil {
		testutil.SkipMissing(t, fmt.Errorf("the test bed's tools are missing: %v", err), testutil.Netns)
	}
	bin := ftvmBinary(t)
	out := t.TempDir()
	guests, _ := filepath.Abs(filepath.Join(repoRoot, "vmm/guests/build"))
	cmd := exec.Command(bin, "bench", "ft", "--warmup", "300ms", "--window", "600ms",
		"--workloads", "kv-sat,memstress,nondet", "--transports", "tcp,shm", "--out", out, "--guests", guests, "--prefix", "ftvmt-benchft",
		// The test is of the table, not of failure detection: beside the
		// rest of make test a 50 ms silence once broke a cell's pair.
		"--daemon-flags", "--heartbeat-timeout 300ms")
	stdout, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ftvm bench ft: %v\n%s", err, stdout)
	}
	t.Logf("ftvm bench ft:\n%s", stdout)
	table, err := os.ReadFile(filepath.Join(out, TableFile))
	if err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(filepath.Join(out, JSONFile))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatalf("%s: %v", JSONFile, err)
	}
	if err := Check(&rep, string(table)); err != nil {
		t.Fatalf("the results do not hold together: %v\n%s", err, table)
	}
	if !strings.Contains(string(stdout), string(table[:strings.Index(string(table), "\n")])) {
		t.Errorf("the table printed is not the one written")
	}
	if len(rep.Rows) != 15 {
		t.Fatalf("%d rows, want 3 workloads × 5 setups", len(rep.Rows))
	}
	for _, r := range rep.Rows {
		name := r.Workload + " " + r.Setup.Name
		if r.CPUPrimary <= 0 {
			t.Errorf("%s: the primary used no CPU (%v%%)", name, r.CPUPrimary)
		}
		// Every guest here keeps its vCPU thread busy: it ran, and a
		// protected pair's secondary's replayed.
		if sc := r.Sched; sc == nil || sc.VCPURunPrimary <= 0 || (r.Setup.Protected && sc.VCPURunSecondary <= 0) {
			t.Errorf("%s: no vCPU thread's run time (sched %+v)", name, r.Sched)
		}
		if !r.Setup.Protected {
			if r.LogBytes != 0 || r.CPUSecondary != 0 {
				t.Errorf("%s: log bytes %d, secondary CPU %v%%: an unprotected primary has neither", name, r.LogBytes, r.CPUSecondary)
			}
			continue
		}
		if r.LogBytes == 0 || r.CPUSecondary <= 0 || r.Hold.Count == 0 {
			t.Errorf("%s: log bytes %d, secondary CPU %v%%, %d held outputs: a protected pair has all three", name, r.LogBytes, r.CPUSecondary, r.Hold.Count)
		}
		if r.Workload == "nondet" && (r.Resyncs == 0 || r.ResyncPause == nil) {
			t.Errorf("%s: %d resyncs (pause %v) from a guest that diverges on every line", name, r.Resyncs, r.ResyncPause)
		}
		if r.Workload != "nondet" && r.Resyncs != 0 {
			t.Errorf("%s: %d resyncs from a deterministic guest", name, r.Resyncs)
		}
		if r.Workload == "kv-sat" && (r.Client == nil || r.Client.Count == 0) {
			t.Errorf("%s: no client latency", name)
		}
	}
	for _, f := range []string{"kv-sat-client-latency.svg", "kv-sat-hold-latency.svg", "memstress-hold-latency.svg", "nondet-hold-latency.svg"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Error(err)
			continue
		}
		if n := strings.Count(string(b), "<polyline"); n < 2 {
			t.Errorf("%s has %d lines, want one per setup with samples", f, n)
		}
	}
}
