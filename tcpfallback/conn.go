package tcpfallback

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/ring"
)

// maxBatchFrames bounds the frames one writev carries: two iovecs a frame
// and the kernel's IOV_MAX of 1024.
const maxBatchFrames = 512

// coalesceMaxBytes: a single Send of a payload up to this size copies it
// behind its header and makes one write(2) of one buffer. Copying 64 bytes
// costs nanoseconds; a second iovec costs more than that in the kernel, and
// acknowledgements and single log entries are this small. Larger payloads,
// and every record of SendSpan, go by writev without a copy. The header
// arena (maxBatchFrames headers) has room for it.
const coalesceMaxBytes = 256

// plainBatchCopyBytes: a batch (SendBatch) of at most this many bytes,
// headers included, on a plain (PSK) lane is copied into one buffer and
// sent by one write(2) of it; a larger one goes by writev without a copy.
const plainBatchCopyBytes = 16 << 10

// tlsStagingBytes is the write buffer under TLS: one full TLS record, so a
// header and a small payload leave in one record and one syscall.
const tlsStagingBytes = 16 << 10

// minReadRoomBytes: when less than this is free at the end of the receive
// buffer, the unread tail is moved to the front before the next read, so
// that each read can take many small frames at once.
const minReadRoomBytes = 16 << 10

// controlRecvBufferBytes is the control lane's initial receive buffer; it
// grows (once per connection) if a frame larger than it arrives.
const controlRecvBufferBytes = 256 << 10

// sendRoomMarginBytes: TrySend sends only when the socket's send buffer has
// this much room beyond the frame, for the kernel's per-packet overhead
// and a TLS record's framing, so that its write never waits.
const sendRoomMarginBytes = 16 << 10

// writeOverheadBytes is what each frame written is counted to cost in the
// send buffer beyond its bytes (a socket buffer's bookkeeping), so that
// the estimate of its room stays below the truth between two looks.
const writeOverheadBytes = 2 << 10

// sendPieceBytes: a frame larger than this is written in pieces of this
// size, each with a fresh deadline, so that SendTimeout bounds a write that
// makes no progress, not a large chunk on a slow link (64 KiB is 5 ms at
// 100 Mbit/s). spanBatchMaxBytes: a span's writev carries at most about
// this much (beyond one record), for the same reason.
const (
	sendPieceBytes    = 64 << 10
	spanBatchMaxBytes = 256 << 10
)

// laneConn is one authenticated TCP connection serving a lane. It dies on the
// first error and is never reused; the lane installs a new one.
type laneConn struct {
	lane *lane
	raw  net.Conn        // what frames are read from and written to (sock, or TLS over it)
	sock *sockConn       // the TCP connection under raw, counting its system calls
	tcp  *net.TCPConn    // sock's
	rc   syscall.RawConn // of tcp; for the spin read
	peer string
	// peerID is who authenticated on this connection (set before install).
	peerID peerIdentity

	// peerMaxPayload is the largest payload the peer accepts (from its hello).
	peerMaxPayload uint32

	// Writer state; lane.wmu must be held.
	sendSeq uint32
	hdrs    []byte      // header arena: maxBatchFrames headers
	iovs    [][]byte    // backing array for iov
	iov     net.Buffers // what one writev sends
	bw      *bufio.Writer
	// wbuf is a plain lane's buffer for a small batch (writeBatch).
	wbuf []byte
	// wdeadline is the socket's write deadline as last set (armWrite).
	wdeadline time.Time
	// sndRoom is a lower bound on the bytes the socket's send buffer
	// still takes without waiting: the kernel's answer when last asked,
	// less what was written since (TrySend).
	sndRoom int

	// Reader state; only the reader goroutine touches it.
	rbuf     []byte
	leftover []byte
	recvSeq  uint32

	// Spin read (Config.BusyPoll): fields the prebuilt closure uses, so that
	// a read allocates nothing.
	spinFor      time.Duration
	spinDeadline time.Time
	spinP        []byte
	spinN        int
	spinErr      error
	spinFn       func(fd uintptr) bool

	// Liveness: set by the data paths (markHeard, markSent), consumed
	// by each watchdog thread, which keeps the rest of its entry.
	watch [watchdogThreadsMax]laneWatch

	failOnce sync.Once
	failed   atomic.Bool   // fail was called: the reader delivers nothing more
	err      error         // why it died; read after done is closed
	done     chan struct{} // closed when the connection is dead and closed
}

func newLaneConn(l *lane, raw net.Conn, sock *sockConn, peerMax uint32, leftover []byte) (*laneConn, error) {
	sock.stats.Store(&l.stats)
	c := &laneConn{
		lane:           l,
		raw:            raw,
		sock:           sock,
		tcp:            sock.TCPConn,
		rc:             sock.rc,
		peer:           sock.RemoteAddr().String(),
		peerMaxPayload: peerMax,
		hdrs:           make([]byte, maxBatchFrames*HeaderBytes),
		iovs:           make([][]byte, 0, 2*maxBatchFrames),
		leftover:       append([]byte(nil), leftover...),
		done:           make(chan struct{}),
	}
	for k := range c.watch {
		lw := &c.watch[k]
		lw.inqFn = func(fd uintptr) { lw.inqN = unreadBytes(fd) }
	}
	if _, isTLS := raw.(*tls.Conn); isTLS {
		c.bw = bufio.NewWriterSize(raw, tlsStagingBytes)
	} else if l.t.cfg.BusyPoll > 0 && l.id == LaneControl {
		c.spinFor = l.t.cfg.BusyPoll
		c.spinFn = c.spinRead
	}
	return c, nil
}

// fail closes the connection once, recording why. Safe from any goroutine.
func (c *laneConn) fail(err error) {
	c.failOnce.Do(func() {
		c.failed.Store(true)
		c.err = err
		c.raw.Close()
		close(c.done)
		c.lane.connDied(c, err)
	})
}

// armWrite makes sure the socket's write deadline is between 7/8 of
// SendTimeout and all of it away, so that a write that cannot finish in
// time fails. Moving a deadline costs a runtime timer update, so a lane
// that writes more often than every SendTimeout/8 moves it only that
// often. lane.wmu must be held.
func (c *laneConn) armWrite() { c.armWriteFor(c.lane.t.cfg.SendTimeout / 8) }

// armWriteFor is armWrite that moves the deadline when less than
// SendTimeout-slack is left; zero slack moves it every time.
func (c *laneConn) armWriteFor(slack time.Duration) {
	timeout := c.lane.t.cfg.SendTimeout
	now := time.Now()
	if c.wdeadline.Sub(now) <= timeout-slack {
		c.wdeadline = now.Add(timeout)
		c.tcp.SetWriteDeadline(c.wdeadline)
	}
}

// roomFor reports whether n more bytes go into the socket's send buffer
// without waiting, asking the kernel only when the estimate says no.
// lane.wmu must be held.
func (c *laneConn) roomFor(n int) bool {
	need := n + sendRoomMarginBytes
	if c.sndRoom >= need {
		return true
	}
	free, err := sendBufferFree(c.rc)
	if err != nil {
		return false
	}
	c.sndRoom = free
	return free >= need
}

// writeError says what a failed write means when it ran out of time.
func (c *laneConn) writeError(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("a write could not finish within SendTimeout %v: the peer is stalled or not reading: %w", c.lane.t.cfg.SendTimeout, err)
	}
	return err
}

