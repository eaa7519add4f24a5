package tcpfallback

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sleepUntil sleeps in the kernel until deadline (monotonic) by a raw
// nanosleep(2): the goroutine keeps its P (Go's scheduler is not told of
// the system call), so that it runs on at once when the kernel wakes its
// thread instead of queueing for a P. The price is one P held while it
// sleeps; a garbage collection that stops the world waits for the sleep to
// end (at most one watchdog tick). Signals (Go's preemption) end the
// sleep early; it goes on with what is left.
func sleepUntil(deadline time.Time) {
	d := time.Until(deadline)
	if d <= 0 {
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	for {
		var rem unix.Timespec
		_, _, e := unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), uintptr(unsafe.Pointer(&rem)), 0)
		if e != unix.EINTR {
			return
		}
		ts = rem
	}
}
