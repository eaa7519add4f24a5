package rdma

import "time"

// This file is the seam between the ring protocol (package rdma) and the
// memories it runs over: real verbs (rdma/verbs) and a shared-memory file
// between two processes on one host (rdma/shm). Both implement Endpoint
// and Link exactly as documented here, and one conformance suite checks
// them alike.

// Provider opens endpoints of one kind of one-sided memory.
type Provider interface {
	// Name is the transport's name as the daemon and status show it:
	// "rdma" (verbs) or "shm".
	Name() string
	// Open makes a region of size bytes that the peer will write into
	// (verbs: allocated and registered for REMOTE_WRITE; shm: a new file,
	// mapped). size is a multiple of 4096.
	Open(size int) (Endpoint, error)
}

// Endpoint is one side's region before it is connected to a peer.
type Endpoint interface {
	// Local is the region the peer writes into; this side only reads it,
	// and polls it for what arrives.
	Local() []byte
	// Params describes this endpoint to the peer: what it needs to reach
	// Local (verbs: QP number, PSN, GID, rkey, address and size; shm: the
	// file and its size, and a nonce). The caller sends it over the
	// already authenticated TCP connection and never interprets it.
	Params() []byte
	// Connect takes the peer's Params, checks every value in them (a size
	// over the limit, a malformed or short encoding, a device or file
	// that does not match is an error, never a panic), and connects.
	// The Link's staging memory is sized from the peer's region, which
	// the peer's Params say and Connect checks.
	Connect(peer []byte) (Link, error)
	// Close releases the region; idempotent.
	Close() error
}

// Link is a connected, reliable, ordered one-sided channel to a peer.
// Write and WriteImm are called from one goroutine at a time (the
// caller's lock); Poll and Wait from one goroutine at a time, possibly
// another one.
type Link interface {
	// Local is the endpoint's region (the same slice as Endpoint.Local).
	Local() []byte
	// Staging is local memory the size of the peer's Local: Write copies
	// from it to the same offsets of the peer's region. Its bytes must not
	// change between a Write of them and the peer's acknowledgement that
	// it consumed them (verbs DMAs them after the post).
	Staging() []byte
	// PeerSize is the size of the peer's Local (== len(Staging())).
	PeerSize() int
	// Write places Staging()[off:off+n] at offset off of the peer's
	// region with a one-sided write (verbs: RDMA WRITE; shm: stores). It
	// posts and returns; it does not wait for the write to complete. The
	// writes of one Link are placed in the order they were posted.
	// off+n beyond PeerSize is an error.
	Write(off, n int) error
	// WriteImm is Write followed by a signal carrying imm: the peer's
	// Poll returns imm only once the bytes of this write and of every
	// earlier one are placed in its region (verbs: RDMA WRITE_WITH_IMM,
	// whose receive completion the IB spec orders after the data; shm: a
	// release store and a futex word). n may be 0.
	WriteImm(off, n int, imm uint32) error
	// Poll appends to imms the signals that arrived since the last Poll,
	// without blocking and without a system call (verbs: ibv_poll_cq;
	// shm: atomic loads), and returns how many it appended. Since a Go
	// callee cannot grow its caller's slice, "appends" means: it writes
	// them into imms[len(imms):cap(imms)], at most that many (the rest
	// wait for the next Poll, in order), and the caller extends its slice
	// by the count. The ring protocol polls with room for
	// MaxUnpolledSignals and never leaves more than that unpolled, which
	// is what a Link must be able to hold (verbs: receive queue and CQ
	// depth).
	Poll(imms []uint32) (int, error)
	// Wait blocks until a signal may have arrived, or until timeout
	// (verbs: ibv_req_notify_cq, poll again, then the completion
	// channel's fd; shm: a shared futex). It may return early; callers
	// Poll after it.
	Wait(timeout time.Duration) error
	// Revoke takes the peer's right to write into Local: from its return
	// on, a write the peer posts fails (verbs: the QP goes to the error
	// state and the MR is deregistered, so the peer's NIC gets a remote
	// access error) or lands where this side never reads (shm: the region
	// file is retired), and changes nothing this side reads. Idempotent.
	Revoke() error
	// Err reports the link's failure (the peer's writes failing, the peer
	// gone), or nil.
	Err() error
	// Close tears the link down; idempotent.
	Close() error
}

// DefaultWaitSpin is how long a poller spins on Poll before it blocks in
// Wait, so that a busy pair never sleeps and an idle one burns no CPU.
const DefaultWaitSpin = 50 * time.Microsecond
