//go:build linux

package shm

// This file is unsafe for three reasons, each the only way to do its job
// from Go: the region is memory mapped from a file (mmap returns an
// address, and the slice over it is built with unsafe.Slice); retiring a
// region swaps the pages under that address for private ones in one step
// (mremap with MREMAP_FIXED takes addresses); and the signal queue's
// cursors and the futex word are words inside that mapping, which the
// other process reads and writes too, so they are read and written as
// sync/atomic values at their addresses, and the futex calls take them.
// The mappings are never moved or unmapped while a Link or Endpoint that
// reads them is open: Close, which unmaps, is the caller's last call.

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFile maps length bytes of fd shared, read and write.
func mapFile(fd int, length int) ([]byte, error) {
	p, err := unix.MmapPtr(fd, 0, nil, uintptr(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), length), nil
}

// unmap unmaps a mapping made by mapFile.
func unmap(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, _, e := unix.Syscall(unix.SYS_MUNMAP, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// detach replaces the pages under b (a shared file mapping) by private
// anonymous pages holding the same bytes, in one step for every reader of
// b: from then on, stores another process makes into the file no longer
// reach b. The copy is made first into a fresh mapping, then moved over
// b's address with mremap(MREMAP_FIXED), which unmaps the file's pages
// there atomically.
func detach(b []byte) error {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(len(b)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	copy(unsafe.Slice((*byte)(p), len(b)), b)
	_, err = unix.MremapPtr(p, uintptr(len(b)), unsafe.Pointer(&b[0]), uintptr(len(b)), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED)
	if err != nil {
		unix.Syscall(unix.SYS_MUNMAP, uintptr(p), uintptr(len(b)), 0)
	}
	return err
}

func word32(b []byte, off int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b[off]))
}

func word64(b []byte, off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&b[off]))
}

// FUTEX_WAIT and FUTEX_WAKE without FUTEX_PRIVATE_FLAG: the word is in a
// mapping two processes share, so the kernel must key it by the file's
// page, not by this process's address space.
const (
	futexWaitShared = 0
	futexWakeShared = 1
)

// futexWait sleeps while *w == seen, at most timeout. It returns early on a
// wake-up, a changed word or a signal; callers re-check.
func futexWait(w *atomic.Uint32, seen uint32, timeout time.Duration) {
	ts := unix.NsecToTimespec(int64(timeout))
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWaitShared, uintptr(seen), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexWake wakes the sleepers on w.
func futexWake(w *atomic.Uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWakeShared, uintptr(1<<31-1), 0, 0, 0)
}
