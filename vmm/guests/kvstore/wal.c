/*
 * wal.c — the write-ahead log.
 *
 * Format (all integers little-endian; CRC-32C is the Castagnoli CRC,
 * reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF):
 *
 * Sector 0, the header:
 *   0   8  magic "FTVMWAL1"
 *   8   4  format version, 1
 *   12  4  record size in bytes, 512
 *   16  8  log id: random, drawn from the entropy device when formatting
 *   24  4  CRC-32C of bytes 0..23
 *   28  484 zero
 *
 * Sector n >= 1, record n (one record per sector):
 *   0   4  magic "KVR1"
 *   4   4  CRC-32C of bytes 8..511
 *   8   8  log id, equal to the header's
 *   16  8  sequence number, equal to n
 *   24  4  CRC of record n-1 (the header's CRC for n = 1)
 *   28  1  op: 1 PUT, 2 INC
 *   29  1  key length, 1..64
 *   30  1  value length, 1..64
 *   31  1  zero
 *   32  8  the key's version after this write (>= 1)
 *   40  64 key, zero padded
 *   104 64 value after this write, zero padded (for INC: the new number)
 *   168 344 zero
 *
 * Why one record per sector: an append writes a sector that held no record,
 * so a write torn by a crash can damage only the record being written, never
 * one that was already acknowledged. Replay applies records 1, 2, ... and
 * stops at the first that does not check out: that is the torn tail (or the
 * end of the log). New records then overwrite it. The chain of CRCs (each
 * record names its predecessor's) keeps older records that lie beyond a
 * damaged one from being taken up again once the damaged sector is
 * rewritten; the log id keeps records of a log that an earlier format left
 * on the device from being taken up at all.
 *
 * A record carries the value after the write, not the operation's input, so
 * replaying is just setting keys: it needs no arithmetic and cannot fail
 * differently from the first time.
 */
#include "kv.h"
#include "wal.h"

#define WAL_RECORD_BYTES   FTVM_BLOCK_SECTOR
#define WAL_FORMAT_VERSION 1
#define WAL_HDR_CRC_OFF    24
#define WAL_HDR_BYTES      28
/* Sectors read per block request during replay. */
#define WAL_REPLAY_BATCH_SECTORS (FTVM_BLOCK_MAX / FTVM_BLOCK_SECTOR)

static const char hdr_magic[8] = { 'F', 'T', 'V', 'M', 'W', 'A', 'L', '1' };
static const char rec_magic[4] = { 'K', 'V', 'R', '1' };

static uint32_t crc_table[256];
static uint64_t log_id, sectors, next_seq, replayed;
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

static uint32_t crc32c(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;

	while (n--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
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

static int format(void)
{
	rt_entropy(&log_id, sizeof(log_id));
	memset(sector, 0, sizeof(sector));
	memcpy(sector, hdr_magic, 8);
	put_le32(sector + 8, WAL_FORMAT_VERSION);
	put_le32(sector + 12, WAL_RECORD_BYTES);
	put_le64(sector + 16, log_id);
	prev_crc = crc32c(sector, WAL_HDR_CRC_OFF);
	put_le32(sector + WAL_HDR_CRC_OFF, prev_crc);
	if (rt_block_write(0, sector, sizeof(sector)) != FTVM_OK) {
		rt_printf("kvstore: wal: writing the header to sector 0 failed\n");
		return WAL_E_IO;
	}
	return WAL_OK;
}

/* check_record returns NULL when rec is record seq of this log, else why not. */
static const char *check_record(const uint8_t *rec, uint64_t seq)
{
	if (memcmp(rec, rec_magic, 4) != 0)
		return "no record magic";
	if (le32(rec + 4) != crc32c(rec + 8, WAL_RECORD_BYTES - 8))
		return "bad checksum";
	if (le64(rec + 8) != log_id)
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

static int replay(void)
{
	const char *why = 0;
	uint64_t s = 1;

	while (s < sectors && !why) {
		uint64_t n = sectors - s < WAL_REPLAY_BATCH_SECTORS ? sectors - s : WAL_REPLAY_BATCH_SECTORS;
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

int wal_open(void)
{
	crc_init();
	sectors = rt_block_sectors();
	if (sectors < 2) {
		rt_printf("kvstore: the block device has %lu sectors; the write-ahead log needs at least 2 "
		          "(attach a disk to the VM)\n", sectors);
		return WAL_E_IO;
	}
	if (rt_block_read(0, sector, sizeof(sector)) != FTVM_OK) {
		rt_printf("kvstore: wal: reading the header in sector 0 failed\n");
		return WAL_E_IO;
	}
	if (memcmp(sector, hdr_magic, 8) != 0 || le32(sector + WAL_HDR_CRC_OFF) != crc32c(sector, WAL_HDR_CRC_OFF) ||
	    le32(sector + 8) != WAL_FORMAT_VERSION || le32(sector + 12) != WAL_RECORD_BYTES) {
		rt_printf("kvstore: wal: no valid log header in sector 0; formatting %lu sectors\n", sectors);
		next_seq = 1;
		return format();
	}
	log_id = le64(sector + 16);
	prev_crc = le32(sector + WAL_HDR_CRC_OFF);
	return replay();
}

uint64_t wal_replayed(void)
{
	return replayed;
}

uint64_t wal_records(void)
{
	return next_seq - 1;
}

int wal_append(uint8_t op, const char *key, size_t klen, const char *val, size_t vlen, uint64_t version)
{
	if (next_seq >= sectors)
		return WAL_E_FULL;
	memset(sector, 0, sizeof(sector));
	memcpy(sector, rec_magic, 4);
	put_le64(sector + 8, log_id);
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
