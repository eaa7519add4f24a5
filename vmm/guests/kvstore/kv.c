/*
 * kv.c — the key-value table and the request language.
 *
 * Requests are one line of ASCII in one datagram (a trailing "\n" or "\r\n"
 * is ignored), fields separated by exactly one space:
 *
 *   <id> PUT <key> <value>  ->  <id> OK <version>
 *   <id> GET <key>          ->  <id> VAL <version> <value>   or  <id> NONE
 *   <id> INC <key>          ->  <id> VAL <n>
 *   anything malformed      ->  <id> ERR <reason>   (? ERR <reason> without an id)
 *
 * <id> is a decimal number below 2^64 chosen by the client and echoed back.
 * A key is 1..64 bytes from '!'..'~'; a value is the rest of the line,
 * 1..64 bytes from ' '..'~'. A key's version starts at 1 and grows by one on
 * every PUT or INC. INC treats an absent key as 0 and needs the value to be
 * a decimal int64.
 *
 * The table uses open addressing with linear probing. Keys are never
 * deleted, so there are no tombstones, and it is at most half full, so a
 * probe always ends at an empty slot.
 */
#include "kv.h"
#include "wal.h"

static struct kv_entry slots[KV_SLOTS];
static uint32_t count, keys_max = KV_KEYS_MAX;

void kv_init(uint32_t max)
{
	keys_max = max < KV_KEYS_MAX ? max : KV_KEYS_MAX;
}

uint32_t kv_keys_max(void)
{
	return keys_max;
}

void kv_reset(void)
{
	memset(slots, 0, sizeof(slots));
	count = 0;
}

uint32_t kv_count(void)
{
	return count;
}

const struct kv_entry *kv_at(uint32_t i)
{
	return i < KV_SLOTS && slots[i].version ? &slots[i] : 0;
}

/* FNV-1a: simple, and good enough for keys a client picks. */
static uint32_t hash(const char *key, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)key[i]) * 16777619u;
	return h;
}

/* find returns key's slot, or the empty slot where it would go. */
static struct kv_entry *find(const char *key, size_t klen)
{
	uint32_t i = hash(key, klen) & (KV_SLOTS - 1);

	for (;;) {
		struct kv_entry *e = &slots[i];
		if (e->version == 0 || (e->klen == klen && memcmp(e->key, key, klen) == 0))
			return e;
		i = (i + 1) & (KV_SLOTS - 1);
	}
}

const struct kv_entry *kv_get(const char *key, size_t klen)
{
	const struct kv_entry *e = find(key, klen);

	return e->version ? e : 0;
}

int kv_set(const char *key, size_t klen, const char *val, size_t vlen, uint64_t version)
{
	struct kv_entry *e = find(key, klen);

	if (e->version == 0) {
		if (count >= keys_max)
			return -1;
		count++;
		e->klen = (uint8_t)klen;
		memcpy(e->key, key, klen);
	}
	e->vlen = (uint8_t)vlen;
	memcpy(e->val, val, vlen);
	e->version = version;
	return 0;
}

struct span {
	const char *p;
	size_t n;
};

/* cut splits s at its first space: head before, s after (empty if none).
 * It returns whether there was a space. */
static int cut(struct span *s, struct span *head)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->p[i] == ' ') {
			head->p = s->p;
			head->n = i;
			s->p += i + 1;
			s->n -= i + 1;
			return 1;
		}
	}
	*head = *s;
	s->p += s->n;
	s->n = 0;
	return 0;
}

static int chars_in(struct span s, char lo, char hi)
{
	for (size_t i = 0; i < s.n; i++) {
		if (s.p[i] < lo || s.p[i] > hi)
			return 0;
	}
	return 1;
}

/* check_key returns NULL for a good key, else the error reason. */
static const char *check_key(struct span k)
{
	if (k.n == 0)
		return "usage";
	if (k.n > KV_KEY_BYTES_MAX)
		return "keylen";
	if (!chars_in(k, '!', '~'))
		return "badchar";
	return 0;
}

/*
 * write_entry logs and then applies one write. The log comes first: an
 * answer the client saw must survive a crash, and an entry the log refused
 * must not be visible to a later GET.
 */
