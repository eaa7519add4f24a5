/*
 * kv.h — the key-value table and its text protocol.
 */
#ifndef KV_KV_H
#define KV_KV_H

#include "rt.h"

#define KV_KEY_BYTES_MAX 64
#define KV_VAL_BYTES_MAX 64
/* Keys the table can hold; cmdline keys= may lower it, never raise it. */
#define KV_KEYS_MAX 4096
/* Open addressing at most half full keeps probe sequences short. */
#define KV_SLOTS (2 * KV_KEYS_MAX)
/* "<id> VAL <version> <value>\n" with a 20-digit id and version. */
#define KV_REPLY_BYTES_MAX 192

struct kv_entry {
	uint64_t version; /* 0: slot unused */
	uint8_t klen, vlen;
	char key[KV_KEY_BYTES_MAX];
	char val[KV_VAL_BYTES_MAX];
};

void kv_init(uint32_t keys_max);
/* kv_keys_max is the bound kv_init set; kv_reset empties the table. */
uint32_t kv_keys_max(void);
void kv_reset(void);
uint32_t kv_count(void);
/* kv_at returns the entry in slot i (< KV_SLOTS), or NULL if it is unused:
 * for writing the whole table out. */
const struct kv_entry *kv_at(uint32_t i);
const struct kv_entry *kv_get(const char *key, size_t klen);
/* kv_set stores key=val at version; it returns -1 only when the key is new
 * and the table is full. */
int kv_set(const char *key, size_t klen, const char *val, size_t vlen, uint64_t version);
/*
 * kv_request executes one text request (a UDP payload) and writes the answer
 * into reply (cap >= KV_REPLY_BYTES_MAX); it returns the answer's length.
 * Writes reach the write-ahead log before this returns.
 */
size_t kv_request(const char *req, size_t len, char *reply, size_t cap);

#endif