// writeFrame sends one frame; lane.wmu must be held.
func (c *laneConn) writeFrame(typ Type, flags Flags, payload []byte) error {
	c.armWrite()
	c.sndRoom -= HeaderBytes + len(payload) + writeOverheadBytes
	hdr := c.hdrs[:HeaderBytes]
	putHeader(hdr, typ, flags, c.sendSeq, payload)
	c.sendSeq++
	if len(payload) > sendPieceBytes {
		return c.writeLarge(hdr, payload)
	}
	if c.bw != nil {
		c.bw.Write(hdr)
		c.bw.Write(payload)
		return c.bw.Flush()
	}
	if len(payload) <= coalesceMaxBytes {
		_, err := c.sock.Write(append(hdr, payload...))
		return err
	}
	c.iov = append(c.iovs[:0], hdr, payload)
	c.sock.countWrite()
	_, err := c.iov.WriteTo(c.tcp)
	return err
}

// writeBatch sends frames, all of one lane, with as few system calls as
// it can: under TLS staged into one record (16 KiB) and one write per
// record, on a plain lane copied into one buffer and written once (at
// most plainBatchCopyBytes) or by writev, maxBatchFrames to a call. A
// batch holding a frame larger than sendPieceBytes goes frame by frame,
// each large one in pieces with fresh deadlines (writeLarge). total is
// the batch's bytes, headers included. lane.wmu must be held.
func (c *laneConn) writeBatch(frames []OutFrame, total int) error {
	for _, f := range frames {
		if len(f.Payload) > sendPieceBytes {
			for _, f := range frames {
				if err := c.writeFrame(f.Type, f.Flags, f.Payload); err != nil {
					return err
				}
			}
			return nil
		}
	}
	c.armWrite()
	c.sndRoom -= total + writeOverheadBytes
	if c.bw != nil {
		for _, f := range frames {
			hdr := c.hdrs[:HeaderBytes]
			putHeader(hdr, f.Type, f.Flags, c.sendSeq, f.Payload)
			c.sendSeq++
			c.armWrite() // the staging buffer writes whenever it fills
			c.bw.Write(hdr)
			c.bw.Write(f.Payload)
		}
		return c.bw.Flush()
	}
	if total <= plainBatchCopyBytes {
		b := c.wbuf[:0]
		for _, f := range frames {
			b = appendFrame(b, f.Type, f.Flags, c.sendSeq, f.Payload)
			c.sendSeq++
		}
		c.wbuf = b
		_, err := c.sock.Write(b)
		return err
	}
	for len(frames) > 0 {
		// A writev of at most maxBatchFrames frames and about
		// spanBatchMaxBytes, as a span's, so that SendTimeout bounds a
		// write that makes no progress.
		c.iov = c.iovs[:0]
		n, bytes := 0, 0
		for n < len(frames) && n < maxBatchFrames && bytes < spanBatchMaxBytes {
			f := frames[n]
			hdr := c.hdrs[n*HeaderBytes : (n+1)*HeaderBytes]
			putHeader(hdr, f.Type, f.Flags, c.sendSeq, f.Payload)
			c.sendSeq++
			c.iov = append(c.iov, hdr, f.Payload)
			bytes += HeaderBytes + len(f.Payload)
			n++
		}
		frames = frames[n:]
		c.armWrite()
		c.sock.countWrite()
		if _, err := c.iov.WriteTo(c.tcp); err != nil {
			return err
		}
	}
	return nil
}

// writeLarge writes one large frame in pieces of sendPieceBytes, each with
// a fresh deadline. lane.wmu must be held.
func (c *laneConn) writeLarge(hdr, payload []byte) error {
	for first := true; len(payload) > 0; first = false {
		piece := payload[:min(len(payload), sendPieceBytes)]
		payload = payload[len(piece):]
		c.armWriteFor(0)
		var err error
		switch {
		case c.bw != nil && first:
			c.bw.Write(hdr)
			fallthrough
		case c.bw != nil:
			_, err = c.bw.Write(piece)
		case first:
			c.iov = append(c.iovs[:0], hdr, piece)
			c.sock.countWrite()
			_, err = c.iov.WriteTo(c.tcp)
		default:
			_, err = c.sock.Write(piece)
		}
		if err != nil {
			return err
		}
	}
	if c.bw != nil {
		c.armWriteFor(0)
		return c.bw.Flush()
	}
	return nil
}

