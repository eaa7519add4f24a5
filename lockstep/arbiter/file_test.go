package arbiter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestFile(t *testing.T) *File {
	t.Helper()
	f, err := NewFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFileGrantsOnlyNewerEpochs(t *testing.T) {
	f := newTestFile(t)
	ctx := context.Background()
	ok, f1, err := f.Acquire(ctx, "vm-1", 1)
	if err != nil || !ok {
		t.Fatalf("epoch 1: granted=%v err=%v", ok, err)
	}
	if ok, _, _ := f.Acquire(ctx, "vm-1", 1); ok {
		t.Fatal("epoch 1 granted twice")
	}
	ok, f3, _ := f.Acquire(ctx, "vm-1", 3)
	if !ok || f3 <= f1 {
		t.Fatalf("epoch 3: granted=%v fence=%d; want granted with a fence above %d", ok, f3, f1)
	}
	if ok, _, _ := f.Acquire(ctx, "vm-1", 2); ok {
		t.Fatal("epoch 2 granted after epoch 3")
	}
	if ok, _, _ := f.Acquire(ctx, "vm-2", 1); !ok {
		t.Fatal("VMs must be independent")
	}
	// A second arbiter over the same directory (another host) sees it all.
	g, _ := NewFile(f.dir)
	if ep, fence, err := g.Current(ctx, "vm-1"); err != nil || ep != 3 || fence != f3 {
		t.Fatalf("Current: epoch %d fence %d err %v; want 3, %d", ep, fence, err, f3)
	}
	if ok, _, _ := g.Acquire(ctx, "vm-1", 3); ok {
		t.Fatal("another host got epoch 3 again")
	}
}

func TestFileRefusesBadInput(t *testing.T) {
	f := newTestFile(t)
	ctx := context.Background()
	for _, id := range []string{"", "../x", "a/b", ".hidden", "-x", strings.Repeat("a", 65)} {
		if _, _, err := f.Acquire(ctx, id, 1); err == nil || !strings.Contains(err.Error(), "VM id") {
			t.Errorf("VM id %q: err %v; want a refusal naming the VM id", id, err)
		}
	}
	if _, _, err := f.Acquire(ctx, "vm", 0); err == nil {
		t.Error("epoch 0 accepted")
	}
	if _, err := NewFile("/nonexistent/ftvm-arbiter"); err == nil {
		t.Error("a missing directory was accepted")
	}
}

func TestFileRefusesCorruptState(t *testing.T) {
	ctx := context.Background()
	for name, mutate := range map[string]func(b []byte) []byte{
		"flipped epoch": func(b []byte) []byte { b[9] ^= 1; return b },
		"bad magic":     func(b []byte) []byte { b[0] = 'X'; return b },
		"truncated":     func(b []byte) []byte { return b[:20] },
	} {
		t.Run(name, func(t *testing.T) {
			f := newTestFile(t)
			if ok, _, err := f.Acquire(ctx, "vm", 5); !ok || err != nil {
				t.Fatalf("setup: %v %v", ok, err)
			}
			b, err := os.ReadFile(f.Path("vm"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f.Path("vm"), mutate(b), 0o600); err != nil {
				t.Fatal(err)
			}
			ok, _, err := f.Acquire(ctx, "vm", 6)
			if ok || !errors.Is(err, ErrCorruptState) {
				t.Fatalf("granted=%v err=%v; want a refusal wrapping ErrCorruptState", ok, err)
			}
		})
	}
}

// Goroutines with their own File values stand for hosts: the lock is per
// open file description, so they exclude each other even in one process.
func TestFileGrantsEachEpochOnceUnderContention(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	const hosts, epochs = 6, 40
	var mu sync.Mutex
	winners := map[uint64][]uint64{} // epoch -> fences granted for it
	var wg sync.WaitGroup
	for range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, _ := NewFile(dir)
			for e := uint64(1); e <= epochs; e++ {
				ok, fence, err := f.Acquire(ctx, "vm", e)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					winners[e] = append(winners[e], fence)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	var last uint64
	for e := uint64(1); e <= epochs; e++ {
		if n := len(winners[e]); n > 1 {
			t.Fatalf("epoch %d granted %d times (fences %v)", e, n, winners[e])
		}
		if len(winners[e]) == 1 {
			if winners[e][0] <= last {
				t.Fatalf("fence %d for epoch %d does not grow past %d", winners[e][0], e, last)
			}
			last = winners[e][0]
		}
	}
	if len(winners) == 0 {
		t.Fatal("no epoch was granted")
	}
}

// The lock must also hold between processes: a child process asking while
// this one holds the lock waits, and gives up when its context ends.
func TestFileLockExcludesAnotherProcess(t *testing.T) {
	if dir := os.Getenv("FTVM_ARBITER_CHILD_DIR"); dir != "" {
		f, _ := NewFile(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		ok, fence, err := f.Acquire(ctx, "vm", 7)
		fmt.Printf("child granted=%v fence=%d err=%v\n", ok, fence, err)
		os.Exit(0)
	}
	f := newTestFile(t)
	if ok, _, _ := f.Acquire(context.Background(), "vm", 1); !ok {
		t.Fatal("setup grant failed")
	}
	held, err := os.OpenFile(f.Path("vm"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := lockFile(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	child := func() string {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestFileLockExcludesAnotherProcess$")
		cmd.Env = append(os.Environ(), "FTVM_ARBITER_CHILD_DIR="+f.dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := child(); !strings.Contains(out, "granted=false") || !strings.Contains(out, "deadline exceeded") {
		t.Fatalf("while the lock was held the child said %q; want a refusal for its deadline", out)
	}
	held.Close() // releases the lock
	out := child()
	if !strings.Contains(out, "granted=true fence="+strconv.Itoa(2)) {
		t.Fatalf("after the lock was released the child said %q; want epoch 7 granted with fence 2", out)
	}
}

// A host that released its epoch (stopped cleanly) may take the next one
// by itself; another host may not until an operator resets the state, and
// the reset refuses while a daemon of the VM runs (issue 15).
func TestFileReleaseAndReset(t *testing.T) {
	ctx := context.Background()
	a := newTestFile(t)
	a.Holder = "a"
	b, _ := NewFile(a.dir)
	b.Holder = "b"
	if st, _ := a.State(ctx, "vm"); !st.MayTakeNext("a") {
		t.Fatalf("fresh state %+v: anyone may take epoch 1", st)
	}
	ok, fence, err := a.Acquire(ctx, "vm", 1)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	st, _ := a.State(ctx, "vm")
	if st != (State{Epoch: 1, Fence: fence, Holder: "a"}) || st.MayTakeNext("a") || st.MayTakeNext("b") {
		t.Fatalf("state %+v after a's grant: a running primary's epoch is nobody's to take", st)
	}
	if done, err := b.Release(ctx, "vm", 1, fence); done || err != nil {
		t.Fatalf("b released a's epoch: %v %v", done, err)
	}
	if done, err := a.Release(ctx, "vm", 1, fence+1); done || err != nil {
		t.Fatalf("a released with a wrong fence: %v %v", done, err)
	}
	if done, err := a.Release(ctx, "vm", 1, fence); !done || err != nil {
		t.Fatalf("a's clean stop not recorded: %v %v", done, err)
	}
	st, _ = b.State(ctx, "vm")
	if !st.Released || !st.MayTakeNext("a") || st.MayTakeNext("b") {
		t.Fatalf("state %+v after a's clean stop: a, and only a, may take the next epoch", st)
	}
	run, err := a.Running("vm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reset(ctx, "vm"); !errors.Is(err, ErrRunning) {
		t.Fatalf("reset while a daemon runs: %v, want ErrRunning", err)
	}
	if running, err := b.DaemonRunning("vm"); !running || err != nil {
		t.Fatalf("DaemonRunning while one runs: %v %v", running, err)
	}
	run.Close()
	if running, err := b.DaemonRunning("vm"); running || err != nil {
		t.Fatalf("DaemonRunning once it stopped: %v %v", running, err)
	}
	old, err := b.Reset(ctx, "vm")
	if err != nil || old.Holder != "a" {
		t.Fatalf("reset: %+v %v", old, err)
	}
	st, _ = b.State(ctx, "vm")
	if !st.MayTakeNext("b") || st.Epoch != 1 || st.Fence != fence {
		t.Fatalf("state %+v after reset: any host may take the next epoch; epoch and fence stay", st)
	}
	ok, f2, _ := b.Acquire(ctx, "vm", st.Epoch+1)
	if st, _ = a.State(ctx, "vm"); !ok || f2 <= fence || st.Released || st.Holder != "b" {
		t.Fatalf("b's grant after the reset: %v fence %d state %+v", ok, f2, st)
	}
}

// A version 1 state file (32 bytes) is still read: not released, no holder.
func TestFileReadsVersion1State(t *testing.T) {
	f := newTestFile(t)
	var b [32]byte
	copy(b[:], "FTVMARB1")
	b[8], b[16] = 4, 9
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
	if err := os.WriteFile(f.Path("vm"), b[:], 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := f.State(context.Background(), "vm")
	if err != nil || st != (State{Epoch: 4, Fence: 9}) {
		t.Fatalf("version 1 state: %+v %v", st, err)
	}
	if ok, fence, err := f.Acquire(context.Background(), "vm", 5); !ok || fence != 10 || err != nil {
		t.Fatalf("grant over a version 1 file: %v %d %v", ok, fence, err)
	}
}

// Two daemons of one VM cannot run under one host name; under two they can.
func TestFileRunningOncePerHost(t *testing.T) {
	a := newTestFile(t)
	a.Holder = "a"
	first, err := a.Running("vm")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := NewFile(a.dir)
	again.Holder = "a"
	if _, err := again.Running("vm"); err == nil || !strings.Contains(err.Error(), `runs as host "a"`) {
		t.Fatalf("a second daemon as host a: %v; want a refusal naming the host", err)
	}
	b, _ := NewFile(a.dir)
	b.Holder = "b"
	second, err := b.Running("vm")
	if err != nil {
		t.Fatalf("host b beside host a: %v", err)
	}
	second.Close()
	first.Close()
	if r, err := again.Running("vm"); err != nil {
		t.Fatalf("host a once the first stopped: %v", err)
	} else {
		r.Close()
	}
	bad, _ := NewFile(a.dir)
	bad.Holder = "../x"
	if _, err := bad.Running("vm"); err == nil || !strings.Contains(err.Error(), "not usable as a file name") {
		t.Fatalf("host name ../x: %v", err)
	}
}
