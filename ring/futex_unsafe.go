//go:build linux

package ring

// This file is unsafe because the futex system call takes the address of the
// 32-bit word the kernel sleeps on, and Go can only pass an address to a raw
// system call as a uintptr made from an unsafe.Pointer. The word lives inside
// a ring allocated on the Go heap, which never moves, so the address stays
// valid for as long as the ring is reachable; every caller holds the ring.

import (
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Values from linux/futex.h. PRIVATE: the word is never shared with another
// process, which lets the kernel skip the shared-mapping lookup.
const (
	futexWaitPrivate = 0 | 128
	futexWakePrivate = 1 | 128
)

// futexWait sleeps while *word == seen. It returns on a wake-up, when *word
// already differs from seen (EAGAIN), or on a signal (EINTR); every caller
// re-checks its condition in a loop, so none of these needs telling apart.
// It goes through syscall.Syscall6, not RawSyscall, so the Go scheduler knows
// the thread is blocked and hands its P to other goroutines meanwhile.
func futexWait(word *atomic.Uint32, seen uint32) {
	syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(word)),
		futexWaitPrivate, uintptr(seen), 0, 0, 0)
}

// futexWakeAll wakes every thread sleeping on word. There is at most one
// sleeper per word in a single-producer single-consumer ring, but Close can
// race with a normal wake-up, and waking all is never wrong.
func futexWakeAll(word *atomic.Uint32) {
	syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(word)),
		futexWakePrivate, uintptr(1<<31-1), 0, 0, 0)
}
