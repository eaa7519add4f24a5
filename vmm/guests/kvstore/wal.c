/*
 * wal.c — the write-ahead log, and its compaction.
 *
 * Layout of a disk of S sectors (all integers little-endian; CRC-32C is the
 * Castagnoli CRC, reflected polynomial 0x82F63B78, initial value and final
 * xor 0xFFFFFFFF):
 *
 *   sector 0            header slot A
 *   sectors 1..L        the log: record n in sector n
 *   sectors L+1..L+T    table slot 0
 *   sectors L+T+1..L+2T table slot 1
 *   sector S-1          header slot B
 *
 * T is the sectors one copy of the table needs: ceil(keys * 138 / 512) for
 * the keys= bound at format time. When the disk is too small for two table
 * slots, two headers and WAL_COMPACT_LOG_MIN records, T = 0: the log is
 * sectors 1..S-1, there is no slot B and no compaction.
 *
 * Header (in slot A or B):
 *   0   8  magic "FTVMWAL1"
 *   8   4  format version, 2
 *   12  4  record size in bytes, 512
 *   16  8  log id of the log that follows this header: random, drawn from
 *          the entropy device at format and at each compaction
 *   24  8  generation: 1 at format, +1 at each compaction
 *   32  8  L, log sectors
 *   40  8  T, sectors of one table slot (0: no compaction)
 *   48  4  table slot this header's table is in (0 or 1)
 *   52  4  entries in that table
 *   56  4  CRC-32C of the table's entries*138 bytes
 *   60  4  CRC-32C of bytes 0..59
 *   64  448 zero
 *
 * Table: entries packed back to back from the slot's first sector, 138
 * bytes each, the last sector zero padded:
 *   0   8  version (>= 1)
 *   8   1  key length, 1..64
 *   9   1  value length, 1..64
 *   10  64 key, zero padded
 *   74  64 value, zero padded
 *
 * Record n (sector n, 1 <= n <= L):
 *   0   4  magic "KVR1"
 *   4   4  CRC-32C of bytes 8..511
 *   8   8  log id, equal to the header's
 *   16  8  sequence number, equal to n
 *   24  4  CRC of record n-1 (the header's CRC, bytes 60..63, for n = 1)
 *   28  1  op: 1 PUT, 2 INC
 *   29  1  key length, 1..64
 *   30  1  value length, 1..64
 *   31  1  zero
 *   32  8  the key's version after this write (>= 1)
 *   40  64 key, zero padded
 *   104 64 value after this write, zero padded (for INC: the new number)
 *   168 344 zero
 *
 * At boot the valid header of the higher generation whose table checks out
 * is the one in effect: its table is loaded, then its log replayed.
 *
 * Why one record per sector: an append writes a sector that held no record
 * of this log, so a write torn by a crash can damage only the record being
 * written, never one that was already acknowledged. Replay applies records
 * 1, 2, ... and stops at the first that does not check out: that is the
 * torn tail (or the end of the log). New records then overwrite it. The
 * chain of CRCs (each record names its predecessor's) keeps older records
 * that lie beyond a damaged one from being taken up again once the damaged
 * sector is rewritten; the log id keeps records of an earlier log (before a
 * format or a compaction) from being taken up at all.
 *
 * Compaction, when the log is full: the table as it is now (every record
 * applied) is written to the slot the header in effect does not use, then
 * a header of the next generation naming that slot and a fresh log id is
 * written, in one sector write, to the header slot the header in effect is
 * not in; the log then starts again at sector 1. Until that header write
 * is durable nothing the header in effect names has been touched, so a
 * crash at any point leaves either the old header (old table, whole old
 * log) or the new one (new table, empty log), each complete; a torn header
 * write fails its CRC and the old header stays in effect.
 *
 * A version 1 disk (before compaction: the same records in sectors 1..S-1
 * after a header whose CRC at 24 covers bytes 0..23) is replayed and moved
 * to this layout by a compaction, where its records leave room (open_v1).
 *
 * A record carries the value after the write, not the operation's input, so
 * replaying is just setting keys: it needs no arithmetic and cannot fail
 * differently from the first time.
 */
#include "kv.h"
#include "wal.h"

#define WAL_RECORD_BYTES   FTVM_BLOCK_SECTOR
#define WAL_FORMAT_VERSION 2
#define WAL_HDR_CRC_OFF    60
/* Version 1 (before compaction): the header's CRC at 24 covers 0..23. */
#define WAL_V1_VERSION     1
#define WAL_V1_HDR_CRC_OFF 24
#define WAL_NOT_V1         1 /* open_v1: not a version 1 header */
/* Bytes of one table entry. */
#define WAL_ENTRY_BYTES 138
/* The least log a compacting layout leaves; below it, no compaction. */
#define WAL_COMPACT_LOG_MIN 8
/* Sectors read or written per block request for replay and compaction. */
#define WAL_BATCH_SECTORS (FTVM_BLOCK_MAX / FTVM_BLOCK_SECTOR)

