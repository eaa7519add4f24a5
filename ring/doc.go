// Package ring holds the lock-free queues that connect ftvm's threads: SPSC,
// a bounded ring of fixed-size items, and Records, a byte ring of
// variable-length records that a transport can send as one write.
//
// Both are single-producer single-consumer rings built only on sync/atomic
// and Go's memory model. The one piece of unsafe code, the futex wrappers
// the Park strategy sleeps on, is in futex_unsafe.go with its reason.
//
// # Who uses them
//
// Nothing in the daemon's data path does yet. The agent sends each log
// entry and each ack from the thread that made it (the vCPU thread, or the
// transport's reader) straight through the transport's Send, with no queue
// and no sender goroutine between them (agent/doc.go traces that path). The
// users today are tcpfallback.Transport.SendSpan, which sends a span of
// Records as frames without copying, the benchmarks (bench/ringbench,
// tcpfallback/tcpbench) and the tests. Records' layout is also the one the
// RDMA transport is to write into the peer's memory (DESIGN.md), which is
// why it is specified byte by byte below.
//
// # Why single-producer single-consumer suffices
//
// The rings were built for that planned path, where every queue has
// exactly one writer: the vCPU thread is the only producer of log entries
// (and of held outputs), the receiver is the only producer of what arrives
// from the peer, and each has exactly one consumer. A second producer gets
// a ring of its own and the consumer polls both, which keeps each ring free
// of compare-and-swap loops and of the cache-line contention of several
// writers. That is why there is no MPSC variant.
//
// # Cursors and false sharing
//
// Each ring has a head (items or bytes ever released, written only by the
// consumer) and a tail (items or bytes ever committed, written only by the
// producer). Both are free-running uint64 counts; the position in the buffer
// is the count modulo the power-of-two capacity, so wrap-around of the
// counts themselves (after 2^64) is harmless. Each side keeps a private copy
// of the other side's cursor and reloads it only when that copy says the ring
// is full (producer) or empty (consumer), so in steady state a side touches
// the other's cache line once per batch rather than once per item.
//
// The producer's fields, the consumer's fields and the read-mostly fields
// sit in separate groups 128 bytes apart, not 64: Intel's L2 spatial
// prefetcher pulls 64-byte lines in 128-byte-aligned pairs, so cursors in
// adjacent lines would still bounce between cores.
//
// # Batches
//
// The producer may reserve several slots (SPSC.Reserve) or several records
// (Records.Reserve, repeatedly), fill them in place and publish all of them
// with one atomic store (Commit). The consumer may peek several items
// (SPSC.Peek) or a span of many records (Records.Peek), read them in place
// and free them with one atomic store (Release).
//
// Batching is what makes the rings fast in Go: sync/atomic offers only
// sequentially consistent stores, which on amd64 are a locked XCHG (about
// 10 to 20 ns on these machines, where a plain store takes under 1 ns), so a
// publish per item costs that per item, and a publish per batch costs it
// once per batch.
//
// # Waiting
//
// Try calls never wait. Blocking calls wait with the ring's WaitStrategy:
// Spin, SpinThenYield, or Park (spin, yield, then sleep on a futex, so an
// idle ring burns no CPU). While it spins, a producer blocked on a full
// ring waits for an eighth of the ring to be free rather than one slot, so
// that a full ring refills in chunks; after the spin phase one slot is
// enough. A side that slept is woken by the other side's next publish, with
// one futex call; a side that never sleeps costs the other one atomic load
// per publish. Close wakes a blocked side, which returns ErrClosed; the
// consumer first drains what was committed.
//
// The futex sleep blocks the calling OS thread, not only the goroutine: that
// would suit a vCPU thread, which is locked to its OS thread anyway, and
// costs one extra thread per sleeping side elsewhere.
//
// # Records layout
//
// A Records ring is a byte buffer of C bytes, C a power of two (64 bytes to
// 1 GiB). Cursors count bytes. Every record starts at an offset that is a
// multiple of 8 and is laid out as:
//
//	offset 0..3      payload length L, uint32, little-endian (0 <= L < 0xFFFFFFFF)
//	offset 4..4+L-1  L payload bytes
//	offset 4+L..     zero bytes up to the next multiple of 8
//
// so a record takes RecordBytes(L) = (4+L+7) &^ 7 bytes and the next header
// follows immediately. Examples: L=0 takes 8 bytes (header, 4 zero bytes);
// L=4 takes 8 bytes (no padding); L=5 takes 16 bytes (7 zero bytes); L=64
// takes 72 bytes (4 zero bytes).
//
// A record is never split across the end of the buffer. When the next record
// does not fit in the bytes left before the end, the producer writes a wrap
// marker there instead: a 4-byte header whose length field is 0xFFFFFFFF,
// meaning "the rest of the buffer up to its end is padding; the next record
// starts at offset 0". Only the marker's 4 bytes are defined; the bytes after
// it up to the end are unspecified. Because offsets are multiples of 8 and C
// is too, at least 8 bytes are left whenever any are, so a marker always
// fits. The marker's bytes count as used until the consumer steps over it.
//
// The local consumer never walks records to find a marker: the producer
// notes the marker's position in a side slot before it commits it, and Peek
// reads that slot when the committed bytes run past the end of the buffer.
// A reader that sees only the bytes (a remote ring) finds the marker by
// walking the headers from the head.
//
// A record may take at most C/2 bytes (payload at most C/2-4 bytes,
// MaxPayload); then it fits wherever the cursors stand once the ring has
// drained. Larger records get a *TooLargeError.
//
// A span handed to the consumer (Records.Peek) starts at a record header,
// holds only whole records, and never contains a wrap marker; its length is
// a multiple of 8. ForEachRecord walks such a span and rejects any other
// (truncated header or record, a marker, non-zero padding) with a
// *MalformedError. A remote ring (RDMA) uses this same layout, so that a
// span read from a peer's memory can be walked the same way.
package ring
