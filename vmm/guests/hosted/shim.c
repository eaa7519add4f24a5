/*
 * shim.c — runs a guest program as a Linux process, for tests on machines
 * without KVM.
 *
 * The guest's object files are the ones of the real build, compiled with
 * -DFTVM_HOSTED so that ftvm_call() lands in ftvm_hosted_call() below instead
 * of ringing a doorbell. This file plays the VMM: it builds the boot struct,
 * performs each request with the rules of ftvm.h, and stops the process on a
 * request the VMM would refuse, so a guest bug fails a hosted test loudly
 * (the VMM answers it with an error status and the VM goes on, see ftvm.h).
 *
 *   usage: GUEST [-mem BYTES] [-block FILE] [-nicfd FD] [-mac MAC]
 *                [-crash-write N [-tear BYTES]] [--] [key=value ...]
 *
 *   console  -> stdout (flushed per request)
 *   clock    -> CLOCK_MONOTONIC since start
 *   entropy  -> getrandom(2)
 *   block    -> FILE (pread/pwrite; fdatasync after each write, since a
 *               WRITE is durable when it returns); no -block: 0 sectors
 *   nic      -> FD, a SOCK_SEQPACKET socket: one message is one frame; no
 *               -nicfd: a NIC without link (TX dropped, nothing received)
 *   halt     -> exit(code & 0xff)
 *
 * -crash-write N plays a power cut at the N-th block WRITE (counting from
 * 1): only its first BYTES bytes (-tear, default 0) reach the file, the
 * shim says on stderr which write it cut ("crash at block write N sector S
 * len L kept K") and exits 122 at once, so tests can restart the guest from
 * the disk as a crash left it.
 *
 * Exit codes of the shim itself are above any guest's: 123 the NIC peer hung
 * up, 124 bad shim arguments, 125 the guest broke the device ABI.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ftvm.h"

#define SHIM_EXIT_CRASHED    122
#define SHIM_EXIT_NIC_CLOSED 123
#define SHIM_EXIT_USAGE      124
#define SHIM_EXIT_GUEST_BUG  125

#define MEM_BYTES_DEFAULT (64u << 20)
#define MEM_BYTES_MIN     (64u << 10)
#define PAGE_BYTES        4096u

__attribute__((noreturn)) void rt_start(const struct ftvm_boot *boot);

static struct {
	int block_fd;
	int nic_fd;
	uint8_t mac[6];
	struct timespec start;
	uint64_t exits;
	uint64_t writes, crash_write, tear;
} shim = { .block_fd = -1, .nic_fd = -1, .mac = { 0x02, 0x00, 0x00, 0x77, 0x00, 0x02 } };

__attribute__((noreturn, format(printf, 3, 4)))
static void guest_bug(uint16_t port, const struct ftvm_req *r, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "hosted: guest broke the device ABI at exit %llu (port 0x%x op %u addr 0x%llx len %u arg 0x%llx): ",
	        (unsigned long long)shim.exits, port, r->op, (unsigned long long)r->addr, r->len,
	        (unsigned long long)r->arg);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(SHIM_EXIT_GUEST_BUG);
}

__attribute__((noreturn)) static void nic_closed(void)
{
	fflush(stdout);
	fprintf(stderr, "hosted: the NIC peer closed its end; stopping\n");
	exit(SHIM_EXIT_NIC_CLOSED);
}

static void *buf(const struct ftvm_req *r)
{
	return (void *)(uintptr_t)r->addr;
}

static int32_t console(uint16_t port, struct ftvm_req *r)
{
	if (r->op != FTVM_CONSOLE_WRITE)
		guest_bug(port, r, "unknown console op");
	if (r->len > FTVM_CONSOLE_MAX)
		guest_bug(port, r, "console write over %u bytes", FTVM_CONSOLE_MAX);
	fwrite(buf(r), 1, r->len, stdout);
	fflush(stdout);
	return FTVM_OK;
}

static int32_t clock_dev(uint16_t port, struct ftvm_req *r)
{
	struct timespec now;

	if (r->op != FTVM_CLOCK_NOW)
		guest_bug(port, r, "unknown clock op");
	clock_gettime(CLOCK_MONOTONIC, &now);
	r->result = (uint64_t)(now.tv_sec - shim.start.tv_sec) * 1000000000u + (uint64_t)now.tv_nsec -
	            (uint64_t)shim.start.tv_nsec;
	return FTVM_OK;
}

static int32_t entropy(uint16_t port, struct ftvm_req *r)
{
	size_t done = 0;

	if (r->op != FTVM_ENTROPY_READ)
		guest_bug(port, r, "unknown entropy op");
	if (r->len > FTVM_ENTROPY_MAX)
		guest_bug(port, r, "entropy read over %u bytes", FTVM_ENTROPY_MAX);
	while (done < r->len) {
		ssize_t n = getrandom((char *)buf(r) + done, r->len - done, 0);
		if (n < 0 && errno != EINTR)
			return FTVM_E_IO;
		if (n > 0)
			done += (size_t)n;
	}
	return FTVM_OK;
}

static int32_t nic(uint16_t port, struct ftvm_req *r)
{
	switch (r->op) {
	case FTVM_NIC_TX:
		if (r->len > FTVM_NIC_MTU_FRAME)
			guest_bug(port, r, "frame over %u bytes", FTVM_NIC_MTU_FRAME);
		if (shim.nic_fd >= 0 && send(shim.nic_fd, buf(r), r->len, MSG_NOSIGNAL) < 0) {
			if (errno == EPIPE || errno == ECONNRESET)
				nic_closed();
			return FTVM_E_IO;
		}
		return FTVM_OK;
	case FTVM_NIC_RX: {
		r->result = 0;
		if (shim.nic_fd < 0)
			return FTVM_OK;
		ssize_t n = recv(shim.nic_fd, buf(r), r->len, MSG_DONTWAIT | MSG_TRUNC);
		if (n == 0)
			nic_closed();
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? FTVM_OK : FTVM_E_IO;
		/* A frame larger than the buffer is cut, as a NIC would. */
		r->result = (uint64_t)n < r->len ? (uint64_t)n : r->len;
		return FTVM_OK;
	}
	case FTVM_NIC_WAIT: {
		struct timespec ts = { (time_t)(r->arg / 1000000000u), (long)(r->arg % 1000000000u) };
		r->result = 0;
		if (shim.nic_fd < 0) {
			nanosleep(&ts, NULL);
			return FTVM_OK;
		}
		struct pollfd p = { .fd = shim.nic_fd, .events = POLLIN };
		int n = ppoll(&p, 1, &ts, NULL);
		if (n > 0 && (p.revents & POLLIN))
			r->result = 1;
		else if (n > 0 && (p.revents & (POLLHUP | POLLERR)))
			nic_closed();
		return FTVM_OK;
	}
	case FTVM_NIC_MAC:
		memcpy(buf(r), shim.mac, 6);
		return FTVM_OK;
	}
	guest_bug(port, r, "unknown nic op");
}

