/*
 * abibug — a guest that breaks the device ABI in the way its command line
 * names, for the test that proves the hosted shim refuses what the VMM
 * refuses. Not built by the Makefile.
 */
#include "rt.h"

static char big[FTVM_CONSOLE_MAX + 1];
static char sector[FTVM_BLOCK_SECTOR];

static int is(const char *want)
{
	const char *v;
	int n = rt_cmdline_get("case", &v);

	return n >= 0 && rt_memeq_str(v, (size_t)n, want);
}

int guest_main(const struct ftvm_boot *boot)
{
	struct ftvm_req r = { 0 };

	(void)boot;
	if (is("console_len")) {
		r = (struct ftvm_req){ .op = FTVM_CONSOLE_WRITE, .addr = (uint64_t)(uintptr_t)big, .len = sizeof(big) };
		ftvm_call(FTVM_PORT_CONSOLE, &r);
	} else if (is("block_len")) {
		r = (struct ftvm_req){ .op = FTVM_BLOCK_WRITE, .addr = (uint64_t)(uintptr_t)sector, .len = 100 };
		ftvm_call(FTVM_PORT_BLOCK, &r);
	} else if (is("flags")) {
		r = (struct ftvm_req){ .op = FTVM_CLOCK_NOW, .flags = 1 };
		ftvm_call(FTVM_PORT_CLOCK, &r);
	} else if (is("port")) {
		r = (struct ftvm_req){ .op = 1 };
		ftvm_call(0x5ff, &r);
	} else if (is("op")) {
		r = (struct ftvm_req){ .op = 9 };
		ftvm_call(FTVM_PORT_NIC, &r);
	} else if (is("block_range")) {
		/* Not a bug: a status the guest must handle. */
		int32_t st = rt_block_read(1u << 30, sector, sizeof(sector));
		rt_printf("status %d\n", st);
		return st == FTVM_E_RANGE ? 0 : 1;
	}
	rt_printf("no ABI violation\n");
	return 0;
}
