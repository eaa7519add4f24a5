/*
 * memstress — dirties guest memory at a set rate and pattern, for measuring
 * checkpoints and dirty-page tracking.
 *
 * Each iteration writes `dirty` whole pages of a working set of `pages`
 * pages, chosen in sequence, with a stride, or at random from a seeded
 * generator (never from the entropy device, so a replay picks the same
 * pages). Before a page is overwritten two of its words are folded into a
 * running checksum, so the checksum depends on what memory held and not only
 * on what the program computed: a checkpoint restored with a wrong page
 * shows up as a different checksum line. Each iteration ends with one
 * console write, which gives the VMM one exit per iteration to checkpoint at.
 */
#include "rt.h"

#define PROG "memstress"
#define PAGE_BYTES 4096u
#define PAGE_WORDS (PAGE_BYTES / 8)

#define PAGES_DEFAULT  256u
#define ITERS_DEFAULT  100u
#define ITERS_MAX      1000000000u
#define DIRTY_DEFAULT  64u
#define DIRTY_MAX      (1u << 24)
#define STRIDE_DEFAULT 7u
#define SEED_DEFAULT   1u

enum pattern { PAT_SEQ, PAT_STRIDE, PAT_RANDOM };

static const char *const pattern_names[] = { "seq", "stride", "random" };

/* mix is the splitmix64 finaliser: a cheap, well-spread 64-bit hash. */
static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* xorshift64* for pattern=random; a zero state would stick at zero. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static int parse_pattern(enum pattern *out)
{
	const char *v;
	int n = rt_cmdline_get("pattern", &v);

	if (n < 0) {
		*out = PAT_SEQ;
		return 0;
	}
	for (unsigned i = 0; i < sizeof(pattern_names) / sizeof(pattern_names[0]); i++) {
		if (rt_memeq_str(v, (size_t)n, pattern_names[i])) {
			*out = (enum pattern)i;
			return 0;
		}
	}
	rt_printf(PROG ": pattern=%.*s is not a pattern; give pattern=seq, pattern=stride or pattern=random\n", n, v);
	return -1;
}

int guest_main(const struct ftvm_boot *boot)
{
	static const char *const known[] = { "pages", "iters", "pattern", "seed", "dirty", "stride", 0 };
	uint64_t heap = boot->heap_start, heap_bytes = boot->heap_end > heap ? boot->heap_end - heap : 0;
	uint64_t pages, iters, seed, dirty, stride;
	enum pattern pat;

	if (rt_cmdline_check(PROG, known) != 0 ||
	    rt_cmdline_u64(PROG, "pages", PAGES_DEFAULT, 1, UINT32_MAX, &pages) != 0 ||
	    rt_cmdline_u64(PROG, "iters", ITERS_DEFAULT, 0, ITERS_MAX, &iters) != 0 ||
	    rt_cmdline_u64(PROG, "seed", SEED_DEFAULT, 0, UINT64_MAX, &seed) != 0 ||
	    rt_cmdline_u64(PROG, "dirty", DIRTY_DEFAULT, 1, DIRTY_MAX, &dirty) != 0 ||
	    rt_cmdline_u64(PROG, "stride", STRIDE_DEFAULT, 1, UINT32_MAX, &stride) != 0 ||
	    parse_pattern(&pat) != 0)
		return RT_EXIT_USAGE;
	if (pages * PAGE_BYTES > heap_bytes) {
		rt_printf(PROG ": pages=%lu needs %lu bytes but the heap has %lu (0x%lx-0x%lx); "
		          "lower pages= or give the VM more memory\n",
		          pages, pages * PAGE_BYTES, heap_bytes, heap, boot->heap_end);
		return RT_EXIT_USAGE;
	}
	/* Align up in case a loader hands out an unaligned heap_start. */
	uint64_t *mem = (uint64_t *)(uintptr_t)((heap + PAGE_BYTES - 1) & ~(uint64_t)(PAGE_BYTES - 1));
	if ((uint64_t)(uintptr_t)mem + pages * PAGE_BYTES > boot->heap_end) {
		rt_printf(PROG ": heap_start 0x%lx is not page aligned and too small after aligning\n", heap);
		return RT_EXIT_USAGE;
	}

	rt_printf(PROG ": pages=%lu iters=%lu pattern=%s seed=%lu dirty=%lu stride=%lu\n",
	          pages, iters, pattern_names[pat], seed, dirty, stride);

	/* Start from known contents: the checksum must not depend on what a
	 * loader left in the heap. */
	memset(mem, 0, pages * PAGE_BYTES);
	rng_state = mix(seed) | 1;

	uint64_t sum = mix(seed ^ pages), cursor = 0;
	for (uint64_t it = 1; it <= iters; it++) {
		for (uint64_t k = 0; k < dirty; k++) {
			uint64_t p;
			switch (pat) {
			case PAT_SEQ:
				p = cursor++ % pages;
				break;
			case PAT_STRIDE:
				p = cursor % pages;
				cursor = (cursor + stride) % pages;
				break;
			default:
				p = rng_next() % pages;
				break;
			}
			uint64_t *pg = mem + p * PAGE_WORDS;
			sum = mix(sum ^ pg[0] ^ (pg[PAGE_WORDS / 2] << 1) ^ p);
			uint64_t x = mix(seed ^ (it << 32) ^ p);
			for (uint64_t w = 0; w < PAGE_WORDS; w++)
				pg[w] = x + w * 0x9e3779b97f4a7c15ULL;
		}
		rt_printf("iter %lu sum %016lx\n", it, sum);
	}

	/* The final checksum reads back the whole working set. */
	uint64_t final = sum;
	for (uint64_t i = 0; i < pages * PAGE_WORDS; i++)
		final = (final ^ mem[i]) * 0x100000001b3ULL;
	final = mix(final);
	rt_printf(PROG ": done pages=%lu iters=%lu pattern=%s seed=%lu dirty=%lu checksum=%016lx\n",
	          pages, iters, pattern_names[pat], seed, dirty, final);
	return RT_EXIT_OK;
}