// writeSpan frames each record of span, maxBatchFrames to a writev. The span
// has been validated. lane.wmu must be held.
func (c *laneConn) writeSpan(typ Type, span []byte) (frames int, err error) {
	n, batchBytes := 0, 0
	c.iov = c.iovs[:0]
	flush := func() {
		if err != nil || n == 0 {
			return
		}
		batchBytes = 0
		c.armWrite()
		if c.bw != nil {
			err = c.bw.Flush()
		} else {
			c.sock.countWrite()
			_, err = c.iov.WriteTo(c.tcp)
		}
		c.iov = c.iovs[:0]
		n = 0
	}
	ring.ForEachRecord(span, func(payload []byte) error {
		hdr := c.hdrs[n*HeaderBytes : (n+1)*HeaderBytes]
		putHeader(hdr, typ, 0, c.sendSeq, payload)
		c.sendSeq++
		c.sndRoom -= HeaderBytes + len(payload) + writeOverheadBytes
		frames++
		n++
		if c.bw != nil {
			c.armWrite() // the staging buffer writes whenever it fills
			c.bw.Write(hdr)
			c.bw.Write(payload)
		} else {
			c.iov = append(c.iov, hdr, payload)
		}
		if batchBytes += HeaderBytes + len(payload); n == maxBatchFrames || batchBytes >= spanBatchMaxBytes {
			flush()
		}
		return err
	})
	flush()
	return frames, err
}

// read fills p from the connection: a plain blocking read, or with BusyPoll
// a non-blocking read retried for spinFor before parking in the poller.
// Spinning keeps the reader's thread hot and skips the poller wake-up, which
// is most of a loopback round trip; it costs a core while it spins.
func (c *laneConn) read(p []byte) (int, error) {
	if c.spinFn == nil {
		return c.raw.Read(p)
	}
	c.spinP, c.spinN, c.spinErr = p, 0, nil
	c.spinDeadline = time.Time{}
	err := c.rc.Read(c.spinFn)
	c.spinP = nil
	c.sock.countRead()
	if err != nil {
		return 0, err
	}
	return c.spinN, c.spinErr
}

// readNow reads into p what can be had without waiting (errNothingNow:
// nothing): what TLS holds of records already read, else what the socket
// holds now, unless its last read found it empty (sockConn.drained).
func (c *laneConn) readNow(p []byte) (int, error) {
	c.sock.nonblock = true
	n, err := c.raw.Read(p)
	c.sock.nonblock = false
	return n, err
}

// spinChecksPerClock: the spin reads the clock once per this many EAGAINs;
// spinYieldEvery: it yields the processor once per this many.
const (
	spinChecksPerClock = 64
	spinYieldEvery     = 8
)

func (c *laneConn) spinRead(fd uintptr) bool {
	for i := 0; ; i++ {
		n, err := unix.Read(int(fd), c.spinP)
		switch {
		case err == nil && n == 0:
			c.spinErr = io.EOF
			return true
		case err == nil:
			c.spinN = n
			c.sock.drained = n < len(c.spinP)
			return true
		case err == unix.EINTR:
			continue
		case err != unix.EAGAIN:
			c.spinErr = err
			return true
		}
		if i%spinYieldEvery == spinYieldEvery-1 {
			// Let other goroutines waiting for this P run: on a host
			// with few cores the one that will send us data may be
			// among them.
			runtime.Gosched()
		}
		if i%spinChecksPerClock == 0 {
			now := time.Now()
			if c.spinDeadline.IsZero() {
				c.spinDeadline = now.Add(c.spinFor)
			} else if now.After(c.spinDeadline) {
				return false // park until readable; f is called again
			}
		}
	}
}