static const char hdr_magic[8] = { 'F', 'T', 'V', 'M', 'W', 'A', 'L', '1' };
static const char rec_magic[4] = { 'K', 'V', 'R', '1' };

/* The layout of this disk and the header in effect. */
struct header {
	uint64_t log_id, gen, log_sectors, table_sectors;
	uint32_t table_slot, entries, table_crc, crc;
	uint64_t span; /* sectors the layout covers (parse_header) */
};

static const char why_other_size[] = "laid out for a disk of another size";

static uint32_t crc_table[256];
static uint64_t sectors, next_seq, replayed, compactions;
static struct header cur;
static uint32_t prev_crc;
static uint8_t sector[WAL_RECORD_BYTES] __attribute__((aligned(8)));
static uint8_t batch[FTVM_BLOCK_MAX] __attribute__((aligned(8)));

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc_table[i] = c;
	}
}

/* crc32c_update folds n bytes into a running CRC; start at 0xffffffff,
 * finish with ^ 0xffffffff. */
static uint32_t crc32c_update(uint32_t c, const uint8_t *p, size_t n)
{
	while (n--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c;
}

static uint32_t crc32c(const uint8_t *p, size_t n)
{
	return crc32c_update(0xffffffffu, p, n) ^ 0xffffffffu;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i])
			return 0;
	}
	return 1;
}

/* header_sector is where header slot k (0: A, 1: B) lies. */
static uint64_t header_sector(uint32_t k)
{
	return k ? sectors - 1 : 0;
}

/* table_first is the first sector of table slot k. */
static uint64_t table_first(const struct header *h, uint32_t k)
{
	return 1 + h->log_sectors + (uint64_t)k * h->table_sectors;
}

/* write_header encodes h (filling in h->crc) into header slot k. */
static int write_header(struct header *h, uint32_t k)
{
	memset(sector, 0, sizeof(sector));
	memcpy(sector, hdr_magic, 8);
	put_le32(sector + 8, WAL_FORMAT_VERSION);
	put_le32(sector + 12, WAL_RECORD_BYTES);
	put_le64(sector + 16, h->log_id);
	put_le64(sector + 24, h->gen);
	put_le64(sector + 32, h->log_sectors);
	put_le64(sector + 40, h->table_sectors);
	put_le32(sector + 48, h->table_slot);
	put_le32(sector + 52, h->entries);
	put_le32(sector + 56, h->table_crc);
	h->crc = crc32c(sector, WAL_HDR_CRC_OFF);
	put_le32(sector + WAL_HDR_CRC_OFF, h->crc);
	if (rt_block_write(header_sector(k), sector, sizeof(sector)) != FTVM_OK) {
		rt_printf("kvstore: wal: writing the header to sector %lu failed\n", header_sector(k));
		return WAL_E_IO;
	}
	return WAL_OK;
}

/* parse_header returns NULL when sector holds a header for this disk, else
 * why not. */
static const char *parse_header(struct header *h)
{
	if (memcmp(sector, hdr_magic, 8) != 0)
		return "no header magic";
	if (le32(sector + WAL_HDR_CRC_OFF) != crc32c(sector, WAL_HDR_CRC_OFF))
		return "bad checksum";
	if (le32(sector + 8) != WAL_FORMAT_VERSION || le32(sector + 12) != WAL_RECORD_BYTES)
		return "another format version";
	h->log_id = le64(sector + 16);
	h->gen = le64(sector + 24);
	h->log_sectors = le64(sector + 32);
	h->table_sectors = le64(sector + 40);
	h->table_slot = le32(sector + 48);
	h->entries = le32(sector + 52);
	h->table_crc = le32(sector + 56);
	h->crc = le32(sector + WAL_HDR_CRC_OFF);
	h->span = 1 + h->log_sectors + (h->table_sectors ? 2 * h->table_sectors + 1 : 0);
	if (h->gen == 0 || h->log_sectors == 0 || h->table_slot > 1 ||
	    (uint64_t)h->entries * WAL_ENTRY_BYTES > h->table_sectors * FTVM_BLOCK_SECTOR)
		return "bad layout fields";
	if (h->span != sectors)
		return why_other_size;
	return 0;
}

