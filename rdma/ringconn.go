package rdma

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/ring"
	"github.com/ftvm/ftvm/transport"
)

// Errors a caller tests with errors.Is.
var (
	// ErrProtocol: the peer wrote something into this side's region that
	// the ring protocol does not allow (a cursor beyond what fits, a
	// malformed record, a wrong hello). The connection is dropped.
	ErrProtocol = errors.New("rdma: the peer broke the ring protocol")
	// ErrRevoked: this side revoked the peer's access (Revoke, fencing).
	ErrRevoked = errors.New("rdma: access revoked")
)

// RingConn runs the ring protocol (doc.go) over a connected Link: it
// sends control-lane frames as records into the peer's ring and receives
// the peer's from its own.
//
// Sending (Send, TrySend) is safe for concurrent use; frames leave in the
// order the calls take the sender's lock. Receiving (Receive, Wait) is for
// one goroutine at a time. Receive never takes the sender's lock for
// longer than a TryLock, and a waiting Send never receives, so a side's
// sender and receiver never wait for each other.
type RingConn struct {
	link      Link
	local     []byte // link.Local()
	staging   []byte // link.Staging()
	localGen  uint64 // the generation the peer's hello must name
	peerGen   uint64 // the generation our hello names
	sendTimed time.Duration

	err atomic.Pointer[error] // the first failure; then every call fails

	// Sender side: mu held.
	mu         sync.Mutex
	sendRing   []byte // staging[ringOff:]: the mirror of the peer's ring
	sendMask   uint64
	sendMaxRec uint64
	helloSent  bool
	inflight   [MaxSignalsInFlight]uint64 // cursors of signals not yet passed by headSeen
	inflightN  int                        // count; oldest at inflightAt
	inflightAt int
	lastWB     uint64 // the consumer cursor last written back

	prodTail atomic.Uint64 // bytes ever signaled; written under mu, read by the receiver's checks
	headSeen atomic.Uint64 // the peer's consumer cursor, from its signals; written by the receiver

	// Receiver side: rmu held. A sender waiting for room takes it
	// (TryLock) to read signals, never to deliver.
	rmu          sync.Mutex
	recvRing     []byte // local[ringOff:]
	recvMask     uint64
	recvMaxRec   uint64
	tailSeen     uint64 // the peer's producer cursor, from its signals
	consHead     uint64 // bytes consumed (delivered)
	helloChecked bool
	sinceWBBytes uint64
	sinceWBSigs  int
	imms         []uint32
	deliver      atomic.Bool   // frames may be delivered (the switch was seen)
	wantWB       atomic.Uint64 // consumer cursor to write back; 0 bit: none yet
	framesRecv   atomic.Uint64 // added to once per Receive that delivered
	framesSent   uint64        // mu held
}

// NewRingConn starts the ring protocol over link. localGen is the
// generation of this side's region (the peer's hello must name it),
// peerGen the peer's (this side's hello names it). sendTimeout bounds how
// long Send waits for room (zero: one second). Both regions must be
// RegionBytes of a valid ring size.
func NewRingConn(link Link, localGen, peerGen uint64, sendTimeout time.Duration) (*RingConn, error) {
	local, staging := link.Local(), link.Staging()
	if len(staging) != link.PeerSize() {
		return nil, fmt.Errorf("rdma: the link's staging memory has %d bytes, the peer's region %d", len(staging), link.PeerSize())
	}
	if err := checkRingBytes("this host's", len(local)-RegionHeaderBytes); err != nil {
		return nil, err
	}
	if err := checkRingBytes("the peer's", len(staging)-RegionHeaderBytes); err != nil {
		return nil, err
	}
	if sendTimeout <= 0 {
		sendTimeout = time.Second
	}
	c := &RingConn{
		link: link, local: local, staging: staging, localGen: localGen, peerGen: peerGen, sendTimed: sendTimeout,
		sendRing: staging[ringOff:], recvRing: local[ringOff:],
		imms: make([]uint32, 0, MaxUnpolledSignals),
	}
	c.sendMask = uint64(len(c.sendRing) - 1)
	c.sendMaxRec = uint64(len(c.sendRing) / 2)
	c.recvMask = uint64(len(c.recvRing) - 1)
	c.recvMaxRec = uint64(len(c.recvRing) / 2)
	return c, nil
}

