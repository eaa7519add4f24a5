/*
 * ftvm.h — the contract between an ftvm guest program and the ftvm VMM.
 *
 * This header is the single source of truth for the paravirtual device ABI;
 * vmm/devices.go mirrors these numbers and its tests check that they agree.
 *
 * How a guest talks to a device
 * -----------------------------
 * The guest runs in x86-64 long mode at CPL3, identity-mapped (guest virtual
 * address == guest physical address). To use a device it fills a struct
 * ftvm_req in its own memory and writes the struct's address with ONE
 * 32-bit store to the device's doorbell, FTVM_DOORBELL_BASE plus the
 * device's number (its "port" below):
 *
 *     ftvm_doorbell(FTVM_PORT_NIC, (uint32_t)(uintptr_t)&req);
 *
 * The doorbell page is mapped in the guest's page tables but backs no
 * memory, so the store is an MMIO exit. It is a store and not an OUT
 * because port I/O from CPL3 needs IOPL=3, which some hypervisors (PVM,
 * the KVM these machines run) do not honour: there OUT raises #GP. An
 * MMIO exit works on every KVM, and using only it keeps the exits of a
 * guest the same on every host. The store is `movl %eax, (%rdx)`, always
 * that encoding, so that tools that trap it (the ptrace harness of the
 * guest tests) can decode it.
 *
 * The VMM performs the whole request during that single VM exit and, before
 * the guest resumes, writes req.status and req.result and (for inputs) the
 * bytes into the guest buffer. One request is one exit, which is what makes
 * the guest exit-synchronous: the n-th exit is the same point of execution
 * on the primary and on the secondary.
 *
 * Every request is either an INPUT (the VMM writes something the guest did
 * not determine: a clock value, random bytes, a received frame, a block read)
 * or an OUTPUT (the guest shows something to the outside world: console text,
 * a transmitted frame, a block write, its exit code). The table below says
 * which. Under ftvm the primary records inputs and holds outputs; the
 * secondary replays inputs from the log and compares outputs.
 *
 * A request the VMM finds wrong is a guest bug, but it does not stop the VM
 * (the service in it goes on): the request never reaches the device, the VMM
 * writes an error status into it (and result = 0) and the guest resumes
 * after the store, as after any request. The VMM counts and logs it. Such a
 * request takes no exit index and nothing is logged for it: every replica
 * refuses it the same way.
 *   FTVM_E_INVAL  an unknown op, flags not 0, a length over the device's
 *                 limit, a block length that is not a positive multiple of
 *                 512, a TX frame shorter than an Ethernet header
 *   FTVM_E_FAULT  the request's buffer (addr, len) is not inside guest memory
 *   FTVM_E_NODEV  the doorbell offset has no device (0xc0000000 + port for
 *                 a port outside 0x500-0x505)
 * Where the request struct itself cannot be reached (the store is not 32
 * bits wide, the address is not 8-byte aligned or the struct is not inside
 * guest memory), nothing can be written: the store is skipped and counted,
 * and the guest goes on with req.status as it left it (so set it to a value
 * no device returns, e.g. 1, before the call if it must tell). A load from the
 * doorbell page reads all ones. An exception of the guest's own (a wild
 * pointer outside its memory, a bad instruction) still stops the VM: there
 * is no IDT and nothing to return to.
 *
 * Device table (doorbell = FTVM_DOORBELL_BASE + port, so 0xc0000500 for the console)
 * ------------
 *  port   device   op                    dir     fields used            result / effect
 *  0x500  console  1 WRITE               output  addr,len (len<=4096)   text written to the console
 *  0x501  clock    1 NOW                 input   -                      result = monotonic ns since VM start
 *  0x502  entropy  1 READ                input   addr,len (len<=4096)   len random bytes at addr
 *  0x503  nic      1 TX                  output  addr,len (len<=1514)   frame sent
 *  0x503  nic      2 RX                  input   addr,len (buffer cap)  result = frame length copied, 0 if none pending
 *  0x503  nic      3 WAIT                input   arg = timeout ns       result = 1 if a frame is pending, 0 on timeout
 *  0x503  nic      4 MAC                 input   addr (6 bytes)         the NIC's MAC address at addr
 *  0x504  block    1 READ                input   addr,len,arg=sector    len bytes (multiple of 512, <=64 KiB) read
 *  0x504  block    2 WRITE               output  addr,len,arg=sector    len bytes written (durable when the request returns)
 *  0x504  block    3 SIZE                input   -                      result = device size in 512-byte sectors
 *  0x505  halt     1 EXIT                output  arg = exit code        the VM stops; the VMM reports the code
 *
 * status: 0 on success; FTVM_E_RANGE for a block request past the end of the
 * device; FTVM_E_IO when the backend failed (the guest may retry);
 * FTVM_E_INVAL, FTVM_E_FAULT, FTVM_E_NODEV for a request the VMM refused
 * (above).
 *
 * Entry
 * -----
 * The VMM loads the statically linked ELF (linked at FTVM_LOAD_BASE, see
 * guest.ld), sets RIP to its entry point, RSP to the top of guest memory
 * (16-byte aligned) and RDI to the guest-physical address of a struct
 * ftvm_boot. RFLAGS has IOPL=0 (port I/O faults) and IF=0: there are no
 * interrupts; a guest waits for the network with the NIC WAIT request. SSE
 * is enabled.
 */
