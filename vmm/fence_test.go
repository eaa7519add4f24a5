package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Two hosts' handles on one fence record: once the new primary raised the
// fence, the old one's write is refused without being made, and a
// corrupt record is refused rather than read as fence 0.
func TestDiskFenceRefusesAStaleWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.fence")
	old, err := OpenDiskFence(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	wrote := 0
	write := func() error { wrote++; return nil }
	if err := old.Write(1, write); err != nil || wrote != 1 {
		t.Fatalf("first primary's write: %v (wrote %d)", err, wrote)
	}
	if cur, _ := old.Current(); cur != 1 {
		t.Fatalf("record holds %d after a write with fence 1", cur)
	}
	newer, err := OpenDiskFence(path)
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	if err := newer.Raise(2); err != nil {
		t.Fatal(err)
	}
	if err := old.Write(1, write); !errors.Is(err, ErrFenced) || wrote != 1 {
		t.Fatalf("stale primary's write after the raise: %v (wrote %d); want ErrFenced and no write", err, wrote)
	}
	if err := old.Raise(1); !errors.Is(err, ErrFenced) {
		t.Fatalf("lowering the fence: %v, want ErrFenced", err)
	}
	if err := newer.Write(2, write); err != nil || wrote != 2 {
		t.Fatalf("new primary's write: %v", err)
	}
	if err := os.WriteFile(path, []byte("garbage that is no fence record"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := newer.Write(2, write); err == nil || errors.Is(err, ErrFenced) || wrote != 2 {
		t.Fatalf("write against a corrupt record: %v (wrote %d); want a refusal that says so", err, wrote)
	}
}
