/*
 * dev.c — one wrapper per device request of ftvm.h.
 *
 * Each wrapper fills the one request struct and issues it; nothing here
 * batches or caches, so the exits a guest makes are exactly the calls it
 * makes.
 *
 * The request lives in .bss, not on the stack: the doorbell store carries
 * only 32 bits of its address, and the stack sits at the top of guest
 * memory, which may lie above 4 GiB; the image is linked at 4 MiB. One static struct is enough
 * because nothing runs concurrently with the guest: no interrupts, one vCPU.
 */
#include "rt.h"

static struct ftvm_req req;

static int32_t call(uint16_t port, uint32_t op, const void *addr, size_t len, uint64_t arg, uint64_t *result)
{
	req = (struct ftvm_req){
		.op = op,
		.addr = (uint64_t)(uintptr_t)addr,
		.len = (uint32_t)len,
		.arg = arg,
	};
	int32_t st = ftvm_call(port, &req);

	if (result)
		*result = req.result;
	return st;
}

void rt_console_write(const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		size_t n = len < FTVM_CONSOLE_MAX ? len : FTVM_CONSOLE_MAX;
		call(FTVM_PORT_CONSOLE, FTVM_CONSOLE_WRITE, p, n, 0, 0);
		p += n;
		len -= n;
	}
}

uint64_t rt_clock_now_ns(void)
{
	uint64_t ns = 0;

	call(FTVM_PORT_CLOCK, FTVM_CLOCK_NOW, 0, 0, 0, &ns);
	return ns;
}

void rt_entropy(void *buf, size_t len)
{
	char *p = buf;

	while (len > 0) {
		size_t n = len < FTVM_ENTROPY_MAX ? len : FTVM_ENTROPY_MAX;
		call(FTVM_PORT_ENTROPY, FTVM_ENTROPY_READ, p, n, 0, 0);
		p += n;
		len -= n;
	}
}

int32_t rt_nic_tx(const void *frame, size_t len)
{
	return call(FTVM_PORT_NIC, FTVM_NIC_TX, frame, len, 0, 0);
}

size_t rt_nic_rx(void *buf, size_t cap)
{
	uint64_t n = 0;

	if (call(FTVM_PORT_NIC, FTVM_NIC_RX, buf, cap, 0, &n) != FTVM_OK)
		return 0;
	return n <= cap ? (size_t)n : cap;
}

int rt_nic_wait(uint64_t timeout_ns)
{
	uint64_t pending = 0;

	if (call(FTVM_PORT_NIC, FTVM_NIC_WAIT, 0, 0, timeout_ns, &pending) != FTVM_OK)
		return 0;
	return pending != 0;
}

void rt_nic_mac(uint8_t mac[6])
{
	call(FTVM_PORT_NIC, FTVM_NIC_MAC, mac, 6, 0, 0);
}

uint64_t rt_block_sectors(void)
{
	uint64_t n = 0;

	if (call(FTVM_PORT_BLOCK, FTVM_BLOCK_SIZE, 0, 0, 0, &n) != FTVM_OK)
		return 0;
	return n;
}

int32_t rt_block_read(uint64_t sector, void *buf, size_t len)
{
	int32_t st;
	int tries = 0;

	do
		st = call(FTVM_PORT_BLOCK, FTVM_BLOCK_READ, buf, len, sector, 0);
	while (st == FTVM_E_IO && tries++ < RT_BLOCK_IO_RETRIES_MAX);
	return st;
}

int32_t rt_block_write(uint64_t sector, const void *buf, size_t len)
{
	int32_t st;
	int tries = 0;

	do
		st = call(FTVM_PORT_BLOCK, FTVM_BLOCK_WRITE, buf, len, sector, 0);
	while (st == FTVM_E_IO && tries++ < RT_BLOCK_IO_RETRIES_MAX);
	return st;
}

void rt_halt(uint64_t code)
{
	call(FTVM_PORT_HALT, FTVM_HALT_EXIT, 0, 0, code, 0);
	/* The VMM never resumes a halted guest; if one did, stay put. */
	for (;;)
		__asm__ volatile("pause");
}