// Link is the link the connection runs over.
func (c *RingConn) Link() Link { return c.link }

// MaxPayload is the largest frame payload the peer's ring takes.
func (c *RingConn) MaxPayload() int {
	return int(c.sendMaxRec) - ring.RecordHeaderBytes - frameHeaderBytes
}

// Err is the connection's failure, or nil.
func (c *RingConn) Err() error {
	if p := c.err.Load(); p != nil {
		return *p
	}
	return c.link.Err()
}

// Fail makes the connection fail with err (the first failure sticks): a
// Send waiting for room returns, and every later call fails.
func (c *RingConn) Fail(err error) {
	c.err.CompareAndSwap(nil, &err)
}

// Revoke takes the peer's right to write into this side's region
// (Link.Revoke) and fails the connection with ErrRevoked.
func (c *RingConn) Revoke() error {
	c.Fail(fmt.Errorf("%w: this host fenced the peer", ErrRevoked))
	return c.link.Revoke()
}

// EnableDelivery lets Receive hand frames out. Before it, Receive reads
// signals (so the sender learns the peer's consumer cursor) but leaves
// records in the ring: the transport enables delivery once the peer's
// switch to the ring has arrived on TCP, behind every frame it sent there.
func (c *RingConn) EnableDelivery() { c.deliver.Store(true) }

// Stats: frames sent and received over the ring.
func (c *RingConn) Stats() (sent, received uint64) {
	c.mu.Lock()
	sent = c.framesSent
	c.mu.Unlock()
	return sent, c.framesRecv.Load()
}

// ---- Sending ----

// TrySend sends one frame, or returns transport.ErrWouldBlock having sent
// nothing when the sender's lock is taken or the peer's ring has no room.
func (c *RingConn) TrySend(typ transport.Type, flags transport.Flags, payload []byte) error {
	if !c.mu.TryLock() {
		return transport.ErrWouldBlock
	}
	defer c.mu.Unlock()
	return c.sendLocked(typ, flags, payload, true)
}

// Send sends one frame, waiting for room in the peer's ring at most the
// send timeout; then the connection fails (a consumer that does not
// consume for that long is as good as dead).
func (c *RingConn) Send(typ transport.Type, flags transport.Flags, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendLocked(typ, flags, payload, false)
}

