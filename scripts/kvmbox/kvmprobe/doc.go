// Command kvmprobe proves that a /dev/kvm works well enough for ftvm's VMM.
//
// It checks the API version, reports the capabilities the VMM relies on
// (dirty log ring, manual dirty-log protect, XSAVE, XCRS), runs a real-mode
// guest that writes one byte to port 0x3f8 and halts, times a loop of
// port-I/O exits, and runs a long-mode guest at CPL3 with IOPL=3 on
// identity-mapped 2 MiB user pages — the way the VMM starts its guests —
// and checks that KVM_GET_DIRTY_LOG reports the page that guest wrote.
//
// It is built statically (CGO_ENABLED=0) so that scripts/kvmbox can run it
// inside its busybox initramfs. It prints one "kvmprobe: ..." line per check
// and exits 0 only if every required check passed.
package main
