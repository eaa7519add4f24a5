/*
 * rt.h — the guest runtime: what every ftvm guest program links with.
 *
 * A guest defines guest_main(); the runtime does everything around it:
 * crt0.S (freestanding) or the hosted shim calls rt_start(), which checks the
 * boot struct, calls guest_main() and issues HALT EXIT with its return value.
 * The entry point is called guest_main rather than main so that the same
 * object files link into a hosted test binary whose libc owns main().
 *
 * Every device wrapper is exactly one request, so one call is one VM exit:
 * guests can count their exits, which is what replay lines up on.
 */
#ifndef FTVM_RT_H
#define FTVM_RT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "ftvm.h"

/* Exit codes shared by the guests. */
#define RT_EXIT_OK     0
#define RT_EXIT_FAILED 1 /* a device failed in a way the guest cannot fix */
#define RT_EXIT_USAGE  2 /* the command line was wrong; the console says how */
#define RT_EXIT_BOOT   3 /* the boot struct is not an ftvm boot struct */

/* Retries of a block request that reported FTVM_E_IO before giving up. */
#define RT_BLOCK_IO_RETRIES_MAX 3

/* Largest formatted console line; longer output is cut and marked "...". */
#define RT_PRINT_LINE_BYTES_MAX FTVM_CONSOLE_MAX

/* Provided by each guest program. */
int guest_main(const struct ftvm_boot *boot);

/* Called by crt0 (or the hosted shim) with the boot struct from RDI. */
__attribute__((noreturn)) void rt_start(const struct ftvm_boot *boot);

/* ---- string.c: what the compiler may call, plus a few helpers ---- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t rt_strnlen(const char *s, size_t max);
int rt_streq(const char *a, const char *b);
/* rt_memeq_str reports whether the n bytes at p spell the string s. */
int rt_memeq_str(const void *p, size_t n, const char *s);
/*
 * rt_parse_u64 parses all n bytes at s as a decimal number; it returns 0 and
 * stores the value, or -1 when a byte is not a digit, n is 0 or the value
 * does not fit in 64 bits.
 */
int rt_parse_u64(const char *s, size_t n, uint64_t *out);
/* rt_parse_i64: like rt_parse_u64 with an optional leading '-'. */
int rt_parse_i64(const char *s, size_t n, int64_t *out);

/* ---- print.c: formatted console output ---- */
/*
 * rt_printf formats into a line buffer and writes it with ONE console
 * request, so one call is one exit. Supports %d %i %u %x %X %c %s %p %%,
 * length modifiers l ll z, flags '0' and '-', a width, and for %s a
 * precision (%.*s). The return value is the number of bytes written.
 */
__attribute__((format(printf, 1, 2))) int rt_printf(const char *fmt, ...);
int rt_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) int rt_snprintf(char *buf, size_t cap, const char *fmt, ...);

/* ---- cmdline.c: key=value options from the boot struct ---- */
void rt_cmdline_init(const char *cmdline);
/*
 * rt_cmdline_check returns 0 when every key on the command line is in
 * known (a NULL-terminated list), else prints which key is unknown and
 * which are known, and returns -1.
 */
int rt_cmdline_check(const char *prog, const char *const *known);
/* rt_cmdline_get finds key; it returns the value length (value not
 * NUL-terminated) and stores a pointer to it, or -1 if key is absent. */
int rt_cmdline_get(const char *key, const char **val);
/*
 * rt_cmdline_u64 stores key's numeric value in *out (or def when absent) and
 * returns 0; when the value is not a number in [min, max] it prints an error
 * naming the key and the accepted range and returns -1.
 */
int rt_cmdline_u64(const char *prog, const char *key, uint64_t def, uint64_t min, uint64_t max, uint64_t *out);

/* ---- dev.c: one function per device request ---- */
void rt_console_write(const void *buf, size_t len);
uint64_t rt_clock_now_ns(void);
void rt_entropy(void *buf, size_t len);
int32_t rt_nic_tx(const void *frame, size_t len);
/* rt_nic_rx returns the length of the frame copied into buf, 0 if none. */
size_t rt_nic_rx(void *buf, size_t cap);
/* rt_nic_wait returns 1 when a frame is pending, 0 after timeout_ns. */
int rt_nic_wait(uint64_t timeout_ns);
void rt_nic_mac(uint8_t mac[6]);
uint64_t rt_block_sectors(void);
/* Block transfers: whole sectors, len <= FTVM_BLOCK_MAX; they return the
 * device status, retrying FTVM_E_IO up to RT_BLOCK_IO_RETRIES_MAX times. */
int32_t rt_block_read(uint64_t sector, void *buf, size_t len);
int32_t rt_block_write(uint64_t sector, const void *buf, size_t len);
__attribute__((noreturn)) void rt_halt(uint64_t code);

/* rdtsc is not an ftvm device: it is NOT recorded, so replay sees a
 * different value. Only the nondet guest uses it, on purpose. */
static inline uint64_t rt_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif
