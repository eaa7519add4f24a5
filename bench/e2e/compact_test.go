package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestE2EKillPrimaryCompacting is TestE2EKillPrimary on a disk so small
// (64 KiB, keys=16: a log of 116 records) that kvstore compacts its
// write-ahead log several times a second: primaries die in the middle of
// compactions, and no acknowledged write may be lost (the history stays
// linearizable) nor the log fill up.
func TestE2EKillPrimaryCompacting(t *testing.T) {
	c := newTestCluster(t, "compact", ClusterConfig{Cmdline: "keys=16", Flags: []string{"--disk-size", "64KiB"}})
	runScenario(t, c, RunConfig{Fault: KillPrimary, Rounds: 5, Settle: 300 * time.Millisecond, Load: testLoad(t)})
	consoles, err := filepath.Glob(filepath.Join(c.cfg.WorkDir, "console-*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	compactions := 0
	for _, p := range consoles {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "ERR walfull") {
			t.Fatalf("%s: the log filled up", p)
		}
		compactions += strings.Count(string(b), "kvstore: wal: compacted")
	}
	if compactions < 5 {
		t.Fatalf("the consoles tell of %d compactions over 5 kills; want at least 5 (is the disk small enough?)", compactions)
	}
	t.Logf("%d compactions released on the consoles", compactions)
}
