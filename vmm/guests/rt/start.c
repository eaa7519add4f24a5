/*
 * start.c — what runs between the entry point and guest_main.
 */
#include "rt.h"

void rt_start(const struct ftvm_boot *boot)
{
	if (!boot || boot->magic != FTVM_BOOT_MAGIC) {
		rt_printf("guest: RDI does not point at an ftvm boot struct (magic %lx, want %lx); "
		          "the VMM must pass the struct's address in RDI\n",
		          boot ? boot->magic : 0, (uint64_t)FTVM_BOOT_MAGIC);
		rt_halt(RT_EXIT_BOOT);
	}
	rt_cmdline_init(boot->cmdline);
	rt_halt((uint64_t)(unsigned)guest_main(boot));
}