static int format(void)
{
	uint64_t t = ((uint64_t)kv_keys_max() * WAL_ENTRY_BYTES + FTVM_BLOCK_SECTOR - 1) / FTVM_BLOCK_SECTOR;

	memset(&cur, 0, sizeof(cur));
	cur.gen = 1;
	if (sectors >= 2 + 2 * t + WAL_COMPACT_LOG_MIN) {
		cur.table_sectors = t;
		cur.log_sectors = sectors - 2 - 2 * t;
		/* A header of an earlier log in slot B must not outrank this
		 * one: clear it first (a crash before the next write leaves no
		 * header at all, and the next boot formats again). */
		memset(sector, 0, sizeof(sector));
		if (rt_block_write(header_sector(1), sector, sizeof(sector)) != FTVM_OK) {
			rt_printf("kvstore: wal: clearing header slot B in sector %lu failed\n", header_sector(1));
			return WAL_E_IO;
		}
	} else {
		cur.log_sectors = sectors - 1;
	}
	rt_entropy(&cur.log_id, sizeof(cur.log_id));
	cur.table_crc = crc32c(0, 0);
	if (write_header(&cur, 0) != WAL_OK)
		return WAL_E_IO;
	prev_crc = cur.crc;
	next_seq = 1;
	return WAL_OK;
}

/* check_record returns NULL when rec is record seq of this log, else why not. */
static const char *check_record(const uint8_t *rec, uint64_t seq)
{
	if (memcmp(rec, rec_magic, 4) != 0)
		return "no record magic";
	if (le32(rec + 4) != crc32c(rec + 8, WAL_RECORD_BYTES - 8))
		return "bad checksum";
	if (le64(rec + 8) != cur.log_id)
		return "record of another log";
	if (le64(rec + 16) != seq)
		return "wrong sequence number";
	if (le32(rec + 24) != prev_crc)
		return "does not follow the previous record";
	if ((rec[28] != WAL_OP_PUT && rec[28] != WAL_OP_INC) || rec[29] < 1 || rec[29] > KV_KEY_BYTES_MAX ||
	    rec[30] < 1 || rec[30] > KV_VAL_BYTES_MAX || le64(rec + 32) == 0)
		return "bad field";
	return 0;
}

/* load_table reads h's table into the (empty) table; it returns NULL or
 * why the table cannot be used. */
static const char *load_table(const struct header *h)
{
	uint64_t bytes = (uint64_t)h->entries * WAL_ENTRY_BYTES, off = 0;
	uint64_t s = table_first(h, h->table_slot);
	uint32_t crc = 0xffffffffu;
	uint8_t e[WAL_ENTRY_BYTES];
	size_t have = 0;

	while (off < bytes) {
		uint64_t left = (bytes - off + FTVM_BLOCK_SECTOR - 1) / FTVM_BLOCK_SECTOR;
		uint64_t n = left < WAL_BATCH_SECTORS ? left : WAL_BATCH_SECTORS;
		if (rt_block_read(s, batch, n * FTVM_BLOCK_SECTOR) != FTVM_OK)
			return "reading the table failed";
		size_t got = n * FTVM_BLOCK_SECTOR;
		if (got > bytes - off)
			got = (size_t)(bytes - off);
		crc = crc32c_update(crc, batch, got);
		for (size_t i = 0; i < got; i++) {
			e[have++] = batch[i];
			if (have < WAL_ENTRY_BYTES)
				continue;
			have = 0;
			if (le64(e) == 0 || e[8] < 1 || e[8] > KV_KEY_BYTES_MAX || e[9] < 1 || e[9] > KV_VAL_BYTES_MAX)
				return "bad table entry";
			if (kv_set((const char *)e + 10, e[8], (const char *)e + 74, e[9], le64(e)) != 0)
				return "the table holds more keys than keys= allows";
		}
		off += got;
		s += n;
	}
	if ((crc ^ 0xffffffffu) != h->table_crc)
		return "table checksum does not match its header";
	return 0;
}

static int compact(void);