static uint64_t block_sectors(void)
{
	struct stat st;

	if (shim.block_fd < 0 || fstat(shim.block_fd, &st) != 0)
		return 0;
	return (uint64_t)st.st_size / FTVM_BLOCK_SECTOR;
}

static int32_t block(uint16_t port, struct ftvm_req *r)
{
	if (r->op == FTVM_BLOCK_SIZE) {
		r->result = block_sectors();
		return FTVM_OK;
	}
	if (r->op != FTVM_BLOCK_READ && r->op != FTVM_BLOCK_WRITE)
		guest_bug(port, r, "unknown block op");
	if (r->len == 0 || r->len % FTVM_BLOCK_SECTOR != 0 || r->len > FTVM_BLOCK_MAX)
		guest_bug(port, r, "block length must be a multiple of %u bytes up to %u", FTVM_BLOCK_SECTOR,
		          FTVM_BLOCK_MAX);
	if (r->arg + r->len / FTVM_BLOCK_SECTOR > block_sectors())
		return FTVM_E_RANGE;
	off_t off = (off_t)(r->arg * FTVM_BLOCK_SECTOR);
	ssize_t n;
	if (r->op == FTVM_BLOCK_READ) {
		n = pread(shim.block_fd, buf(r), r->len, off);
	} else {
		if (++shim.writes == shim.crash_write) {
			size_t keep = shim.tear < r->len ? (size_t)shim.tear : r->len;
			if (keep && (pwrite(shim.block_fd, buf(r), keep, off) != (ssize_t)keep || fdatasync(shim.block_fd) != 0))
				fprintf(stderr, "hosted: the torn write failed: %s\n", strerror(errno));
			fprintf(stderr, "hosted: crash at block write %llu sector %llu len %u kept %zu\n",
			        (unsigned long long)shim.writes, (unsigned long long)r->arg, r->len, keep);
			_exit(SHIM_EXIT_CRASHED);
		}
		n = pwrite(shim.block_fd, buf(r), r->len, off);
		if (n == (ssize_t)r->len && fdatasync(shim.block_fd) != 0)
			n = -1;
	}
	return n == (ssize_t)r->len ? FTVM_OK : FTVM_E_IO;
}

