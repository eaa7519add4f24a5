package vmm

import (
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// gapHook counts exits and records the longest time between two (or
// since it was reset).
type gapHook struct {
	mu      sync.Mutex
	last    time.Time
	longest time.Duration
	exits   uint64
}

func (h *gapHook) OnExit(e *Exit) (Result, error) {
	now := time.Now()
	h.mu.Lock()
	h.longest = max(h.longest, now.Sub(h.last))
	h.last, h.exits = now, h.exits+1
	h.mu.Unlock()
	return LiveHook{}.OnExit(e)
}

func (h *gapHook) reset() {
	h.mu.Lock()
	h.last, h.longest, h.exits = time.Now(), 0, 0
	h.mu.Unlock()
}

func (h *gapHook) read() (longest time.Duration, exits uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return max(h.longest, time.Since(h.last)), h.exits
}

// onOneCPU pins every thread of the test binary, and the threads they
// create, to one CPU until the test ends: the vCPU thread and a live copy
// then compete for that CPU every time, as they do on a loaded host, and
// not only when the machine happens to be busy.
func onOneCPU(t *testing.T) {
	t.Helper()
	var was unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		t.Fatalf("sched_getaffinity: %v", err)
	}
	cpu := -1
	for i := 0; i < 1024 && cpu < 0; i++ {
		if was.IsSet(i) {
			cpu = i
		}
	}
	var one unix.CPUSet
	one.Set(cpu)
	setAll := func(set *unix.CPUSet) {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			unix.SchedSetaffinity(tid, set) // a thread that just ended is no harm
		}
	}
	setAll(&one)
	t.Cleanup(func() { setAll(&was) })
}

// guestShareDuringLiveCopy runs a guest that makes clock exits without
// end, with 2 MiB of its memory and a 2 MiB disk to copy, all on one CPU,
// and takes live full snapshots of it. It returns, as the median over a
// few rounds, the guest's exit rate while a snapshot copies over its rate
// in a window as long just before (1: the copy took nothing from it), and
// the longest pause between two exits during the copies and the windows.
func guestShareDuringLiveCopy(t *testing.T) (share float64, copyGap, idleGap time.Duration) {
	requireKVM(t)
	const mem, filled, disk = 16 << 20, 2 << 20, 2 << 20
	h := &gapHook{}
	a := newTestVM(t, Config{MemSizeBytes: mem, Disk: diskFile(t, "src", disk, tiledGarbage(1)), Hook: h})
	mustLoad(t, a, exitLoopProgram(1<<31, PortClock, OpClockNow, 0, 0, 0))
	junk := make([]byte, filled)
	tiledGarbage(3)(junk)
	if err := a.mem.Write(8<<20, junk); err != nil {
		t.Fatal(err)
	}
	onOneCPU(t)
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	defer a.Pause()
	window := 30 * time.Millisecond
	var shares []float64
	for i := 0; i < 3; i++ {
		h.reset()
		t0 := time.Now()
		time.Sleep(window)
		idle := time.Since(t0)
		gap, idleExits := h.read()
		idleGap = max(idleGap, gap)

		h.reset()
		t0 = time.Now()
		if _, err := a.SnapshotLive(Full); err != nil {
			t.Fatal(err)
		}
		busy := time.Since(t0)
		gap, copyExits := h.read()
		copyGap = max(copyGap, gap)
		if idleExits == 0 {
			t.Fatalf("the guest made no exit in %v without a copy", idle)
		}
		s := (float64(copyExits) / busy.Seconds()) / (float64(idleExits) / idle.Seconds())
		t.Logf("copy %v: %d exits, longest gap %v; %v before it: %d exits, share %.2f", busy.Round(time.Microsecond), copyExits, gap, idle.Round(time.Microsecond), idleExits, s)
		shares = append(shares, s)
		window = max(busy, 30*time.Millisecond)
	}
	slices.Sort(shares)
	return shares[len(shares)/2], copyGap, idleGap
}

// minGuestShare is the least share of its exit rate the guest must keep
// while a live snapshot copies beside it on its CPU. A copy at the vCPU
// thread's priority takes about half.
const minGuestShare = 0.75

// TestKVMLiveCopyLeavesTheGuestItsCPU checks that a live snapshot takes
// from a running guest only the CPU it leaves idle: the client of a VM
// went silent for as long as each pre-copy of a re-protection lasted,
// which grows with the VM's memory and disk.
func TestKVMLiveCopyLeavesTheGuestItsCPU(t *testing.T) {
	share, copyGap, idleGap := guestShareDuringLiveCopy(t)
	t.Logf("guest's share of its exit rate during the copies: %.2f (longest gap %v, %v without a copy)", share, copyGap, idleGap)
	if share < minGuestShare {
		t.Fatalf("while a live snapshot copied, the guest made exits at %.2f of its rate without one; want at least %.2f: the copy takes the vCPU thread's CPU", share, minGuestShare)
	}
}

// TestKVMLiveCopyAtGuestPriorityIsCaught plants a copy at the vCPU
// thread's priority: the check must see the guest lose its share.
func TestKVMLiveCopyAtGuestPriorityIsCaught(t *testing.T) {
	liveCopyAtGuestPriority = true
	defer func() { liveCopyAtGuestPriority = false }()
	share, copyGap, idleGap := guestShareDuringLiveCopy(t)
	t.Logf("planted: guest's share %.2f (longest gap %v, %v without a copy)", share, copyGap, idleGap)
	if share >= minGuestShare {
		t.Fatalf("with the copy planted at the guest's priority the guest kept %.2f of its exit rate; the check (at least %.2f) cannot tell", share, minGuestShare)
	}
}
