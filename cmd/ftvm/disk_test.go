package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
	"golang.org/x/sys/unix"
)

// The daemon reserves its disk's blocks at start (fallocate) and refuses a
// disk its filesystem cannot back in full, new or existing, rather than
// let the guest's writes fail later; a disk it created and could not
// reserve is not left behind.
func TestOpenDiskRefusesADiskThatCannotBeBacked(t *testing.T) {
	testutil.Require(t, testutil.Root)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)

	tooBig := filepath.Join(dir, "new.img")
	if f, err := openDisk(tooBig, 4<<20); err == nil {
		f.Close()
		t.Fatal("a new 4 MiB disk on a 1 MiB filesystem was accepted")
	} else if !strings.Contains(err.Error(), "no room") || !strings.Contains(err.Error(), "free space") {
		t.Fatalf("error %q does not say the filesystem is too small and what to do", err)
	}
	if _, err := os.Stat(tooBig); !os.IsNotExist(err) {
		t.Fatalf("the refused new disk was left behind (%v)", err)
	}

	sparse := filepath.Join(dir, "sparse.img")
	if err := os.WriteFile(sparse, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(sparse, 4<<20); err != nil {
		t.Fatal(err)
	}
	if f, err := openDisk(sparse, 0); err == nil {
		f.Close()
		t.Fatal("an existing sparse 4 MiB disk on a 1 MiB filesystem was accepted")
	}

	fits := filepath.Join(dir, "fits.img")
	f, err := openDisk(fits, 256<<10)
	if err != nil {
		t.Fatalf("a 256 KiB disk on a 1 MiB filesystem: %v", err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 < 256<<10 {
		t.Fatalf("the new disk has %d bytes allocated, want all of its 256 KiB", st.Blocks*512)
	}
}

// A failing block write shows in ftvm status: the VM is paused and why,
// even while the pair is protected.
func TestStatusShowsAFailingDiskWrite(t *testing.T) {
	r := &statusReport{VMID: "kvstore", Role: "primary", Protected: true,
		DiskError: "block write at sector 88: no space left on device"}
	r.Stats.DiskWriteErrors, r.Stats.DiskFailing = 6, true
	var b strings.Builder
	printStatus(&b, r)
	out := b.String()
	for _, want := range []string{"protected; PAUSED: a block write fails: block write at sector 88: no space left on device", "6 block write attempts failed"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status\n%s\nlacks %q", out, want)
		}
	}
}

// Requests the VMM refused as guest bugs show in ftvm status, and in its
// JSON as stats.GuestErrors.
func TestStatusShowsGuestErrors(t *testing.T) {
	r := &statusReport{VMID: "kvstore", Role: "primary", Protected: true}
	var b strings.Builder
	printStatus(&b, r)
	if strings.Contains(b.String(), "guest bugs") {
		t.Fatalf("status without guest errors mentions them:\n%s", b.String())
	}
	r.Stats.GuestErrors = 3
	b.Reset()
	printStatus(&b, r)
	if !strings.Contains(b.String(), "guest: 3 requests refused as guest bugs") {
		t.Fatalf("status\n%s\nlacks the 3 refused requests", b.String())
	}
	j, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(j), `"GuestErrors":3`) {
		t.Fatalf("JSON %s (%v) lacks stats.GuestErrors", j, err)
	}
}

// Incremental resyncs show in ftvm status: increments taken (primary),
// restored and refused (secondary), and in its JSON.
func TestStatusShowsIncrementalResyncs(t *testing.T) {
	r := &statusReport{VMID: "nondet", Role: "secondary"}
	var b strings.Builder
	printStatus(&b, r)
	if strings.Contains(b.String(), "resyncs:") {
		t.Fatalf("status without incremental resyncs mentions them:\n%s", b.String())
	}
	r.Stats.IncrementalRestores, r.Stats.RestoreFailures = 7, 1
	b.Reset()
	printStatus(&b, r)
	if !strings.Contains(b.String(), "resyncs: 0 increments taken, 7 restored, 1 increments that could not be restored") {
		t.Fatalf("status\n%s\nlacks the incremental resyncs", b.String())
	}
	j, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(j), `"IncrementalRestores":7`) {
		t.Fatalf("JSON %s (%v) lacks stats.IncrementalRestores", j, err)
	}
}
