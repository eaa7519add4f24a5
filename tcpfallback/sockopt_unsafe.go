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
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, soMeminfo,
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