static int replay(void)
{
	const char *why = 0;
	uint64_t s = 1, end = 1 + cur.log_sectors;

	while (s < end && !why) {
		uint64_t n = end - s < WAL_BATCH_SECTORS ? end - s : WAL_BATCH_SECTORS;
		if (rt_block_read(s, batch, n * FTVM_BLOCK_SECTOR) != FTVM_OK) {
			rt_printf("kvstore: wal: reading sectors %lu..%lu failed\n", s, s + n - 1);
			return WAL_E_IO;
		}
		for (uint64_t i = 0; i < n; i++, s++) {
			const uint8_t *rec = batch + i * FTVM_BLOCK_SECTOR;
			if ((why = check_record(rec, s)) != 0) {
				if (all_zero(rec, WAL_RECORD_BYTES))
					why = "end";
				break;
			}
			if (kv_set((const char *)rec + 40, rec[29], (const char *)rec + 104, rec[30], le64(rec + 32)) != 0) {
				rt_printf("kvstore: wal: record %lu adds a key to a full table (keys= lower than when it "
				          "was written?); replay stops there\n", s);
				why = "table full";
				break;
			}
			prev_crc = le32(rec + 4);
			replayed++;
		}
	}
	next_seq = s;
	if (why && !rt_streq(why, "end"))
		rt_printf("kvstore: wal: ignored sector %lu and after: %s (a torn write is expected after a crash)\n",
		          s, why);
	return WAL_OK;
}

/* open_v1 takes up a version 1 log (sector 0 a version 1 header, records
 * 1..S-1) and moves it to this layout when its records all lie where the
 * log goes: a compaction writes the table to slot 1 and a generation 2
 * header to slot B, neither of which the old log uses, so a crash before
 * the header is written leaves the version 1 disk as it was. It returns
 * WAL_NOT_V1 when sector (header slot A) is not a version 1 header. */
static int open_v1(void)
{
	if (memcmp(sector, hdr_magic, 8) != 0 || le32(sector + 8) != WAL_V1_VERSION ||
	    le32(sector + 12) != WAL_RECORD_BYTES || le32(sector + WAL_V1_HDR_CRC_OFF) != crc32c(sector, WAL_V1_HDR_CRC_OFF))
		return WAL_NOT_V1;
	memset(&cur, 0, sizeof(cur));
	cur.log_id = le64(sector + 16);
	cur.gen = 1;
	cur.log_sectors = sectors - 1;
	cur.crc = prev_crc = le32(sector + WAL_V1_HDR_CRC_OFF);
	if (replay() != WAL_OK)
		return WAL_E_IO;
	uint64_t t = ((uint64_t)kv_keys_max() * WAL_ENTRY_BYTES + FTVM_BLOCK_SECTOR - 1) / FTVM_BLOCK_SECTOR;
	if (sectors < 2 + 2 * t + WAL_COMPACT_LOG_MIN || next_seq - 1 > sectors - 2 - 2 * t) {
		rt_printf("kvstore: wal: a version 1 log of %lu records; it stays version 1, without compaction "
		          "(a disk of %lu sectors has room for %lu records besides two tables)\n",
		          next_seq - 1, sectors, sectors >= 2 + 2 * t ? sectors - 2 - 2 * t : 0);
		return WAL_OK;
	}
	cur.table_sectors = t;
	cur.log_sectors = sectors - 2 - 2 * t;
	rt_printf("kvstore: wal: a version 1 log of %lu records; moving it to version 2\n", next_seq - 1);
	return compact();
}

int wal_open(void)
{
	struct header h[2];
	const char *why[2] = { "not read", "not read" };

	crc_init();
	sectors = rt_block_sectors();
	if (sectors < 2) {
		rt_printf("kvstore: the block device has %lu sectors; the write-ahead log needs at least 2 "
		          "(attach a disk to the VM)\n", sectors);
		return WAL_E_IO;
	}
	for (uint32_t k = 0; k < 2; k++) {
		if (rt_block_read(header_sector(k), sector, sizeof(sector)) != FTVM_OK) {
			rt_printf("kvstore: wal: reading the header in sector %lu failed\n", header_sector(k));
			return WAL_E_IO;
		}
		why[k] = parse_header(&h[k]);
	}
	/* Slot B exists only in a compacting layout, which slot A (if valid)
	 * says; sector S-1 is a record otherwise. */
	if (!why[0] && h[0].table_sectors == 0)
		why[1] = "no slot B";
	/* The higher generation first; its table must check out. */
	uint32_t first = !why[1] && (why[0] || h[1].gen > h[0].gen);
	for (uint32_t i = 0; i < 2; i++) {
		uint32_t k = first ^ i;
		if (why[k])
			continue;
		const char *bad = load_table(&h[k]);
		if (!bad) {
			cur = h[k];
			prev_crc = cur.crc;
			return replay();
		}
		rt_printf("kvstore: wal: header in sector %lu (generation %lu): %s\n", header_sector(k), h[k].gen, bad);
		kv_reset();
	}
	if (rt_block_read(0, sector, sizeof(sector)) != FTVM_OK) {
		rt_printf("kvstore: wal: reading the header in sector 0 failed\n");
		return WAL_E_IO;
	}
	int v1 = open_v1();
	if (v1 != WAL_NOT_V1)
		return v1;
	/* A good header for another size: the disk file was resized. Its
	 * writes are there, so do not format over them. */
	for (uint32_t k = 0; k < 2; k++) {
		if (why[k] == why_other_size) {
			rt_printf("kvstore: wal: the disk has %lu sectors, but the header in sector %lu lays out "
			          "%lu: give the disk file its size back (%lu bytes), or zero sectors 0 and %lu "
			          "to start an empty log\n",
			          sectors, header_sector(k), h[k].span, h[k].span * FTVM_BLOCK_SECTOR, sectors - 1);
			return WAL_E_IO;
		}
	}
	kv_reset();
	rt_printf("kvstore: wal: no valid log header in sector 0 (%s); formatting %lu sectors\n", why[0], sectors);
	return format();
}

