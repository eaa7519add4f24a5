/*
 * nondet — a guest that replay cannot reproduce, on purpose.
 *
 * It reads the time-stamp counter with RDTSC, which executes inside the CPU
 * without a VM exit, so the VMM neither sees nor records it. The printed
 * values therefore differ between the primary and a replaying secondary, and
 * the first console output after a read is where ftvm must detect the
 * divergence and resynchronise. The clock device value printed beside it IS
 * recorded and replays identically.
 *
 * diverge= says where the replica leaves the primary's path:
 *   output  (default) the printed line carries the TSC;
 *   input   before each line the guest asks the entropy device for a
 *           number of bytes taken from the TSC, so the replica's request
 *           differs from the logged one (its length), then prints the line;
 *   none    no TSC at all: only the clock, which replays exactly; for
 *           watching the guest's clock across failovers.
 * interval_us= makes the guest read the clock until that long has passed
 * between two lines (every read an exit, logged), so a run lasts.
 */
#include "rt.h"

#define PROG "nondet"
#define COUNT_DEFAULT 4u
#define COUNT_MAX     100000000u
#define INTERVAL_US_MAX 1000000u
/* Work between two reads, so that their difference depends on timing. */
#define SPIN_ITERS 10000u
/* diverge=input asks for 1..ENTROPY_SPREAD bytes. */
#define ENTROPY_SPREAD 16u

enum diverge { DIVERGE_OUTPUT, DIVERGE_INPUT, DIVERGE_NONE };

static int parse_diverge(enum diverge *d)
{
	const char *v;
	int n = rt_cmdline_get("diverge", &v);

	*d = DIVERGE_OUTPUT;
	if (n < 0 || rt_memeq_str(v, (size_t)n, "output"))
		return 0;
	if (rt_memeq_str(v, (size_t)n, "input")) {
		*d = DIVERGE_INPUT;
		return 0;
	}
	if (rt_memeq_str(v, (size_t)n, "none")) {
		*d = DIVERGE_NONE;
		return 0;
	}
	rt_printf(PROG ": diverge=%.*s is not output, input or none\n", n, v);
	return -1;
}

int guest_main(const struct ftvm_boot *boot)
{
	static const char *const known[] = { "count", "diverge", "interval_us", 0 };
	uint64_t count, interval_us;
	enum diverge diverge;

	(void)boot;
	if (rt_cmdline_check(PROG, known) != 0 ||
	    rt_cmdline_u64(PROG, "count", COUNT_DEFAULT, 1, COUNT_MAX, &count) != 0 ||
	    rt_cmdline_u64(PROG, "interval_us", 0, 0, INTERVAL_US_MAX, &interval_us) != 0 ||
	    parse_diverge(&diverge) != 0)
		return RT_EXIT_USAGE;

	uint64_t last = rt_clock_now_ns();
	for (uint64_t i = 1; i <= count; i++) {
		uint64_t clock = rt_clock_now_ns();
		while (clock - last < interval_us * 1000u)
			clock = rt_clock_now_ns();
		last = clock;
		if (diverge == DIVERGE_NONE) {
			rt_printf(PROG ": %lu clock_ns=%lu\n", i, clock);
			continue;
		}
		uint64_t t0 = rt_rdtsc();
		for (volatile uint32_t spin = 0; spin < SPIN_ITERS; spin++)
			;
		uint64_t t1 = rt_rdtsc();
		if (diverge == DIVERGE_INPUT) {
			uint8_t junk[ENTROPY_SPREAD];
			rt_entropy(junk, 1 + (t1 ^ (t1 >> 7)) % ENTROPY_SPREAD);
		}
		/* Both the raw counter and a value derived from it: the low
		 * digits change even where a TSC is coarse. */
		rt_printf(PROG ": %lu tsc=%lu delta=%lu mix=%lu clock_ns=%lu\n",
		          i, t1, t1 - t0, (t1 ^ (t1 >> 7)) % 1000003, clock);
	}
	rt_printf(PROG ": done count=%lu\n", count);
	return RT_EXIT_OK;
}
