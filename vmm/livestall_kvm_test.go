package vmm

import (
	"os"
	"os/exec"
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

// busyProcessBeside starts a process that spins on the CPU the test's
// threads are pinned to until the test ends: the other work of a loaded
// host, outside the Go runtime (a goroutine would hold one of its Ps).
func busyProcessBeside(t *testing.T) {
	t.Helper()
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatalf("sched_getaffinity: %v", err)
	}
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a busy process: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := unix.SchedSetaffinity(cmd.Process.Pid, &cpus); err != nil {
		t.Fatalf("pinning the busy process: %v", err)
	}
}

// churned keeps the last garbage of guestShareDuringLiveCopy's churn.
var churned []byte

// guestShareDuringLiveCopy runs a guest that makes clock exits without
// end, with 2 MiB of its memory and a 2 MiB disk to copy, all on one CPU,
// and takes live full snapshots of it; with busyBeside, a busy process
// shares that CPU (busyProcessBeside), and with churn a goroutine makes
// 1 MiB of garbage a millisecond. It returns, over a few rounds, the
// guest's exit rate while the snapshots copied over its rate in windows
// as long just before each (1: the copies took nothing from it), and the
// longest pause between two exits during the copies and the windows.
func guestShareDuringLiveCopy(t *testing.T, busyBeside, churn bool) (share float64, copyGap, idleGap time.Duration) {
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
	if busyBeside {
		busyProcessBeside(t)
	}
	if churn {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
					churned = make([]byte, 1<<20)
				}
			}
		}()
	}
	if err := a.Resume(0); err != nil {
		t.Fatal(err)
	}
	defer a.Pause()
	window := 30 * time.Millisecond
	var idleTotal, copyTotal time.Duration
	var idleTotalExits, copyTotalExits uint64
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
		idleTotal, copyTotal = idleTotal+idle, copyTotal+busy
		idleTotalExits, copyTotalExits = idleTotalExits+idleExits, copyTotalExits+copyExits
		window = max(busy, 30*time.Millisecond)
	}
	// Over all the copies: a copy of a few milliseconds says little.
	share = (float64(copyTotalExits) / copyTotal.Seconds()) / (float64(idleTotalExits) / idleTotal.Seconds())
	return share, copyGap, idleGap
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
	share, copyGap, idleGap := guestShareDuringLiveCopy(t, false, false)
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
	share, copyGap, idleGap := guestShareDuringLiveCopy(t, false, false)
	t.Logf("planted: guest's share %.2f (longest gap %v, %v without a copy)", share, copyGap, idleGap)
	if share >= minGuestShare {
		t.Fatalf("with the copy planted at the guest's priority the guest kept %.2f of its exit rate; the check (at least %.2f) cannot tell", share, minGuestShare)
	}
}

// TestKVMLiveCopyBesideABusyProcessLeavesTheGuestItsCPU checks the same
// with another process busy on the guest's CPU and a goroutine making
// garbage, as on a loaded host running an agent: the copy thread,
// starved at its low priority, held a Go P, and each garbage collection
// (started by the copy's allocations or anyone's) stopped the world, the
// vCPU thread with it, until that thread got the CPU again (the guest
// silent for most of the copy).
func TestKVMLiveCopyBesideABusyProcessLeavesTheGuestItsCPU(t *testing.T) {
	share, copyGap, idleGap := guestShareDuringLiveCopy(t, true, true)
	t.Logf("guest's share of its exit rate during the copies: %.2f (longest gap %v, %v without a copy)", share, copyGap, idleGap)
	if share < minGuestShare {
		t.Fatalf("while a live snapshot copied beside a busy process, the guest made exits at %.2f of its rate without one; want at least %.2f: the copy stops the guest", share, minGuestShare)
	}
}

// TestKVMLiveCopyCollectingBesideABusyProcessIsCaught plants a copy that
// leaves the garbage collector on: the check must see the guest stop.
func TestKVMLiveCopyCollectingBesideABusyProcessIsCaught(t *testing.T) {
	lowPriorityKeepsGC = true
	defer func() { lowPriorityKeepsGC = false }()
	share, copyGap, idleGap := guestShareDuringLiveCopy(t, true, true)
	t.Logf("planted: guest's share %.2f (longest gap %v, %v without a copy)", share, copyGap, idleGap)
	if share >= minGuestShare {
		t.Fatalf("with the collector left on during the copy the guest kept %.2f of its exit rate beside a busy process; the check (at least %.2f) cannot tell", share, minGuestShare)
	}
}