func (c *RingConn) sendLocked(typ transport.Type, flags transport.Flags, payload []byte, try bool) error {
	if err := c.Err(); err != nil {
		return fmt.Errorf("%w: %w", transport.ErrLaneDown, err)
	}
	if !typ.User() || transport.LaneOf(typ) != transport.LaneControl {
		return fmt.Errorf("rdma: a %s frame does not travel on the ring (control-lane user types only)", typ)
	}
	if flags&^transport.KnownFlags != 0 {
		return fmt.Errorf("rdma: unknown flags %#02x", uint8(flags))
	}
	if len(payload) > c.MaxPayload() {
		return fmt.Errorf("rdma: %s payload of %d bytes exceeds the peer's ring maximum of %d; split it or give the ring more bytes", typ, len(payload), c.MaxPayload())
	}
	c.flushWriteback()
	recLen := frameHeaderBytes + len(payload)
	size := uint64(ring.RecordBytes(recLen))
	capacity := uint64(len(c.sendRing))
	pos := c.prodTail.Load()
	off := pos & c.sendMask
	need := size
	wrap := size > capacity-off
	if wrap {
		need += capacity - off
	}
	if !c.room(pos, need) {
		if try {
			return transport.ErrWouldBlock
		}
		if err := c.awaitRoom(pos, need); err != nil {
			return err
		}
	}
	if !c.helloSent {
		putHello(c.staging[helloOff:], len(c.sendRing), c.peerGen)
		if err := c.link.Write(helloOff, helloBytes); err != nil {
			return c.sendFailed(err)
		}
		c.helloSent = true
	}
	if wrap {
		binary.LittleEndian.PutUint32(c.sendRing[off:], ring.WrapMarker)
		if err := c.link.Write(ringOff+int(off), ring.RecordHeaderBytes); err != nil {
			return c.sendFailed(err)
		}
		pos += capacity - off
		off = 0
	}
	rec := c.sendRing[off : off+size]
	binary.LittleEndian.PutUint32(rec[0:], uint32(recLen))
	rec[4], rec[5], rec[6], rec[7] = byte(typ), byte(flags), 0, 0
	n := copy(rec[8:], payload)
	clear(rec[8+n:])
	pos += size
	// The new tail is stored before the signal goes: the peer may consume
	// the record and write its cursor back before WriteImm returns, and
	// the receiver checks that cursor against this one.
	c.prodTail.Store(pos)
	if err := c.link.WriteImm(ringOff+int(off), int(size), signal(signalTail, pos)); err != nil {
		return c.sendFailed(err)
	}
	i := (c.inflightAt + c.inflightN) % MaxSignalsInFlight
	c.inflight[i] = pos
	c.inflightN++
	c.framesSent++
	return nil
}

func (c *RingConn) sendFailed(err error) error {
	err = fmt.Errorf("rdma: writing into the peer's ring: %w", err)
	c.Fail(err)
	return fmt.Errorf("%w: %w", transport.ErrLaneDown, err)
}

// room reports whether need bytes fit at pos and a signal may be posted,
// retiring the in-flight signals the peer's consumer cursor has passed.
func (c *RingConn) room(pos, need uint64) bool {
	head := c.headSeen.Load()
	for c.inflightN > 0 && c.inflight[c.inflightAt] <= head {
		c.inflightAt = (c.inflightAt + 1) % MaxSignalsInFlight
		c.inflightN--
	}
	return uint64(len(c.sendRing))-(pos-head) >= need && c.inflightN < MaxSignalsInFlight
}

// awaitRoom waits for room with the sender's lock held, writing back this
// side's consumer cursor meanwhile (the peer's sender may be waiting for
// it in just the same way).
func (c *RingConn) awaitRoom(pos, need uint64) error {
	deadline := time.Now().Add(c.sendTimed)
	for i := 0; ; i++ {
		c.flushWriteback()
		if !c.room(pos, need) && c.rmu.TryLock() {
			// Read the peer's signals (its consumer cursor among them),
			// leaving the records for the receiver.
			err := c.readSignals()
			c.rmu.Unlock()
			if err != nil {
				return fmt.Errorf("%w: %w", transport.ErrLaneDown, err)
			}
		}
		if c.room(pos, need) {
			return nil
		}
		if err := c.Err(); err != nil {
			return fmt.Errorf("%w: %w", transport.ErrLaneDown, err)
		}
		switch {
		case i < 1000:
		case i < 2000:
			runtime.Gosched()
		default:
			time.Sleep(20 * time.Microsecond)
			if time.Now().After(deadline) {
				err := fmt.Errorf("rdma: the peer's ring has been full for %v (send timeout): its consumer is stuck", c.sendTimed)
				c.Fail(err)
				return fmt.Errorf("%w: %w", transport.ErrLaneDown, err)
			}
		}
	}
}

// flushWriteback writes back the consumer cursor the receiver asked for;
// mu held.
func (c *RingConn) flushWriteback() {
	h := c.wantWB.Load()
	if h == c.lastWB {
		return
	}
	binary.LittleEndian.PutUint64(c.staging[ackOff:], h)
	if err := c.link.WriteImm(ackOff, ackBytes, signal(signalHead, h)); err != nil {
		c.Fail(fmt.Errorf("rdma: writing the consumer cursor back: %w", err))
		return
	}
	c.lastWB = h
}

