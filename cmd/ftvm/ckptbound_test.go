package main

import (
	"flag"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// TestCheckpointBoundFitsTheVM: the largest VM the flags allow (2 GiB of
// memory, a disk of its own, pre-copy) gets a checkpoint bound that holds
// a whole chain of its snapshots, and the node accepts it; the fixed
// 256 MiB default made every join of such a VM fail.
func TestCheckpointBoundFitsTheVM(t *testing.T) {
	dir := t.TempDir()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	finish := daemonFlags(fs, wire.RolePrimary)
	if err := fs.Parse([]string{"--vm-id", "big", "--mem", "2GiB", "--disk", dir + "/disk", "--disk-size", "1GiB",
		"--precopy-rounds", "2", "--arbiter-dir", dir, "--psk-file", "x"}); err != nil {
		t.Fatal(err)
	}
	c, err := finish()
	if err != nil {
		t.Fatal(err)
	}
	bound := checkpointBound(c)
	if want := 3 * (c.memBytes + c.diskBytes); uint64(bound) < want {
		t.Fatalf("checkpoint bound %d for --mem 2GiB --disk-size 1GiB --precopy-rounds 2, want at least %d", bound, want)
	}
	if _, err := lockstep.NewNode(lockstep.Config{VMID: "big", Role: wire.RolePrimary, Mode: lockstep.AckOnReceipt, MaxCheckpointBytes: bound}); err != nil {
		t.Fatalf("node refuses the bound: %v", err)
	}
	c.sharedStorage = true
	if shared := checkpointBound(c); shared >= bound {
		t.Fatalf("with shared storage the bound %d still counts the disk (%d)", shared, bound)
	}
}
