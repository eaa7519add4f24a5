// Package guests holds the guest programs that ftvm runs inside its VMs and
// the tests that check them; it has no Go API.
//
// The programs are freestanding C (see README.md in this directory), built
// by make into static x86-64 ELF files linked at 0x400000:
//
//	kvstore    a UDP key-value server with a write-ahead log on the block device
//	memstress  dirties memory at a set rate and pattern, prints checksums
//	nondet     prints RDTSC-derived values, so that replay diverges on purpose
//
// They talk to the VMM only through the device ABI of include/ftvm.h. The
// tests build each program a second way, "hosted": the same guest objects
// linked with hosted/shim.c, which performs the device requests as a Linux
// process would (console to stdout, block device to a file, NIC to a
// SOCK_SEQPACKET socket). That lets the guests' protocol code, write-ahead
// log and determinism be tested on machines without KVM. The tests also
// check the real ELF files the way the VMM's loader will read them, and run
// them under ptrace, performing each doorbell store the way the VMM will.
package guests