// ---- Receiving ----

// Receive reads the signals that arrived and, once delivery is enabled,
// hands every frame they published to fn, in order, then frees their
// room. fn's payload points into the ring and is valid until fn returns.
// It never blocks and makes no system call on its own (the Link's Poll
// makes none). It returns the number of signals read and frames
// delivered; an error fails the connection (ErrProtocol: the peer wrote
// outside the protocol).
func (c *RingConn) Receive(fn func(typ transport.Type, flags transport.Flags, payload []byte)) (signals, frames int, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.receiveLocked(fn)
}

// TryReceive is Receive that returns ok false, having done nothing, when
// another goroutine is receiving.
func (c *RingConn) TryReceive(fn func(typ transport.Type, flags transport.Flags, payload []byte)) (signals, frames int, ok bool, err error) {
	if !c.rmu.TryLock() {
		return 0, 0, false, nil
	}
	defer c.rmu.Unlock()
	signals, frames, err = c.receiveLocked(fn)
	return signals, frames, true, err
}

func (c *RingConn) receiveLocked(fn func(typ transport.Type, flags transport.Flags, payload []byte)) (signals, frames int, err error) {
	if err := c.Err(); err != nil {
		return 0, 0, err
	}
	if err := c.readSignals(); err != nil {
		return 0, 0, err
	}
	n := len(c.imms)
	if c.deliver.Load() {
		frames, err = c.consume(fn)
		if err != nil {
			c.Fail(err)
			return n, frames, err
		}
	}
	return n, frames, nil
}

// readSignals polls the link and applies what arrived; rmu held.
func (c *RingConn) readSignals() error {
	if err := c.Err(); err != nil {
		return err
	}
	imms, err := c.poll()
	if err != nil {
		c.Fail(err)
		return err
	}
	for _, imm := range imms {
		if err := c.onSignal(imm); err != nil {
			c.Fail(err)
			return err
		}
	}
	return nil
}

func (c *RingConn) poll() ([]uint32, error) {
	// Poll writes into the spare capacity of the slice it is given and
	// says how much it wrote (link.go).
	n, err := c.link.Poll(c.imms[:0])
	if err != nil {
		return nil, fmt.Errorf("rdma: polling the link: %w", err)
	}
	if n < 0 || n > cap(c.imms) {
		return nil, fmt.Errorf("rdma: the link's Poll returned %d signals into room for %d", n, cap(c.imms))
	}
	c.imms = c.imms[:n]
	return c.imms, nil
}

func (c *RingConn) onSignal(imm uint32) error {
	switch imm >> signalShift {
	case signalTail:
		t := reconstruct(c.tailSeen, imm&signalMask)
		if t-c.consHead > uint64(len(c.recvRing)) {
			return fmt.Errorf("%w: the peer's producer cursor %d is %d bytes past this side's consumer cursor %d, beyond the %d-byte ring", ErrProtocol, t, t-c.consHead, c.consHead, len(c.recvRing))
		}
		if t%ring.RecordAlignBytes != 0 {
			return fmt.Errorf("%w: the peer's producer cursor %d is not a multiple of %d", ErrProtocol, t, ring.RecordAlignBytes)
		}
		if !c.helloChecked {
			if err := checkHello(c.local[helloOff:helloOff+helloBytes], len(c.recvRing), c.localGen); err != nil {
				return err
			}
			c.helloChecked = true
		}
		c.tailSeen = t
		c.sinceWBSigs++
	case signalHead:
		seen := c.headSeen.Load()
		h := reconstruct(seen, imm&signalMask)
		if tail := c.prodTail.Load(); h > tail {
			return fmt.Errorf("%w: the peer's consumer cursor %d is past this side's producer cursor %d: it says it consumed records never sent", ErrProtocol, h, tail)
		}
		c.headSeen.Store(h)
	default:
		return fmt.Errorf("%w: signal %#08x has unknown kind %d", ErrProtocol, imm, imm>>signalShift)
	}
	return nil
}