uint64_t wal_replayed(void)
{
	return replayed;
}

uint64_t wal_records(void)
{
	return next_seq - 1;
}

uint64_t wal_compactions(void)
{
	return compactions;
}

/* compact writes the table to the other slot and switches to it with a
 * header of the next generation and an empty log (see the top). */
static int compact(void)
{
	struct header n = cur;
	uint32_t crc = 0xffffffffu;
	uint64_t s, fill = 0, entries = 0;

	if ((uint64_t)kv_count() * WAL_ENTRY_BYTES > cur.table_sectors * FTVM_BLOCK_SECTOR)
		return WAL_E_FULL; /* keys= was raised past what the disk was formatted for */
	n.gen = cur.gen + 1;
	n.table_slot = (uint32_t)(n.gen & 1) ^ 1; /* header and table slot: A/0 for odd generations */
	s = table_first(&n, n.table_slot);
	for (uint32_t i = 0; i < KV_SLOTS; i++) {
		const struct kv_entry *e = kv_at(i);
		if (e) {
			uint8_t b[WAL_ENTRY_BYTES];
			memset(b, 0, sizeof(b));
			put_le64(b, e->version);
			b[8] = e->klen;
			b[9] = e->vlen;
			memcpy(b + 10, e->key, e->klen);
			memcpy(b + 74, e->val, e->vlen);
			crc = crc32c_update(crc, b, sizeof(b));
			entries++;
			for (size_t j = 0; j < sizeof(b); j++) {
				batch[fill++] = b[j];
				if (fill == sizeof(batch)) {
					if (rt_block_write(s, batch, fill) != FTVM_OK)
						return WAL_E_IO;
					s += fill / FTVM_BLOCK_SECTOR;
					fill = 0;
				}
			}
		}
	}
	if (fill) {
		uint64_t padded = (fill + FTVM_BLOCK_SECTOR - 1) / FTVM_BLOCK_SECTOR * FTVM_BLOCK_SECTOR;
		memset(batch + fill, 0, padded - fill);
		if (rt_block_write(s, batch, padded) != FTVM_OK)
			return WAL_E_IO;
	}
	n.entries = (uint32_t)entries;
	n.table_crc = crc ^ 0xffffffffu;
	rt_entropy(&n.log_id, sizeof(n.log_id));
	if (write_header(&n, n.table_slot) != WAL_OK)
		return WAL_E_IO;
	cur = n;
	prev_crc = cur.crc;
	next_seq = 1;
	compactions++;
	rt_printf("kvstore: wal: compacted: generation %lu, %u keys in table slot %u\n", cur.gen, cur.entries,
	          cur.table_slot);
	return WAL_OK;
}

int wal_append(uint8_t op, const char *key, size_t klen, const char *val, size_t vlen, uint64_t version)
{
	if (next_seq > cur.log_sectors) {
		if (cur.table_sectors == 0)
			return WAL_E_FULL;
		int err = compact();
		if (err != WAL_OK)
			return err;
	}
	memset(sector, 0, sizeof(sector));
	memcpy(sector, rec_magic, 4);
	put_le64(sector + 8, cur.log_id);
	put_le64(sector + 16, next_seq);
	put_le32(sector + 24, prev_crc);
	sector[28] = op;
	sector[29] = (uint8_t)klen;
	sector[30] = (uint8_t)vlen;
	put_le64(sector + 32, version);
	memcpy(sector + 40, key, klen);
	memcpy(sector + 104, val, vlen);
	uint32_t crc = crc32c(sector + 8, WAL_RECORD_BYTES - 8);
	put_le32(sector + 4, crc);
	if (rt_block_write(next_seq, sector, sizeof(sector)) != FTVM_OK)
		return WAL_E_IO;
	prev_crc = crc;
	next_seq++;
	return WAL_OK;
}