int32_t ftvm_hosted_call(uint16_t port, struct ftvm_req *r)
{
	shim.exits++;
	if ((uintptr_t)r % 8 != 0)
		guest_bug(port, r, "request struct is not 8-byte aligned");
	if (r->flags != 0)
		guest_bug(port, r, "flags must be 0");
	switch (port) {
	case FTVM_PORT_CONSOLE:
		r->status = console(port, r);
		break;
	case FTVM_PORT_CLOCK:
		r->status = clock_dev(port, r);
		break;
	case FTVM_PORT_ENTROPY:
		r->status = entropy(port, r);
		break;
	case FTVM_PORT_NIC:
		r->status = nic(port, r);
		break;
	case FTVM_PORT_BLOCK:
		r->status = block(port, r);
		break;
	case FTVM_PORT_HALT:
		if (r->op != FTVM_HALT_EXIT)
			guest_bug(port, r, "unknown halt op");
		fflush(stdout);
		exit((int)(r->arg & 0xff));
	default:
		guest_bug(port, r, "no device at this port");
	}
	return r->status;
}

__attribute__((noreturn, format(printf, 1, 2)))
static void usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "hosted: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: GUEST [-mem BYTES] [-block FILE] [-nicfd FD] [-mac aa:bb:cc:dd:ee:ff] "
	        "[-crash-write N [-tear BYTES]] [--] [key=value ...]\n");
	exit(SHIM_EXIT_USAGE);
}

int main(int argc, char **argv)
{
	unsigned long long mem_bytes = MEM_BYTES_DEFAULT;
	int i;

	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		const char *opt = argv[i];
		if (strcmp(opt, "--") == 0) {
			i++;
			break;
		}
		if (i + 1 >= argc)
			usage("%s needs a value", opt);
		const char *val = argv[++i];
		char *end;
		if (strcmp(opt, "-mem") == 0) {
			mem_bytes = strtoull(val, &end, 0);
			if (*end || mem_bytes < MEM_BYTES_MIN || mem_bytes % PAGE_BYTES)
				usage("-mem %s: give a byte count, a multiple of %u and at least %u", val, PAGE_BYTES,
				      MEM_BYTES_MIN);
		} else if (strcmp(opt, "-block") == 0) {
			shim.block_fd = open(val, O_RDWR | O_CLOEXEC);
			if (shim.block_fd < 0)
				usage("-block %s: %s (create the file first; its size is the disk size)", val, strerror(errno));
		} else if (strcmp(opt, "-nicfd") == 0) {
			long fd = strtol(val, &end, 10);
			int type;
			socklen_t len = sizeof(type);
			if (*end || fd < 0 || getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 ||
			    type != SOCK_SEQPACKET)
				usage("-nicfd %s: not an open SOCK_SEQPACKET socket", val);
			shim.nic_fd = (int)fd;
		} else if (strcmp(opt, "-mac") == 0) {
			unsigned m[6];
			char extra;
			if (sscanf(val, "%x:%x:%x:%x:%x:%x%c", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5], &extra) != 6)
				usage("-mac %s: give six hex bytes like 02:00:00:77:00:02", val);
			for (int k = 0; k < 6; k++) {
				if (m[k] > 0xff)
					usage("-mac %s: byte %d is over ff", val, k + 1);
				shim.mac[k] = (uint8_t)m[k];
			}
		} else if (strcmp(opt, "-crash-write") == 0) {
			shim.crash_write = strtoull(val, &end, 10);
			if (*end || shim.crash_write == 0)
				usage("-crash-write %s: give the number of the block write to cut, from 1", val);
		} else if (strcmp(opt, "-tear") == 0) {
			shim.tear = strtoull(val, &end, 10);
			if (*end)
				usage("-tear %s: give the bytes of the cut write that reach the disk", val);
		} else {
			usage("unknown option %s", opt);
		}
	}

	/* Guest memory: the boot struct in the first page, the heap after it,
	 * as a VMM lays them out (the guest's stack is the process's). */
	uint8_t *mem = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		usage("-mem %llu: cannot map that much memory: %s", mem_bytes, strerror(errno));
	struct ftvm_boot *boot = (struct ftvm_boot *)mem;
	boot->magic = FTVM_BOOT_MAGIC;
	boot->mem_size = mem_bytes;
	boot->heap_start = (uint64_t)(uintptr_t)mem + PAGE_BYTES;
	boot->heap_end = (uint64_t)(uintptr_t)mem + mem_bytes;
	size_t used = 0;
	for (; i < argc; i++) {
		size_t n = strlen(argv[i]);
		if (used + n + 1 > sizeof(boot->cmdline))
			usage("the guest command line is over %zu bytes", sizeof(boot->cmdline) - 1);
		if (used)
			boot->cmdline[used++] = ' ';
		memcpy(boot->cmdline + used, argv[i], n);
		used += n;
	}
	boot->cmdline[used] = '\0';

	clock_gettime(CLOCK_MONOTONIC, &shim.start);
	rt_start(boot);
}
