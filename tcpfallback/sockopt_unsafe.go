package tcpfallback

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SO_MEMINFO (Linux 4.7+) and the indices of its answer
// (include/uapi/linux/sock_diag.h), which x/sys/unix does not name.
const (
	soMeminfo          = 55
	skMeminfoSndbuf    = 3
	skMeminfoWmemQueue = 5
	skMeminfoVars      = 9
)

// The two calls here are on the watchdog's path (its looks and
// heartbeats) and never block, so they are made as raw system calls: an
// ordinary one tells Go's scheduler the thread may block, sysmon may give
// the thread's P to another thread meanwhile, and the watchdog then waits
// for a P to come free before it goes on (see sleepUntil).

// unreadBytes is SIOCINQ: how many bytes wait unread in the socket fd,
// or -1 if the kernel does not say.
func unreadBytes(fd uintptr) int {
	var n int32
	if _, _, e := unix.RawSyscall(unix.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&n))); e != 0 {
		return -1
	}
	return int(n)
}

// sendBufferFree is how many more bytes the kernel takes into the socket's
// send queue before a write would wait: SO_SNDBUF less what is queued
// (sk_wmem_queued, in the units the kernel compares, overhead included).
// A write waits only when the queue has reached the buffer, so a write of
// n bytes with a margin for per-packet overhead below this never waits.
func sendBufferFree(rc syscall.RawConn) (int, error) {
	var mem [skMeminfoVars]uint32
	var serr error
	err := rc.Control(func(fd uintptr) {
		n := uint32(unsafe.Sizeof(mem))
		_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, soMeminfo,
			uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&n)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, err
	}
	return int(mem[skMeminfoSndbuf]) - int(mem[skMeminfoWmemQueue]), nil
}
