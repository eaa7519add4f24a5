/*
 * wal.h — kvstore's write-ahead log on the block device. The format is
 * described byte by byte in wal.c and in README.md.
 */
#ifndef KV_WAL_H
#define KV_WAL_H

#include "rt.h"

#define WAL_OP_PUT 1
#define WAL_OP_INC 2

enum wal_status {
	WAL_OK = 0,
	WAL_E_FULL = -1, /* no sector left for another record */
	WAL_E_IO = -2,   /* the device failed the write */
};

/*
 * wal_open reads the log on the block device, formatting it when neither
 * header slot holds a valid header, loads the table the header in effect
 * names and replays every record of its log into the table with kv_set.
 * It returns WAL_OK or WAL_E_IO, printing what went wrong.
 */
int wal_open(void);
/* Records replayed by wal_open, and records in the log now. */
uint64_t wal_replayed(void);
uint64_t wal_records(void);
/* Compactions since boot: each wrote the table and started a new log. */
uint64_t wal_compactions(void);
/* wal_append makes one record durable; only then may the write be applied
 * and answered. A full log is compacted first (where the disk has room for
 * the table twice); WAL_E_FULL only where it has not. */
int wal_append(uint8_t op, const char *key, size_t klen, const char *val, size_t vlen, uint64_t version);

#endif