// consume delivers the records between consHead and tailSeen, checking
// each header (read once, into a local) before using it.
func (c *RingConn) consume(fn func(transport.Type, transport.Flags, []byte)) (int, error) {
	capacity := uint64(len(c.recvRing))
	frames := 0
	for c.consHead < c.tailSeen {
		off := c.consHead & c.recvMask
		l := uint64(binary.LittleEndian.Uint32(c.recvRing[off:]))
		if l == ring.WrapMarker {
			next := c.consHead + capacity - off
			if next > c.tailSeen {
				return frames, fmt.Errorf("%w: wrap marker at cursor %d, but the peer published only up to %d, before the ring's end", ErrProtocol, c.consHead, c.tailSeen)
			}
			c.consHead = next
			c.sinceWBBytes += capacity - off
			continue
		}
		if l > c.recvMaxRec-ring.RecordHeaderBytes || l < frameHeaderBytes {
			return frames, fmt.Errorf("%w: record at cursor %d claims %d bytes (a frame record holds %d to %d)", ErrProtocol, c.consHead, l, frameHeaderBytes, c.recvMaxRec-ring.RecordHeaderBytes)
		}
		size := uint64(ring.RecordBytes(int(l)))
		if off+size > capacity {
			return frames, fmt.Errorf("%w: record at cursor %d of %d bytes runs past the ring's end (no wrap marker)", ErrProtocol, c.consHead, size)
		}
		if c.consHead+size > c.tailSeen {
			return frames, fmt.Errorf("%w: record at cursor %d of %d bytes runs past the published cursor %d", ErrProtocol, c.consHead, size, c.tailSeen)
		}
		rec := c.recvRing[off : off+size]
		typ, flags := transport.Type(rec[4]), transport.Flags(rec[5])
		if rec[6] != 0 || rec[7] != 0 || !typ.User() || transport.LaneOf(typ) != transport.LaneControl || flags&^transport.KnownFlags != 0 {
			return frames, fmt.Errorf("%w: record at cursor %d has frame header % x: not a control-lane frame (type %s, flags %#02x)", ErrProtocol, c.consHead, rec[4:8], typ, uint8(flags))
		}
		fn(typ, flags, rec[8:4+l])
		frames++
		c.consHead += size
		c.sinceWBBytes += size
	}
	if frames > 0 {
		c.framesRecv.Add(uint64(frames))
	}
	if frames > 0 && (c.sinceWBBytes >= capacity/writebackEveryDivisor || c.sinceWBSigs >= writebackEverySignals) {
		c.sinceWBBytes, c.sinceWBSigs = 0, 0
		c.wantWB.Store(c.consHead)
		if c.mu.TryLock() {
			c.flushWriteback()
			c.mu.Unlock()
		}
	}
	return frames, nil
}

// Pending reports whether the ring holds published records not yet
// delivered (delivery not enabled yet, or Receive not called since).
func (c *RingConn) Pending() bool { return c.consHead < c.tailSeen }

// Wait blocks until a signal may have arrived or timeout passes
// (Link.Wait); for the receiving goroutine.
func (c *RingConn) Wait(timeout time.Duration) error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.Pending() && c.deliver.Load() {
		return nil
	}
	return c.link.Wait(timeout)
}

// Close fails the connection and closes the link once no sender and no
// receiver is inside it: after Close returns, no call touches the link's
// memory (each checks Err under its lock first).
func (c *RingConn) Close() error {
	c.Fail(fmt.Errorf("%w: the ring connection was closed", transport.ErrLaneDown))
	c.mu.Lock()
	c.rmu.Lock()
	err := c.link.Close()
	c.rmu.Unlock()
	c.mu.Unlock()
	return err
}