// readLoop parses frames out of the receive buffer and hands them to
// OnFrame until the first error. Payloads alias the buffer, which is reused:
// no allocation per frame.
//
// With Config.OnBatchEnd set, the frames delivered are Batched: before it
// waits for more, the reader asks for what it can have without waiting
// (readNow) and calls OnBatchEnd once nothing more can be read now, so
// that its user answers the whole batch at once. It never waits for a
// frame to end a batch: a lone frame's batch ends at once.
func (c *laneConn) readLoop() {
	l := c.lane
	t := l.t
	maxPayload := t.cfg.MaxPayloadBytes
	buf := c.rbuf
	w := copy(buf, c.leftover)
	c.leftover = nil
	r := 0
	batched := t.cfg.OnBatchEnd != nil
	inBatch := false // frames delivered since the last OnBatchEnd
	endBatch := func() {
		inBatch = false
		l.stats.batches.Add(1)
		t.cfg.OnBatchEnd(l.id)
	}
	for {
		for {
			h, payload, n, err := parseFrame(buf[r:w], maxPayload, l.id, c.recvSeq, false)
			if err != nil {
				var fe *FrameError
				if errors.As(err, &fe) {
					t.stats.countFrameError(fe.Reason)
				}
				c.fail(err)
				return
			}
			if n == 0 {
				break
			}
			r += n
			c.recvSeq++
			l.stats.framesReceived.Add(1)
			l.stats.bytesReceived.Add(uint64(n))
			if h.typ == TypeHeartbeat {
				l.stats.heartbeatsReceived.Add(1)
				continue
			}
			if h.typ == TypeLinkSetup {
				if t.cfg.OnLinkSetup != nil {
					t.cfg.OnLinkSetup(Frame{Lane: l.id, Type: h.typ, Flags: h.flags, Seq: h.seq, Payload: payload})
				}
				continue
			}
			t.cfg.OnFrame(Frame{Lane: l.id, Type: h.typ, Flags: h.flags, Seq: h.seq, Payload: payload, Batched: batched})
			inBatch = batched
			if c.failed.Load() {
				// Dropped (DropLane, perhaps by OnFrame itself): what
				// else the buffer holds belongs to a dead connection.
				return
			}
		}
		if r == w {
			r, w = 0, 0
		}
		need := HeaderBytes
		if w-r >= HeaderBytes {
			need += int(binaryLE32(buf[r:]))
		}
		if need > len(buf) {
			nb := make([]byte, max(need, min(2*len(buf), HeaderBytes+int(maxPayload))))
			w = copy(nb, buf[r:w])
			r = 0
			buf = nb
			c.rbuf = nb
		} else if len(buf)-r < need || len(buf)-w < minReadRoomBytes {
			w = copy(buf, buf[r:w])
			r = 0
		}
		var m int
		var err error
		if inBatch {
			if m, err = c.readNow(buf[w:]); errors.Is(err, errNothingNow) {
				endBatch()
				if c.failed.Load() {
					return // dropped by OnBatchEnd
				}
				m, err = c.read(buf[w:])
			}
		} else {
			m, err = c.read(buf[w:])
		}
		if m > 0 {
			c.markHeard()
			w += m
		}
		if err != nil {
			if inBatch {
				// What was delivered is answered (the answers go nowhere
				// if the connection is gone, but the user's state moves
				// on as after any batch).
				endBatch()
			}
			if errors.Is(err, io.EOF) {
				if w > r {
					err = fmt.Errorf("tcpfallback: %s lane: peer %s closed the connection in the middle of a frame (%d bytes of it received)", l.id, c.peer, w-r)
				} else {
					err = fmt.Errorf("tcpfallback: %s lane: peer %s closed the connection", l.id, c.peer)
				}
			} else {
				err = fmt.Errorf("tcpfallback: %s lane: reading from %s: %w", l.id, c.peer, err)
			}
			c.fail(err)
			return
		}
	}
}
