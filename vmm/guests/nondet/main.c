/*
 * nondet — a guest that replay cannot reproduce, on purpose.
 *
 * It reads the time-stamp counter with RDTSC, which executes inside the CPU
 * without a VM exit, so the VMM neither sees nor records it. The printed
 * values therefore differ between the primary and a replaying secondary, and
 * the first console output after a read is where ftvm must detect the
 * divergence and resynchronise. The clock device value printed beside it IS
 * recorded and replays identically.
 */
#include "rt.h"

#define PROG "nondet"
#define COUNT_DEFAULT 4u
#define COUNT_MAX     100000u
/* Work between two reads, so that their difference depends on timing. */
#define SPIN_ITERS 10000u

int guest_main(const struct ftvm_boot *boot)
{
	static const char *const known[] = { "count", 0 };
	uint64_t count;

	(void)boot;
	if (rt_cmdline_check(PROG, known) != 0 ||
	    rt_cmdline_u64(PROG, "count", COUNT_DEFAULT, 1, COUNT_MAX, &count) != 0)
		return RT_EXIT_USAGE;

	for (uint64_t i = 1; i <= count; i++) {
		uint64_t t0 = rt_rdtsc();
		for (volatile uint32_t spin = 0; spin < SPIN_ITERS; spin++)
			;
		uint64_t t1 = rt_rdtsc();
		uint64_t clock = rt_clock_now_ns();
		/* Both the raw counter and a value derived from it: the low
		 * digits change even where a TSC is coarse. */
		rt_printf(PROG ": %lu tsc=%lu delta=%lu mix=%lu clock_ns=%lu\n",
		          i, t1, t1 - t0, (t1 ^ (t1 >> 7)) % 1000003, clock);
	}
	rt_printf(PROG ": done count=%lu\n", count);
	return RT_EXIT_OK;
}
