// Package shm is rdma's shared-memory twin: a Provider whose one-sided
// write is a store into a region file the peer process created and this
// one maps, for two daemons on one host (tests, benchmarks, `ftvm demo
// --transport shm`). It runs everywhere and needs no privilege.
//
// # The file
//
// Each Open creates a fresh file, Dir/ftvm-shm-<16 hex digits>.region
// (mode 0600, O_EXCL), of 4096 + 4096 + size bytes, all integers
// little-endian:
//
//	offset  size  field                                      written by
//	0       8     magic "FTVMSHM1"                           owner, at Open
//	8       8     region size in bytes                       owner, at Open
//	16      16    nonce (random; the Params carry it)        owner, at Open
//	64      4     revoked: 1 once the owner retired it       owner (Revoke)
//	68      4     overflow: 1 if the signal queue overflowed writer
//	72      4     attached: 1 once a writer mapped it        writer (Connect)
//	128     4     futex word: bumped to wake a sleeping owner writer
//	192     4     sleeping: 1 while the owner is in Wait     owner sets, writer clears
//	384     8     signal queue head: signals ever polled     owner, every 256 signals
//	4096    8192  signal queue: 1024 uint64 slots            writer
//	12288   size  the region (Endpoint.Local, the peer's Staging)
//
// The n-th signal (from 0) goes into slot n%1024 as one 64-bit word: the
// lap n/1024 + 1 (32 bits, never 0) in the high half, the imm in the low
// half. The owner, expecting signal h, reads slot h%1024 and takes it if
// it holds lap h/1024 + 1; so a signal costs the writer one store and the
// reader one cache line (no separate tail word to bounce), and a slot the
// peer fills with anything else is just not a signal yet. The writer
// reloads the owner's head only when the queue looks full (1024 ahead);
// still full, it sets the overflow word and fails (the ring protocol never
// leaves more than rdma.MaxUnpolledSignals unpolled).
//
// The cursors and the futex word live 64 bytes or more apart so that the
// two processes' words do not share a cache line.
//
// # Params
//
//	offset  size  field
//	0       8     magic "FTVMSHMP"
//	8       2     version (1)
//	10      2     path length n (1..1024)
//	12      8     region size (a multiple of 4096, at most 4096 + rdma.MaxRingBytes)
//	20      16    nonce
//	36      n     absolute, clean path to a ftvm-shm-*.region file
//
// Connect checks every field, opens the file without following symlinks,
// checks that it is a regular file of the right size whose header holds
// the same magic, size and nonce, and that no other writer attached; then
// it maps it and unlinks it, so that from then on only the two mappings
// hold it and nothing is left on disk when both processes are gone.
//
// # Ordering
//
// Link.Staging is the peer's region itself: the protocol's stores into it
// are the one-sided write, placed at once (Write only checks bounds and
// revocation). WriteImm then stores the signal's slot with a sequentially
// consistent (so release) store; the owner's Poll loads the slot (acquire)
// before it reads the region, so every byte stored before a signal is
// visible once the signal is: the order RDMA WRITE_WITH_IMM gives. Wait sleeps on the futex
// word with FUTEX_WAIT without FUTEX_PRIVATE_FLAG, since the word is in a
// mapping of two processes; a writer wakes it only when the sleeping word
// says the owner sleeps (one atomic load per signal otherwise).
//
// # Revoke
//
// Revoke sets the revoked word (so the stale writer's next Write fails
// with ErrRevoked) and then retires the region: the file's pages under
// this side's mapping are replaced, in one mremap, by a private copy, and
// the file is unlinked. A store the stale writer makes after that lands
// in the file's pages, which no one else maps any more: it changes
// nothing this side reads. Every connection generation gets a fresh file,
// so a stale writer never reaches a newer generation either.
package shm
