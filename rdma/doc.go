// Package rdma ships ftvm's control-lane frames (log entries, output
// records, acknowledgements, control messages) into the peer's memory with
// one-sided writes, over real verbs (rdma/verbs) or a shared-memory file
// (rdma/shm). link.go is the seam between the ring protocol and those
// memories; ringconn.go is the ring protocol; transport.go keeps package
// transport's contract with it, over an authenticated tcpfallback
// connection that carries everything else.
//
// # Usage
//
//	tr, err := rdma.Listen(":7070", rdma.Config{Provider: shm.Provider{}, TCP: tcpCfg})
//	tr, err := rdma.Dial(ctx, "peer:7070", rdma.Config{Provider: shm.Provider{}, TCP: tcpCfg})
//	err = tr.Send(transport.TypeLog, entry) // into the peer's ring once it is up, by TCP before
//	n := tr.Poll()                          // on the vCPU thread at an exit: deliver what arrived, inline
//	name, why := tr.Using()                 // "shm", "rdma" or "tcp", and why
//	tr.Fence()                              // at go-live: the stale peer's writes fail or land nowhere
//
// # Two regions, two rings
//
// Each side opens one region (Provider.Open) that only the peer writes
// into, and connects to the peer's (Endpoint.Connect with the peer's
// Params). A side's region holds the ring the peer sends into, and the
// block where the peer writes back how far it consumed the ring this side
// sends into; so each direction has its records in the receiver's memory
// and its flow control in the sender's, and no side ever writes its own
// region. A region of R bytes (R = RegionHeaderBytes + C, C the ring's
// size, a power of two from MinRingBytes to MaxRingBytes), all integers
// little-endian:
//
//	offset  size  field                                   written by
//	0       32    hello block                             the peer, once, before its first record
//	0       8       magic "FTVMRNG1"
//	8       2       layout version (1)
//	10      2       zero
//	12      4       C, the ring's size in bytes
//	16      8       generation of this region (the one it was offered as)
//	24      8       zero
//	32      96    zero
//	128     8     ack block: the peer's consumer cursor in  the peer, at each write-back
//	              the ring this side sends into (a copy;
//	              the signal that follows carries it)
//	136     3960  zero
//	4096    C     the ring: package ring's Records layout  the peer
//	              (ring/doc.go), records at offsets that
//	              are multiples of 8, wrap markers
//
// Every record in the ring is one frame:
//
//	offset  size  field
//	0       4     record length L = 4 + payload bytes (ring/doc.go's header)
//	4       1     frame type (transport.Type: a control-lane user type, 16..19)
//	5       1     flags (transport.Flags; unknown bits refused)
//	6       2     zero
//	8       L-4   payload
//	4+L     ...   zero padding to a multiple of 8
//
// so a payload starts 8-byte aligned and a record takes
// ring.RecordBytes(L) bytes. A record may take half the ring at most
// (ring/doc.go), so a frame's payload is at most C/2 - 8 bytes; the
// Transport requires C of at least MinTransportRingBytes, twice the
// largest control-lane frame.
//
// # Signals
//
// A write that publishes something ends with Link.WriteImm, whose 32-bit
// immediate (imm) says what moved:
//
//	bits 31..30  kind: 0 tail (records up to the cursor are in your ring),
//	             1 head (I consumed your records up to the cursor);
//	             2 and 3 are refused
//	bits 29..0   the low 30 bits of the cursor (a byte count since the
//	             connection began)
//
// The receiver rebuilds the 64-bit cursor as the nearest value at or after
// the last one it knew with those low bits; since a cursor moves by at
// most C ≤ 2^29 between two signals, that is exact.
//
// Why WRITE_WITH_IMM rather than a second plain WRITE of the cursor: the
// receiver needs a completion to block on when idle (a poller that finds
// nothing for DefaultWaitSpin sleeps in Link.Wait, which an imm wakes, so
// an idle pair burns no CPU), and the InfiniBand spec orders the receive
// completion of a WRITE_WITH_IMM after the placement of its data and of
// every earlier WRITE on the queue pair, whereas a plain WRITE gives a
// reader that polls memory no order and no atomicity at all (a cursor
// read while the NIC places it may be torn). The cursor therefore travels
// in the imm, and the record's bytes in the same WriteImm: one post per
// frame. A frame that wraps costs two: Write of the wrap marker, then
// WriteImm of the record at offset 0. The hello block goes by Write before
// the first record; the first tail signal vouches for it too.
//
// # Who writes what, in order
//
// The sender, holding its lock, for one frame:
//
//  1. checks that the record (and a wrap marker, when it does not fit
//     before the ring's end) fits: C - (tail - head) bytes are free, head
//     being the consumer cursor the peer last signalled, and fewer than
//     MaxSignalsInFlight signals are unacknowledged (signals whose tail the
//     head has not passed); else TrySend returns transport.ErrWouldBlock,
//     and Send waits, reading signals itself, for at most the send timeout,
//     after which the connection fails (a consumer stuck that long is as
//     good as dead). It never overwrites a byte the consumer has not
//     released.
//  2. the first time, writes the hello block (Write);
//  3. if wrapping, writes the wrap marker at the old offset (Write);
//  4. writes the record into its staging memory at the new offset and
//     posts WriteImm(record, tail signal of the new tail).
//
// The receiver (the poller, or Poll on the caller's thread), holding its
// lock: polls the link's signals, checks each (below), then walks the
// records from its consumer cursor to the last tail, hands each frame to
// OnFrame with a payload that points into the ring, and advances its
// cursor past it. When it has consumed C/4 bytes or MaxSignalsInFlight/4
// signals since its last write-back, it writes the cursor back: the ack
// block, WriteImm with a head signal, under the sender's lock (TryLock: if
// the sender is busy, the sender does it before its next frame, and while
// it waits for room). With records of at most C/2, a sender waiting for
// room always gets a write-back: if it waits, more than C/2 are unreleased
// on its side, so the receiver, consuming them, crosses C/4.
//
// Acknowledgements of the lockstep protocol are frames like any other
// (TypeAck) in the primary's ring: the secondary writes them into the
// primary's memory, and the primary's vCPU thread reads them at an exit
// (Transport.Poll) with no thread hand-off and no system call; the vCPU
// thread also posts its own log records (a post is a user-space doorbell
// on verbs, stores on shm). A full ring stalls the vCPU thread in Send
// (bounded), behind lockstep's own log window, which keeps the log far
// below the ring.
//
// # What the peer controls, and what is checked
//
// A hostile or buggy peer writes whatever it likes into this side's region
// and posts any imm; it can make this side drop the connection, never read
// or write outside the regions. Every value is checked before use, on a
// local copy read once:
//
//   - a tail signal: at most C past this side's consumer cursor, and a
//     multiple of 8;
//   - a head signal: never past what this side has sent;
//   - an unknown signal kind;
//   - the hello block at the first tail signal: magic, version, C, and the
//     generation this region was offered as (a writer of an older set-up
//     is refused);
//   - each record's length: 4 to C/2-4, the record within the ring's end
//     and within the published tail; a wrap marker only where the tail
//     runs past it to the next lap; the frame header: a control-lane user
//     type, known flags, zero bytes 6..7.
//
// The first failure fails the connection with an error wrapping
// ErrProtocol; the Transport then drops the TCP control lane, so both
// hosts see the lane down (EventLaneDown) and set up afresh. Payload bytes
// the peer rewrites under OnFrame are the protocol above's to catch (wire
// messages carry CRC32C): the ring only guarantees bounds.
//
// # Set-up over the authenticated connection
//
// The Transport wraps a tcpfallback.Transport, whose TLS or PSK set-up has
// authenticated the peer before any of this: QP numbers, GIDs, rkeys,
// file paths and sizes travel only in link-setup frames
// (transport.TypeLinkSetup, tcpfallback ProtocolVersion 3) on that
// connection's control lane. A link-setup message, integers little-endian:
//
//	offset  size  field
//	0       1     kind: 1 params, 2 ready, 3 fail, 4 switch
//	1       1     version (1)
//	2       2     zero
//	4       4     to: the receiver's region generation (0 in params)
//	8       4     from: the sender's region generation
//	12      ...   params: provider name length n (≤ 32), the name, C
//	              (uint32), then the endpoint's Params (1..64 KiB);
//	              fail: the reason, up to 512 bytes of text;
//	              ready, switch: nothing
//
// On every new control connection (EventLaneUp) each side opens a fresh
// region, generation g+1, and sends params. On the peer's params it
// connects its endpoint to the peer's (Endpoint.Connect checks every
// value), starts polling, and answers ready; or fail, with the reason,
// when its provider differs, has no such memory (shm across hosts) or the
// connect fails, and both sides stay on TCP, saying why (Using). A side
// that is connected and has the peer's ready sends switch, by TCP, with
// its send lock held, and sends every later control-lane frame into the
// ring. The receiver acts on switch on the TCP reader, after every frame
// sent before it was delivered, and only then delivers the ring's frames
// (whose Seq continues from the switch frame's): a lane's frames are never
// reordered across the move, and the ring fills (and the sender waits) if
// the TCP backlog takes long to drain.
//
// # Liveness, loss and reconnection
//
// Liveness is the TCP transport's: heartbeats keep flowing on the TCP
// control lane, which carries nothing else once the ring is up, and its
// loss is reported as ever. When the control connection is lost, or the
// ring breaks (a check above fails, a write fails, the peer's ring stays
// full for the send timeout), the ring's generation is torn down (the
// region closed, so a writer that did not notice writes where nobody
// reads), the control lane is dropped if it was not already, and the next
// connection sets a new generation up. Frames are not replayed across
// connections; the protocol above resends what was not acknowledged, as
// over TCP.
//
// # Fencing
//
// When this host goes live, or learns of a newer epoch, Transport.Fence
// revokes the peer's access (Link.Revoke: verbs moves the QP to the error
// state and deregisters the MR, so the stale primary's NIC gets a remote
// access error; shm retires the region's file, so its stores land in
// pages nobody reads) and drops the control lane. A stale primary's write
// after that fails or changes nothing: rdma/rdmatest checks both at the
// link and at the transport level.
//
// # Threads
//
// Send and TrySend run on the caller's goroutine (the vCPU thread, a
// reader acknowledging from OnFrame, the agent's loop). Frames are handed
// to OnFrame by the poller goroutine, which spins Config.WaitSpin after
// the last frame and then blocks in Link.Wait, or by whoever calls Poll;
// one at a time (the receiver's lock), in order. Link.Wait is called with
// the receiver's lock held (the seam allows Poll and Wait from one
// goroutine at a time), so while Poll is being called (since the poller's
// last look) the idle poller naps 50 µs at a time without the lock instead: the
// vCPU thread then reads the acknowledgements itself at its exits, and
// when it stops (the guest idles) the poller blocks in Wait again. The
// pump goroutine forwards the TCP transport's events and runs set-up and
// teardown; a lost control lane is reported before the teardown, which
// waits for the poller.
//
// A watchdog goroutine per generation looks every 10 ms at the poller's
// count of turns (at most 20 ms apart, the bound of one Link.Wait, when
// it runs) and logs a warning when it made none for 50 ms or more: how
// long, where the poller was held (in OnFrame, in Link.Wait, waiting for
// the receiver's lock, napping), and the watchdog's own worst gap
// between two looks. A gap about as long as the stall means the whole
// process was not run (a loaded host); a short one means the poller alone
// was held, or not run again after its Wait ended, while the rest of the
// process ran. Either way frames the peer wrote meanwhile waited in the
// ring, and the peer's lockstep failure detector counts that silence.
// (Its cost: a timer wake-up every 10 ms per connected ring.)
package rdma
