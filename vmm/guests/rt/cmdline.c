/*
 * cmdline.c — "key=value key=value" options from the boot struct.
 *
 * The command line is at most 255 bytes, so every lookup scans it from the
 * start; there is nothing to index. A word without '=' is a key with an
 * empty value.
 */
#include "rt.h"

#define CMDLINE_BYTES_MAX (sizeof(((struct ftvm_boot *)0)->cmdline))

static char cmdline[CMDLINE_BYTES_MAX];
static size_t cmdline_len;

void rt_cmdline_init(const char *src)
{
	/* Copy it: the boot struct lies in memory the guest does not own. */
	cmdline_len = rt_strnlen(src, CMDLINE_BYTES_MAX - 1);
	memcpy(cmdline, src, cmdline_len);
	cmdline[cmdline_len] = '\0';
}

/*
 * next_word finds the word starting at or after *pos; it returns 0 at the
 * end, else 1 with the key and value spans set and *pos past the word.
 */
static int next_word(size_t *pos, const char **key, size_t *klen, const char **val, size_t *vlen)
{
	size_t i = *pos, start, eq;

	while (i < cmdline_len && cmdline[i] == ' ')
		i++;
	if (i >= cmdline_len)
		return 0;
	start = i;
	while (i < cmdline_len && cmdline[i] != ' ')
		i++;
	*pos = i;
	for (eq = start; eq < i && cmdline[eq] != '='; eq++)
		;
	*key = cmdline + start;
	*klen = eq - start;
	*val = eq < i ? cmdline + eq + 1 : cmdline + i;
	*vlen = eq < i ? i - eq - 1 : 0;
	return 1;
}

int rt_cmdline_get(const char *key, const char **val)
{
	size_t pos = 0, klen, vlen;
	const char *k, *v;
	int found = -1;

	/* The last occurrence wins, as with most command lines. */
	while (next_word(&pos, &k, &klen, &v, &vlen)) {
		if (rt_memeq_str(k, klen, key)) {
			*val = v;
			found = (int)vlen;
		}
	}
	return found;
}

int rt_cmdline_check(const char *prog, const char *const *known)
{
	size_t pos = 0, klen, vlen;
	const char *k, *v;

	while (next_word(&pos, &k, &klen, &v, &vlen)) {
		int ok = 0;
		for (const char *const *p = known; *p; p++)
			ok |= rt_memeq_str(k, klen, *p);
		if (ok)
			continue;
		char names[128];
		size_t n = 0;
		for (const char *const *p = known; *p; p++)
			n += (size_t)rt_snprintf(names + (n < sizeof(names) ? n : sizeof(names)),
			                         n < sizeof(names) ? sizeof(names) - n : 0, "%s%s=",
			                         p == known ? "" : " ", *p);
		rt_printf("%s: unknown option \"%.*s\" on the command line; known options: %s\n",
		          prog, (int)klen, k, names);
		return -1;
	}
	return 0;
}

int rt_cmdline_u64(const char *prog, const char *key, uint64_t def, uint64_t min, uint64_t max, uint64_t *out)
{
	const char *v;
	int n = rt_cmdline_get(key, &v);
	uint64_t x;

	if (n < 0) {
		*out = def;
		return 0;
	}
	if (rt_parse_u64(v, (size_t)n, &x) != 0 || x < min || x > max) {
		rt_printf("%s: %s=%.*s is not a number from %lu to %lu; give %s=N\n",
		          prog, key, n, v, min, max, key);
		return -1;
	}
	*out = x;
	return 0;
}
