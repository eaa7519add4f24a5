// Command kvmprobe proves that a /dev/kvm works well enough for ftvm's VMM.
//
// It checks the API version, reports the capabilities the VMM relies on
// (dirty log ring, manual dirty-log protect, XSAVE, XCRS), runs a real-mode
// guest that writes one byte to port 0x3f8 and halts, and times a loop of
// real-mode port-I/O exits.
//
// Then it runs a long-mode guest the way the VMM starts its guests: at CPL3
// with IOPL=0, on identity-mapped 2 MiB user pages, with the doorbell page
// (2 MiB at 0xc0000000, user-accessible, backed by no memory slot) mapped
// too. The guest reports through doorbells, one 32-bit store
// `movl %eax,(%rdx)` to 0xc0000000 + port, each of which must reach
// kvmprobe as a KVM_EXIT_MMIO of 4 bytes, a write, to that address, with
// the value the guest stored. The checks:
//
//   - after the first exit KVM says CS.DPL=3, 64-bit code, EFER.LMA and
//     IOPL=0, and the CS the guest reads itself has RPL 3;
//   - a user write to the second 2 MiB page lands in host memory, and
//     KVM_GET_DIRTY_LOG marks that page dirty and not an untouched one
//     (incremental snapshots depend on it);
//   - a privileged instruction (hlt) at CPL3 faults, which with no IDT is
//     a triple fault: KVM_EXIT_SHUTDOWN;
//   - an OUT at CPL3 with IOPL=0 also faults (KVM_EXIT_SHUTDOWN) and never
//     reaches userspace as KVM_EXIT_IO;
//   - timings: a loop of CPL3 doorbell exits (each must be the next store
//     of a counter) and a CPL3 compute loop that ends with one doorbell
//     store, in µs/exit and ns/iteration.
//
// Why doorbells and not port I/O: the VMM used to give its guests IOPL=3
// and let them OUT to device ports, but PVM (the paravirtualised KVM,
// kvm_pvm, of the machines this project runs on) does not honour IOPL, so
// an OUT at CPL3 raises #GP there. An MMIO exit works on every KVM, so the
// VMM now uses only doorbells on every host, and kvmprobe checks those.
// Whether an OUT at CPL3 with IOPL=3 reaches userspace on this host is
// reported as information ("kvmprobe: info ...") and never fails the probe.
// So is a guest-read CS selector other than the one set with KVM_SET_SREGS
// (PVM runs CPL3 code on the host's user code segment, 0x33).
//
// It talks to KVM through the VMM's own KVM layer, package vmm/kvm (the
// ABI structs, the ioctl wrappers, the long-mode constants and descriptor
// encodings), so it checks the code the VMM runs, and has no unsafe code of
// its own. What the VMM never does stays here: the real-mode guest, port
// I/O and the IOPL=3 check, and the probe guests with their own memory
// layout and GDT.
//
// It is built statically (CGO_ENABLED=0) so that scripts/kvmbox can run it
// inside its busybox initramfs. It prints one "kvmprobe: ..." line per check
// and exits 0 only if every required check passed.
package main
