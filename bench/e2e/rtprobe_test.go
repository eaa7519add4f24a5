package e2e

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// startRealtimeProbe runs, until the returned function is called, one
// thread per CPU (at most two) pinned to it at SCHED_FIFO priority 10, the
// watchdogs' own setting, each sleeping 1 ms at a time in nanosleep(2) and
// counting how much later than that it woke. Nothing else runs in it: no
// lock, no socket, nothing of the daemons' Go runtime, so a gap here is
// the machine's (the kernel or the hypervisor not running that CPU's
// real-time thread), and a watchdog's gap or silence that the probe did
// not share is the daemon's own. The report gives each CPU's gaps, its
// longest, and the times of its gaps over 10 ms.
func startRealtimeProbe() func() string {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return func() string { return "no probe: " + err.Error() }
	}
	var cpus []int
	for i := 0; i < 1024 && len(cpus) < 2; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	var stop sync.WaitGroup
	var quit = make(chan struct{})
	res := make([]string, len(cpus))
	for k, cpu := range cpus {
		stop.Add(1)
		go func() {
			defer stop.Done()
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			var one unix.CPUSet
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				res[k] = fmt.Sprintf("cpu %d: not pinned: %v", cpu, err)
				return
			}
			attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 10}
			if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
				res[k] = fmt.Sprintf("cpu %d: not real-time: %v", cpu, err)
				return
			}
			var over1, over5, over10, over20 int
			var worst time.Duration
			var at []string
			prev := time.Now()
			for {
				select {
				case <-quit:
					res[k] = fmt.Sprintf("cpu %d: late >1ms %d times, >5ms %d, >10ms %d, >20ms %d, worst %v%s",
						cpu, over1, over5, over10, over20, worst.Round(100*time.Microsecond), strings.Join(at, ""))
					return
				default:
				}
				ts := unix.NsecToTimespec(int64(time.Millisecond))
				unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
				now := time.Now()
				late := now.Sub(prev) - time.Millisecond
				prev = now
				worst = max(worst, late)
				switch {
				case late > 20*time.Millisecond:
					over20++
					fallthrough
				case late > 10*time.Millisecond:
					over10++
					if len(at) < 10 {
						at = append(at, fmt.Sprintf(" %s+%.1fms", now.Add(-late).Format("15:04:05.000"), float64(late)/1e6))
					}
					fallthrough
				case late > 5*time.Millisecond:
					over5++
					fallthrough
				case late > time.Millisecond:
					over1++
				}
			}
		}()
	}
	return func() string {
		close(quit)
		stop.Wait()
		return strings.Join(res, "; ")
	}
}
