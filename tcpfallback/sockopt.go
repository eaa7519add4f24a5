package tcpfallback

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Socket buffer sizes. The kernel doubles what is asked and, without
// CAP_NET_ADMIN, caps it at net.core.{w,r}mem_max; as root the *FORCE
// options lift the cap. Setting a size turns off the kernel's autotuning for
// that socket, which is what we want: a bounded, predictable queue.
const (
	// DefaultControlSocketBufferBytes: the control lane carries log entries
	// in bursts. At 2 M entries/s of 80 wire bytes, 1 MiB absorbs ~6 ms of
	// receiver stall (a GC pause, a preempted reader) without pushing back
	// on the vCPU; larger would only hide a stuck peer for longer.
	DefaultControlSocketBufferBytes = 1 << 20
	// DefaultBulkSocketBufferBytes: the bulk lane streams 1 MiB checkpoint
	// chunks. 4 MiB keeps a 10 Gbit/s link with 2 ms round trip
	// (2.5 MB bandwidth-delay product) full with room for one more chunk.
	DefaultBulkSocketBufferBytes = 4 << 20
)

// busyPollSocketMicros is SO_BUSY_POLL when Config.BusyPoll is set: how long
// the kernel polls the device queue in a blocking read before sleeping. It
// helps on NICs with NAPI busy polling; on loopback it does nothing and the
// user-space spin in laneConn.read does the work.
const busyPollSocketMicros = 50

// tuneSocket applies the lane's socket options to a TCP socket before
// connect (dialer) or right after accept (listener).
func tuneSocket(rc syscall.RawConn, bufBytes int, busyPoll bool) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		s := int(fd)
		// Go sets TCP_NODELAY on every TCP socket already; set it again
		// so that the property does not depend on a runtime default.
		if e := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); e != nil {
			serr = fmt.Errorf("TCP_NODELAY: %w", e)
			return
		}
		if bufBytes > 0 {
			if e := setBuf(s, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, bufBytes); e != nil {
				serr = fmt.Errorf("SO_SNDBUF %d: %w", bufBytes, e)
				return
			}
			if e := setBuf(s, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, bufBytes); e != nil {
				serr = fmt.Errorf("SO_RCVBUF %d: %w", bufBytes, e)
				return
			}
		}
		if busyPoll {
			// Best effort: raising it above net.core.busy_read needs
			// CAP_NET_ADMIN, and the user-space spin works without it.
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_BUSY_POLL, busyPollSocketMicros)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func setBuf(fd, force, plain, n int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, n); err == nil {
		return nil
	} else if !errors.Is(err, unix.EPERM) {
		return err
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, n)
}

// socketBuffers reads back the sizes the kernel granted (already doubled).
func socketBuffers(rc syscall.RawConn) (snd, rcv int, err error) {
	var e1, e2 error
	err = rc.Control(func(fd uintptr) {
		snd, e1 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		rcv, e2 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	if err == nil {
		err = errors.Join(e1, e2)
	}
	return snd, rcv, err
}

// socketRTT is the kernel's smoothed round trip of a connected TCP
// socket, 0 if it cannot be read.
func socketRTT(rc syscall.RawConn) time.Duration {
	var rtt time.Duration
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			rtt = time.Duration(info.Rtt) * time.Microsecond
		}
	})
	return rtt
}