static const char *write_entry(uint8_t op, struct span k, const char *val, size_t vlen, uint64_t *version)
{
	const struct kv_entry *e = kv_get(k.p, k.n);

	if (!e && count >= keys_max)
		return "full";
	*version = e ? e->version + 1 : 1;
	switch (wal_append(op, k.p, k.n, val, vlen, *version)) {
	case WAL_OK:
		break;
	case WAL_E_FULL:
		return "walfull";
	default:
		return "io";
	}
	kv_set(k.p, k.n, val, vlen, *version);
	return 0;
}

static size_t do_put(uint64_t id, struct span rest, char *reply, size_t cap)
{
	struct span k;
	const char *err;
	uint64_t version;

	if (!cut(&rest, &k))
		return (size_t)rt_snprintf(reply, cap, "%lu ERR usage\n", id);
	if ((err = check_key(k)) != 0)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR %s\n", id, err);
	if (rest.n == 0)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR usage\n", id);
	if (rest.n > KV_VAL_BYTES_MAX)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR vallen\n", id);
	if (!chars_in(rest, ' ', '~'))
		return (size_t)rt_snprintf(reply, cap, "%lu ERR badchar\n", id);
	if ((err = write_entry(WAL_OP_PUT, k, rest.p, rest.n, &version)) != 0)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR %s\n", id, err);
	return (size_t)rt_snprintf(reply, cap, "%lu OK %lu\n", id, version);
}

static size_t do_get(uint64_t id, struct span k, char *reply, size_t cap)
{
	const char *err = check_key(k);

	if (err)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR %s\n", id, err);
	const struct kv_entry *e = kv_get(k.p, k.n);
	if (!e)
		return (size_t)rt_snprintf(reply, cap, "%lu NONE\n", id);
	return (size_t)rt_snprintf(reply, cap, "%lu VAL %lu %.*s\n", id, e->version, (int)e->vlen, e->val);
}

static size_t do_inc(uint64_t id, struct span k, char *reply, size_t cap)
{
	const char *err = check_key(k);
	int64_t n = 0;
	uint64_t version;
	char val[24];

	if (err)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR %s\n", id, err);
	const struct kv_entry *e = kv_get(k.p, k.n);
	if (e && rt_parse_i64(e->val, e->vlen, &n) != 0)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR notnum\n", id);
	if (n == INT64_MAX)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR overflow\n", id);
	n++;
	size_t vlen = (size_t)rt_snprintf(val, sizeof(val), "%ld", n);
	if ((err = write_entry(WAL_OP_INC, k, val, vlen, &version)) != 0)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR %s\n", id, err);
	return (size_t)rt_snprintf(reply, cap, "%lu VAL %ld\n", id, n);
}

size_t kv_request(const char *req, size_t len, char *reply, size_t cap)
{
	struct span rest = { req, len }, f_id, op;
	uint64_t id;

	if (rest.n > 0 && rest.p[rest.n - 1] == '\n')
		rest.n--;
	if (rest.n > 0 && rest.p[rest.n - 1] == '\r')
		rest.n--;
	int more = cut(&rest, &f_id);
	if (rt_parse_u64(f_id.p, f_id.n, &id) != 0)
		return (size_t)rt_snprintf(reply, cap, "? ERR badid\n");
	if (!more)
		return (size_t)rt_snprintf(reply, cap, "%lu ERR usage\n", id);
	more = cut(&rest, &op);
	if (rt_memeq_str(op.p, op.n, "PUT"))
		return more ? do_put(id, rest, reply, cap) : (size_t)rt_snprintf(reply, cap, "%lu ERR usage\n", id);
	if (rt_memeq_str(op.p, op.n, "GET") || rt_memeq_str(op.p, op.n, "INC")) {
		struct span k;
		/* Exactly one field after the op. */
		if (!more || cut(&rest, &k))
			return (size_t)rt_snprintf(reply, cap, "%lu ERR usage\n", id);
		return op.p[0] == 'G' ? do_get(id, k, reply, cap) : do_inc(id, k, reply, cap);
	}
	return (size_t)rt_snprintf(reply, cap, "%lu ERR badop\n", id);
}