#ifndef FTVM_H
#define FTVM_H

#include <stdint.h>

#define FTVM_PORT_CONSOLE 0x500
#define FTVM_PORT_CLOCK   0x501
#define FTVM_PORT_ENTROPY 0x502
#define FTVM_PORT_NIC     0x503
#define FTVM_PORT_BLOCK   0x504
#define FTVM_PORT_HALT    0x505

#define FTVM_CONSOLE_WRITE 1
#define FTVM_CLOCK_NOW     1
#define FTVM_ENTROPY_READ  1
#define FTVM_NIC_TX        1
#define FTVM_NIC_RX        2
#define FTVM_NIC_WAIT      3
#define FTVM_NIC_MAC       4
#define FTVM_BLOCK_READ    1
#define FTVM_BLOCK_WRITE   2
#define FTVM_BLOCK_SIZE    3
#define FTVM_HALT_EXIT     1

#define FTVM_CONSOLE_MAX   4096
#define FTVM_ENTROPY_MAX   4096
#define FTVM_NIC_MTU_FRAME 1514
#define FTVM_BLOCK_SECTOR  512
#define FTVM_BLOCK_MAX     65536

#define FTVM_OK       0
#define FTVM_E_RANGE  (-2)
#define FTVM_E_IO     (-5)
#define FTVM_E_FAULT  (-14)
#define FTVM_E_NODEV  (-19)
#define FTVM_E_INVAL  (-22)

#define FTVM_LOAD_BASE 0x400000ULL
/* The doorbell page: 2 MiB at 3 GiB, above any guest memory (at most
 * 2 GiB) and below 4 GiB. */
#define FTVM_DOORBELL_BASE 0xc0000000ULL
#define FTVM_BOOT_MAGIC 0x544f4f424d565446ULL /* "FTVMBOOT" little-endian */

/* 40 bytes, naturally aligned; the guest must place it 8-byte aligned. */
struct ftvm_req {
	uint32_t op;
	int32_t  status;
	uint64_t addr;
	uint32_t len;
	uint32_t flags;   /* must be 0 */
	uint64_t arg;
	uint64_t result;
};

/* Written by the VMM before entry; RDI points at it. */
struct ftvm_boot {
	uint64_t magic;      /* FTVM_BOOT_MAGIC */
	uint64_t mem_size;   /* bytes of guest memory, identity-mapped from 0 */
	uint64_t heap_start; /* first free byte after the loaded image, page aligned */
	uint64_t heap_end;   /* end of the free area (the stack lies above it) */
	char cmdline[256];   /* NUL-terminated "key=value key=value" */
};

/* ftvm_doorbell rings a device: one 32-bit store of val to its doorbell. */
static inline void ftvm_doorbell(uint16_t port, uint32_t val)
{
	volatile uint32_t *bell = (volatile uint32_t *)(uintptr_t)(FTVM_DOORBELL_BASE + port);

	__asm__ volatile("movl %0, (%1)" : : "a"(val), "d"(bell) : "memory");
}

#ifdef FTVM_HOSTED
/*
 * Hosted test builds (vmm/guests/hosted) run the same guest code as an
 * ordinary Linux process: instead of trapping to the VMM, a request is handed
 * to the shim, which performs it with the same rules and the same effects on
 * req.status, req.result and the guest buffer before returning.
 */
int32_t ftvm_hosted_call(uint16_t port, struct ftvm_req *r);

static inline int32_t ftvm_call(uint16_t port, struct ftvm_req *r)
{
	ftvm_hosted_call(port, r);
	return r->status;
}
#else
/* ftvm_call issues one request and returns its status. */
static inline int32_t ftvm_call(uint16_t port, struct ftvm_req *r)
{
	ftvm_doorbell(port, (uint32_t)(uintptr_t)r);
	return r->status;
}
#endif

#endif
