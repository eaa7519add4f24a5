// Package vmm is a small KVM monitor: one VM, one vCPU, paravirtual
// devices reached by MMIO doorbells, an exit hook through which record/replay
// (and lockstep) sees every nondeterministic input and every output, and
// full and incremental snapshots.
//
// # Running a guest
//
//	m, err := vmm.New(vmm.Config{MemSizeBytes: 64 << 20, Console: os.Stdout})
//	if err != nil { ... }            // no /dev/kvm, bad size: the error says
//	defer m.Close()
//	if err := m.LoadFile("vmm/guests/build/kvstore"); err != nil { ... }
//	st, err := m.Run(0)              // until the guest exits or fails
//
// Resume(n) runs until n device exits have been handled and pauses there,
// at a clean point; Pause stops a running guest at the next one (a guest
// spinning without exits is kicked out of KVM_RUN by immediate_exit and a
// signal to the vCPU thread; a blocking NIC WAIT is woken). While paused,
// Snapshot, Restore, VCPUState and ReadMemory may be called; SnapshotLive
// may be called while the guest runs. All methods are safe from any
// goroutine: the vCPU lives on one locked OS thread that serves them as
// messages (Machine.loop).
//
// # The machine
//
// The guest is a statically linked x86-64 ELF linked at FTVM_LOAD_BASE.
// The VMM enters it directly in 64-bit long mode at CPL3 with IOPL=0 and
// IF=0 (no port I/O, no interrupts), SSE on, RDI pointing at struct
// ftvm_boot and RSP at the top of memory.
// There is no CPL0 guest code at all: on nested KVM it is emulated and
// thousands of times slower, and the guest needs none. There is no IDT, so
// any exception becomes a triple fault, which stops the VM with an error
// naming the exit index and the registers.
//
// Guest-physical memory, identity-mapped (virtual == physical) with 2 MiB
// pages, one KVM memory slot with dirty logging:
//
//	0x0000_0000 ┌──────────────────────────────┐ ─┐
//	            │ unused (null pointers fault) │  │
//	0x0000_1000 │ GDT: null, kernel code/data, │  │ first 2 MiB page:
//	            │ user data 0x1b, user code    │  │ supervisor-only, so the
//	            │ 0x23, 64-bit TSS 0x28        │  │ CPL3 guest can neither
//	0x0000_2000 │ TSS (I/O map past its limit) │  │ read nor corrupt it
//	0x0000_3000 │ PML4                         │  │
//	0x0000_4000 │ PDPT                         │  │
//	0x0000_5000 │ page directories, 1 per GiB  │  │
//	0x0020_0000 ├──────────────────────────────┤ ─┘ user pages from here
//	            │ struct ftvm_boot (RDI)       │
//	0x0040_0000 ├──────────────────────────────┤ FTVM_LOAD_BASE
//	            │ ELF PT_LOAD segments         │
//	heap_start  ├──────────────────────────────┤ first page after the image
//	            │ free: the guest's heap       │
//	heap_end    ├──────────────────────────────┤ mem_size - 1 MiB
//	            │ stack (grows down)           │
//	mem_size    └──────────────────────────────┘ RSP; nothing is mapped above,
//	                                               but for:
//	0xc000_0000 ┌──────────────────────────────┐ doorbell page (2 MiB, CPL3,
//	            │ doorbell of device p at      │ no memory slot: every access
//	            │ 0xc000_0000 + p (0x500-0x505)│ is an MMIO exit)
//	0xc020_0000 └──────────────────────────────┘
//
// Memory is 8 MiB to 2 GiB in 2 MiB steps: every guest address stays below
// 4 GiB (a request is addressed by one 32-bit store), below the doorbell
// page and below the 3 pages Intel KVM is given for its real-mode TSS at
// 0xfffbd000.
//
// # Devices and exits
//
// The device ABI is vmm/guests/include/ftvm.h (devices.go mirrors it and a test
// compares them): the guest writes the address of a struct ftvm_req with
// one 32-bit store to the device's doorbell (DoorbellBase + its port
// number), and the VMM performs the whole request in that MMIO exit.
// Doorbells rather than OUT: port I/O from CPL3 needs IOPL=3, and PVM, the
// KVM of the machines this project is built on, raises #GP for it anyway,
// while an MMIO exit works on every KVM (and a guest must make the same
// exits on whichever host its replica runs). Each device exit gets the next exit index, the
// same on every replica. Every guest address and length is checked against
// guest memory (without overflow) and the device's limits. A request that
// fails the checks (an unknown op, a buffer outside memory, a length over
// a limit, a doorbell offset with no device) is a guest bug, but it does
// not stop the VM, or the service in it: the request reaches neither the
// hook nor the device, the guest finds an error status in it
// (StatusInval, StatusFault, StatusNoDev) and goes on. Where the request
// struct itself cannot be reached (not a 32-bit store, misaligned, outside
// memory) nothing is written and the store is skipped; a load from a
// doorbell reads all ones. Each is a GuestError: counted in
// Status.GuestErrors, shown to a hook that implements GuestErrorObserver,
// and logged at WARN, one line per guestErrorLogInterval at most. A refused
// request takes no exit index and its answer depends only on guest memory,
// so every replica refuses it alike and no log entry stands for it. A
// triple fault (any exception: there is no IDT) or an unexpected exit
// reason stops the VM with a VMError naming the exit index, the port and
// the registers. The host process never crashes on guest behaviour.
//
// One file per device: console.go, clock.go, entropy.go, nic.go (backends
// in nic_backends.go: a TAP device or UDP datagrams carrying one frame
// each; nicgate.go lends one of them to VM after VM), block.go (a file;
// writes are fdatasync'ed), halt.go. Each saves and restores its own
// versioned state.
//
// A host's TAP stays open for the host's whole life, in a NICGate, and
// each of its VMs gets a loan of it. A secondary's VM must not see the
// network before the host goes live (its inputs come from the log, and
// the frames arriving are requests the primary has already answered), but
// the TAP cannot wait until go-live to open: its carrier comes up when it
// opens, and the kernel's link-watch can hold back the bridge port's
// carrier event by up to a second, losing the gratuitous ARP and the
// client's requests meanwhile. So the gate reads and drops every frame
// until Open (go-live), and as a secondary replaces its VM at every
// checkpoint it restores, a loan's Close ends that VM's read (with a read
// deadline) without closing the TAP.
//
// # Record and replay
//
// ExitHook (exit.go) is called for every device exit on the vCPU thread.
// Live, the device produces an input and the hook records it; in replay
// the hook supplies it and the device is never touched. An output goes to
// the hook, which delivers it now, holds it (Exit.Hold returns an Output
// to Release or Drop later; held block writes stay visible to reads) or
// drops it. Machine.Deliver performs an output no exit stands for (one a
// checkpoint carried to another host).
//
// Two formats carry exits, one per user of the hook, and they stay two on
// purpose:
//
//   - The input log, "FTVMRLOG" (record.go documents it byte by byte), is
//     vmm's own record/replay of one VM on one host, with no lockstep in
//     it: Recorder writes every exit to a versioned, CRC'd file, and
//     Replayer feeds it to another VM and stops it with a DivergenceError
//     at the first exit that differs (index, device, op, argument, or an
//     output's SHA-256). Each record is self-contained (exit index, device,
//     op, request, status and value; an input's bytes, an output's digest
//     only), since nothing else frames it. It is what the replay tests
//     (replay_kvm_test.go, record_test.go) run on, and a library API to
//     replay a guest's run offline (no ftvm command writes one today).
//   - The lockstep log's payloads (agent/codec.go) are the bytes the
//     agent's hook hands the lockstep Node for an exit, which lockstep puts
//     into its wire.Entry and wire.Output records and frames, numbers,
//     checksums, ships and acknowledges itself; the payload adds only what
//     lockstep does not know (the status, value, arg and len of an input;
//     the arg and full bytes of an output, which the primary holds and
//     lockstep digests).
//
// One format serving both would make vmm depend on lockstep's framing
// (vmm never imports lockstep) or make every lockstep entry repeat the
// index, kind, length and CRC its record already has.
//
// # Snapshots
//
// Snapshot (checkpoint.go; format in snapshot.go, byte by byte) saves
// registers (regs, sregs, XSAVE or FPU, XCRs, vCPU events, the MSRs listed
// in snapshotMSRs), device state and memory: every non-zero page for a Full
// snapshot, the pages dirtied since the previous snapshot for an
// Incremental one (KVM_GET_DIRTY_LOG for the guest's writes, OR'd with a
// bitmap of the VMM's own writes, which KVM does not see). The plain
// get-and-clear dirty log is used; KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 would
// let the write-protection be re-armed in chunks, which pays off only for
// VMs far larger than these. Increments form a chain (chain id, seq) and
// apply only in order on a VM at their base.
//
// SnapshotLive takes a snapshot without stopping the guest, so that a new
// replica can be brought up with a short pause (pre-copy): a live Full,
// then live Incrementals while they shrink, each shipped and restored
// while the guest runs, then Pause and a paused Incremental, which holds
// only what was written since the last live copy began, and the
// registers and devices. A live copy runs on a thread of its own under
// SCHED_IDLE (AtLowPriority), not the vCPU thread, so that it takes only
// the CPU the guest leaves idle (at nice 19 its CPU was busy to the
// kernel, and a woken vCPU thread waited behind other threads on the
// other CPU; past lowPriorityIdleMax it goes on at nice 19, as CPUs that
// others keep busy leave SCHED_IDLE almost nothing) (at the same priority it took half of a shared
// CPU, and the guest's silence grew with the VM's size), with the garbage
// collector off meanwhile (a collection stops the world, which waited
// for the starved copy thread, and the vCPU thread with it); it may tear pages and disk chunks the guest writes
// meanwhile; that is correct because the dirty log, the VMM's own dirty
// bits and the disk's written chunks are fetched and cleared at its
// start, so whatever it tore is in the next snapshot. The VMM's writes
// to guest memory and the copy hold the memory's lock (the copy one batch
// of pages at a time, and the lock prefers the writer, so a device exit
// waits for one batch at most); the disk is read one batch of chunks per
// hold of the device's lock; snapshots and restores of a VM take one
// lock for their whole length, which orders them in the chain. A live
// snapshot carries no vCPU or device state (a flag in its header says it
// is live), and a VM whose last restored snapshot is live refuses to
// resume or be snapshotted (ErrLiveRestored) until a paused one is
// applied on top.
//
// A resynchronisation need not ship the whole VM (resync.go). Two VMs
// that took or restored one snapshot (their base) are equal there, and
// what either changed since is in its dirty bits, so a secondary that
// diverged sends its DirtySinceBase (a peek: KVM's log, fetch-and-clear
// only, is kept in an accumulator the next snapshot ORs in), encoded as a
// DirtySet (dirtyset.go documents the format); the primary, if at the same
// base, takes SnapshotCovering: an increment holding its own changes and
// the secondary's. The secondary applies it on its VM's Successor: a new
// KVM VM and vCPU over the same memory mapping, devices and disk (a vCPU
// that failed mid-exit would complete the abandoned access on its next
// KVM_RUN), with the dirty bits carried over. A Restore of an increment
// refuses (ErrNotCovered, nothing changed) when the VM changed since its
// base a page or chunk the increment lacks; SnapshotCovering refuses
// (ErrBaseMismatch, nothing consumed) a VM at another base. Either way the
// caller falls back to a Full snapshot. StateHash hashes a VM's state, so
// that tests can show two VMs equal after a resync.
//
// The pause of such a resync is kept to what differs: the increment's
// pages are copied straight into its encoding, in a buffer a VM that
// takes snapshots keeps faulted in ahead (a spare, made again at idle
// priority after each use: fresh memory costs a page fault per 4 KiB
// here), and checksummed as they are copied; the successor reuses its
// predecessor's CPUID, the predecessor's VM is torn down beside the
// successor, and a restore that writes nothing to the disk does not
// fdatasync it.
//
// A snapshot carries the disk too, because each replica has its own copy
// of it (separate storage): in 4 KiB chunks, every non-zero chunk of the
// disk file for a Full snapshot (holes in a sparse image are skipped with
// SEEK_DATA), the chunks that block writes reached since the previous
// snapshot for an Incremental one (a bitmap set as each write is
// performed, under the device's lock, since a release may run on any
// goroutine while the VM is paused). What is saved is the file, the
// durable content: a held block write is not in it, though the guest
// already reads it back; like every held output the caller carries it
// beside the snapshot and releases it on whichever host goes on
// (Output.Release here, Machine.Deliver on the restored VM). A restore
// writes the chunks into the restoring VM's own disk file and fdatasyncs
// it; a Full restore first punches the whole disk to zeros, so that
// nothing stale on the target survives, and the disks must be of one
// size. Config.DiskSharedStorage turns all this off for a disk both VMs
// share.
//
// KVM may complete an exit's instruction only on the next KVM_RUN, and that
// pending state is not visible to userspace, so a pause always re-enters
// KVM_RUN with immediate_exit set first: the I/O completes and KVM returns
// without running guest code. That is the clean point snapshots are taken
// at.
//
// # Files
//
// The raw KVM API is a package of its own, vmm/kvm (like Firecracker's
// vstate and kvm-ioctls): the kernel ABI structs, ioctl numbers and
// wrappers (the only unsafe code), kvm_run offsets, exit reasons, the
// dirty-bitmap decoding and the long-mode constants and descriptor
// encodings; it knows nothing of ftvm's devices. Regs, Sregs, Segment and
// DTable here are its types. In vmm:
//
//   - machine.go: Config, Machine, New, open and release of the KVM fds;
//     vcpu.go: the vCPU thread, its commands and every exit reason;
//     layout_amd64.go: the memory map above, the GDT, TSS, page tables and
//     initial registers; loader.go: the ELF loader; memory.go: guest
//     memory and the VMM's own dirty bits.
//   - exit.go: ExitHook, Exit, Result, Output; dispatch.go: a doorbell to
//     a device request, its checks and the hook; devices.go: the device
//     ABI mirrored from ftvm.h; one file per device (console.go, clock.go,
//     entropy.go, nic.go, nic_backends.go, nicgate.go, block.go, halt.go),
//     devstate.go their versioned state; fence.go: the shared disk's fence.
//   - record.go: Recorder, Replayer and the FTVMRLOG format.
//   - checkpoint.go: Snapshot, SnapshotLive, Restore, the vCPU state and
//     snapshotMSRs; snapshot.go: the snapshot format.
//   - resync.go: DirtySinceBase, SnapshotCovering, Successor, StateHash;
//     dirtyset.go: DirtySet and its format.
package vmm
