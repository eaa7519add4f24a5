package tcpfallback

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/ring"
)

// errReplaced ends a listener's connection when the peer opens a new one for
// the same lane (it saw the loss first and reconnected).
var errReplaced = errors.New("tcpfallback: replaced by a newer connection from the peer")

// HeartbeatTimeoutError: a lane heard nothing for longer than the timeout.
type HeartbeatTimeoutError struct {
	Lane    Lane
	Peer    string
	Silent  time.Duration // how long nothing arrived, as the watchdog saw it
	Timeout time.Duration
}

func (e *HeartbeatTimeoutError) Error() string {
	return fmt.Sprintf("tcpfallback: %s lane: nothing received from %s for %v (heartbeat timeout %v): peer dead, stalled or cut off",
		e.Lane, e.Peer, e.Silent.Round(time.Millisecond), e.Timeout)
}

// Transport carries frames to one peer over two TCP connections (lanes).
// Create it with Dial on one host and Listen on the other; after set-up
// both ends are alike. All methods are safe for concurrent use.
type Transport struct {
	cfg    Config
	addr   string       // dialer: the listener's address
	ln     net.Listener // listener only
	tlsCfg *tls.Config  // dialer: with ServerName filled in
	lanes  [LaneCount]*lane
	stats  transportStats

	watchdog watchdogState
	watch    watchState // the watchdog's schedule for this transport
	// hbTimeout overrides cfg.HeartbeatTimeout when positive (ns;
	// SetHeartbeatTimeout).
	hbTimeout atomic.Int64

	mu          sync.Mutex // guards closed, events (sends and close), stateCh, pending
	closed      bool
	events      chan Event
	stateCh     chan struct{}              // closed and replaced when a lane goes up or down
	pending     map[net.Conn]*pendingSetUp // accepted connections in set-up
	pendingGone *sync.Cond                 // on mu: a set-up ended, or Close

	closedCh      chan struct{}  // closed by Close; select on it to stop
	goroutines    sync.WaitGroup // every goroutine the transport starts; Add before Dial/Listen return, later only under mu while not closed
	closeOnce     sync.Once
	closeFinished chan struct{} // closed when Close has finished, for concurrent Close calls
}

// lane is one of the two connections' worth of state.
type lane struct {
	t   *Transport
	id  Lane
	wmu sync.Mutex // serializes writes: held for the whole of one frame or span
	// heartbeating: the watchdog holds wmu for a heartbeat (TrySend waits
	// for it, briefly).
	heartbeating atomic.Bool

	cur     atomic.Pointer[laneConn] // the live connection, or nil; swapped by install/connDied
	lastErr atomic.Pointer[error]    // why the last connection died
	stats   laneStats
}

func newTransport(cfg Config) *Transport {
	t := &Transport{
		cfg:           cfg,
		closedCh:      make(chan struct{}),
		events:        make(chan Event, cfg.EventQueueLen),
		stateCh:       make(chan struct{}),
		pending:       make(map[net.Conn]*pendingSetUp),
		closeFinished: make(chan struct{}),
	}
	t.pendingGone = sync.NewCond(&t.mu)
	for i := range t.lanes {
		t.lanes[i] = &lane{t: t, id: Lane(i)}
	}
	return t
}

// Dial connects both lanes to a listener at addr (host:port) and keeps them
// connected: a lost lane is reported on Events and redialed with backoff
// until Close. Dial itself retries only while nothing answers at addr (the
// peer may not be up yet) or the listener's lanes are held by another peer
// (whose connection may be about to be found dead), and until ctx ends; a
// peer that answers and then refuses or fails set-up otherwise is reported
// at once, with the reason.
func Dial(ctx context.Context, addr string, cfg Config) (*Transport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	t := newTransport(cfg)
	t.addr = addr
	if cfg.TLS != nil {
		t.tlsCfg = cfg.TLS
		if t.tlsCfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, fmt.Errorf("tcpfallback: address %q: %w", addr, err)
			}
			t.tlsCfg = t.tlsCfg.Clone()
			t.tlsCfg.ServerName = host
		}
	}
	for _, l := range t.lanes {
		c, err := t.connectFirst(ctx, l)
		if err != nil {
			t.Close()
			return nil, err
		}
		l.install(c) // a dialer's install never refuses
	}
	for _, l := range t.lanes {
		t.goroutines.Add(1)
		go func() {
			defer t.goroutines.Done()
			t.supervise(l)
		}()
	}
	t.startWatchdog()
	return t, nil
}

// Listen accepts connections from one dialing peer at addr (host:port;
// port 0 picks one, see Addr). It returns at once; lanes come up as the
// peer connects (see WaitConnected and Events). A connection that fails
// set-up is dropped, counted and reported as EventPeerRejected while the
// listener goes on serving. A new connection for a lane replaces the old one
// only if it comes from the same peer (see Config.PeerNames).
func Listen(addr string, cfg Config) (*Transport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	t := newTransport(cfg)
	// Accepted sockets inherit the listener's buffer sizes, and the TCP
	// window scale is fixed at the SYN, so the listener gets the larger
	// (bulk) size; the control lane is set to its own size after set-up.
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return tuneSocket(rc, max(cfg.socketBufferBytes(LaneControl), cfg.socketBufferBytes(LaneBulk)), false)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tcpfallback: listening on %s: %w", addr, err)
	}
	t.ln = ln
	t.goroutines.Add(1)
	go func() {
		defer t.goroutines.Done()
		t.acceptLoop()
	}()
	t.startWatchdog()
	return t, nil
}

// Addr is the listening address (listener) or the dialed address (dialer).
func (t *Transport) Addr() string {
	if t.ln != nil {
		return t.ln.Addr().String()
	}
	return t.addr
}

// Events reports lane changes and set-up failures. It is closed by Close.
// The channel is bounded (Config.EventQueueLen); events that find it full
// are dropped and counted in Stats.EventsDropped, so read it promptly.
func (t *Transport) Events() <-chan Event { return t.events }

func (t *Transport) emit(e Event) {
	e.Time = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	select {
	case t.events <- e:
	default:
		t.stats.eventsDropped.Add(1)
	}
}

func (t *Transport) notifyState() {
	t.mu.Lock()
	close(t.stateCh)
	t.stateCh = make(chan struct{})
	t.mu.Unlock()
}

// WaitConnected waits until both lanes have a connection.
func (t *Transport) WaitConnected(ctx context.Context) error {
	for {
		t.mu.Lock()
		ch, closed := t.stateCh, t.closed
		t.mu.Unlock()
		if closed {
			return ErrClosed
		}
		if t.lanes[LaneControl].cur.Load() != nil && t.lanes[LaneBulk].cur.Load() != nil {
			return nil
		}
		select {
		case <-ch:
		case <-t.closedCh:
		case <-ctx.Done():
			return fmt.Errorf("tcpfallback: waiting for the peer to connect both lanes: %w", ctx.Err())
		}
	}
}

// Send sends one frame on the lane its type belongs to (LaneOf). It returns
// once the frame is in the kernel's socket buffer; payload may be reused
// then. It does not wait for the peer and does not retry: if the lane is
// down it fails with an error wrapping ErrLaneDown. It waits for room in
// the socket's buffer at most Config.SendTimeout; then the connection is
// treated as lost and the error wraps ErrLaneDown. Code that must not wait
// at all (a reader acknowledging from OnFrame) uses TrySend.
func (t *Transport) Send(typ Type, payload []byte) error {
	return t.SendFlags(typ, 0, payload)
}

// SendFlags is Send with frame flags (FlagFinal).
func (t *Transport) SendFlags(typ Type, flags Flags, payload []byte) error {
	if !typ.User() {
		return fmt.Errorf("tcpfallback: frame type %s cannot be sent by a user (use TypeLog..TypeCheckpoint)", typ)
	}
	if flags&^KnownFlags != 0 {
		return fmt.Errorf("tcpfallback: unknown flags %#02x", uint8(flags))
	}
	l := t.lanes[LaneOf(typ)]
	l.wmu.Lock()
	return l.sendLocked(typ, flags, payload, false)
}

// TrySend is Send that never waits: when the lane's writer is busy (another
// send holds it) or the socket's send buffer has no room for the frame, it
// sends nothing and returns ErrWouldBlock, and the caller sends the frame
// later, in order, from a goroutine that may wait. A lane reader sends from
// OnFrame with it: a reader that waits for room in its socket reads
// nothing meanwhile, and if the peer's reader waits the same way for room
// in the other direction, neither ever reads again.
func (t *Transport) TrySend(typ Type, payload []byte) error {
	if !typ.User() {
		return fmt.Errorf("tcpfallback: frame type %s cannot be sent by a user (use TypeLog..TypeCheckpoint)", typ)
	}
	l := t.lanes[LaneOf(typ)]
	if !l.tryLock() {
		return ErrWouldBlock
	}
	return l.sendLocked(typ, 0, payload, true)
}

// heartbeatWaitMax bounds how long TrySend waits for a heartbeat that
// holds the lane: a heartbeat is one write of 16 bytes that never waits
// for room, so it ends in microseconds unless its thread was stopped, and
// an acknowledgement that gave way to every heartbeat (one a millisecond)
// would go by the slow path far more often than a busy lane's sends make
// it.
const heartbeatWaitMax = 50 * time.Microsecond

// tryLock takes wmu if it is free, or as soon as a heartbeat that holds it
// is done (within heartbeatWaitMax).
func (l *lane) tryLock() bool {
	if l.wmu.TryLock() {
		return true
	}
	if !l.heartbeating.Load() {
		return false
	}
	deadline := time.Now().Add(heartbeatWaitMax)
	for l.heartbeating.Load() && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	return l.wmu.TryLock()
}

// sendLocked sends one frame with l.wmu held, and unlocks it. With try
// it sends nothing and returns ErrWouldBlock unless the frame fits in the
// socket's send buffer now.
func (l *lane) sendLocked(typ Type, flags Flags, payload []byte, try bool) error {
	c := l.cur.Load()
	if c == nil {
		l.wmu.Unlock()
		return l.downError()
	}
	if uint32(len(payload)) > c.peerMaxPayload || len(payload) > maxPayloadLimitBytes {
		l.wmu.Unlock()
		return fmt.Errorf("tcpfallback: %s payload of %d bytes exceeds the peer's maximum of %d; split it (checkpoints go in chunks)", typ, len(payload), c.peerMaxPayload)
	}
	if try && !c.roomFor(HeaderBytes+len(payload)) {
		l.wmu.Unlock()
		return ErrWouldBlock
	}
	err := c.writeFrame(typ, flags, payload)
	l.wmu.Unlock()
	return l.wrote(c, err, 1, HeaderBytes+len(payload))
}

// wrote accounts for a write of frames frames and bytes bytes on c that
// ended with err (wmu already let go): a failed one takes the connection
// down and says so, wrapping ErrLaneDown.
func (l *lane) wrote(c *laneConn, err error, frames, bytes int) error {
	if err != nil {
		err = fmt.Errorf("%w: %s lane: sending to %s: %w", ErrLaneDown, l.id, c.peer, c.writeError(err))
		c.fail(err)
		return err
	}
	c.markSent()
	l.stats.framesSent.Add(uint64(frames))
	l.stats.bytesSent.Add(uint64(bytes))
	return nil
}

// SendBatch sends frames, all of one lane, in order and together: one
// write where Send makes one per frame (under TLS one record per 16 KiB,
// on a plain lane one write(2) or writev), so that all the frames a
// caller has at one moment (the agent: what one Ready sends) cost one
// system call and one wake-up of the peer's reader. It waits for nothing
// but room in the socket, as Send does, and never for more frames. It
// returns how many frames went: all, or none with the error (a frame the
// peer does not take is refused before anything is sent; a lane lost in
// the middle counts as none sent, as Send's loss does).
func (t *Transport) SendBatch(frames []OutFrame) (int, error) { return t.sendBatch(frames, false) }

// TrySendBatch is SendBatch that never waits, as TrySend: when the lane's
// writer is busy or the socket has no room for the whole batch it sends
// nothing and returns 0 and ErrWouldBlock.
func (t *Transport) TrySendBatch(frames []OutFrame) (int, error) { return t.sendBatch(frames, true) }

func (t *Transport) sendBatch(frames []OutFrame, try bool) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	ln := LaneOf(frames[0].Type)
	total := 0
	for _, f := range frames {
		if !f.Type.User() {
			return 0, fmt.Errorf("tcpfallback: frame type %s cannot be sent by a user (use TypeLog..TypeCheckpoint)", f.Type)
		}
		if f.Flags&^KnownFlags != 0 {
			return 0, fmt.Errorf("tcpfallback: unknown flags %#02x", uint8(f.Flags))
		}
		if LaneOf(f.Type) != ln {
			return 0, fmt.Errorf("tcpfallback: a batch goes on one lane: %s frames on the %s lane, %s on the %s lane", frames[0].Type, ln, f.Type, LaneOf(f.Type))
		}
		total += HeaderBytes + len(f.Payload)
	}
	l := t.lanes[ln]
	if try {
		if !l.tryLock() {
			return 0, ErrWouldBlock
		}
	} else {
		l.wmu.Lock()
	}
	c := l.cur.Load()
	if c == nil {
		l.wmu.Unlock()
		return 0, l.downError()
	}
	for _, f := range frames {
		if uint32(len(f.Payload)) > c.peerMaxPayload || len(f.Payload) > maxPayloadLimitBytes {
			l.wmu.Unlock()
			return 0, fmt.Errorf("tcpfallback: %s payload of %d bytes exceeds the peer's maximum of %d; split it (checkpoints go in chunks)", f.Type, len(f.Payload), c.peerMaxPayload)
		}
	}
	if try && !c.roomFor(total) {
		l.wmu.Unlock()
		return 0, ErrWouldBlock
	}
	err := c.writeBatch(frames, total)
	l.wmu.Unlock()
	if err := l.wrote(c, err, len(frames), total); err != nil {
		return 0, err
	}
	return len(frames), nil
}

// SendLinkSetup sends one link-setup frame (TypeLinkSetup) on the control
// lane, for the peer's Config.OnLinkSetup: package rdma sets its ring up
// this way, over the connection this transport has authenticated, so that
// no value of the set-up reaches an unauthenticated peer. It behaves as
// Send.
func (t *Transport) SendLinkSetup(payload []byte) error {
	l := t.lanes[LaneControl]
	l.wmu.Lock()
	return l.sendLocked(TypeLinkSetup, 0, payload, false)
}

// DropLane closes lane's current connection with err as the reason, as if
// it had failed: EventLaneDown is reported, sends fail with ErrLaneDown,
// the peer sees the connection close, and a dialer reconnects. Package
// rdma drops the control lane when its ring breaks (a peer that wrote
// outside the protocol), so that both hosts start again from a fresh
// connection; the agent drops the lane a frame that is not a protocol
// message came on. Nothing more is delivered from the connection, not
// even frames already received: DropLane may be called from OnFrame. It
// returns the peer's address, or "" (doing nothing) if the lane has no
// connection.
func (t *Transport) DropLane(l Lane, err error) (peer string) {
	if int(l) >= LaneCount {
		return ""
	}
	if c := t.lanes[l].cur.Load(); c != nil {
		c.fail(err)
		return c.peer
	}
	return ""
}

// SendSpan sends every record of span, a run of whole records in the byte
// ring's layout (4-byte little-endian length, payload, zero padding to 8
// bytes), as one frame of type typ each, in order. Payload bytes are not
// copied: the frame headers and the payload slices go to the kernel in one
// writev per maxBatchFrames frames. The span is checked whole first:
// malformed (a *ring.MalformedError from ring.ForEachRecord) or holding a
// record larger than the peer accepts (*SpanError), none of it is sent. It
// returns the number of frames sent.
func (t *Transport) SendSpan(typ Type, span []byte) (int, error) {
	if !typ.User() {
		return 0, fmt.Errorf("tcpfallback: frame type %s cannot be sent by a user (use TypeLog..TypeCheckpoint)", typ)
	}
	l := t.lanes[LaneOf(typ)]
	l.wmu.Lock()
	c := l.cur.Load()
	if c == nil {
		l.wmu.Unlock()
		return 0, l.downError()
	}
	if _, err := checkSpan(span, c.peerMaxPayload); err != nil {
		l.wmu.Unlock()
		return 0, err
	}
	frames, err := c.writeSpan(typ, span)
	l.wmu.Unlock()
	if err := l.wrote(c, err, frames, len(span)+frames*(HeaderBytes-ring.RecordHeaderBytes)); err != nil {
		return 0, err
	}
	return frames, nil
}

func (l *lane) downError() error {
	if p := l.lastErr.Load(); p != nil {
		return fmt.Errorf("%w: %s lane (last loss: %v)", ErrLaneDown, l.id, *p)
	}
	l.t.mu.Lock()
	closed := l.t.closed
	l.t.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return fmt.Errorf("%w: %s lane has not connected yet", ErrLaneDown, l.id)
}

// install makes c the lane's connection and starts its reader. On a
// listener it refuses (closes c and returns why) a connection from another
// peer than the one connected now: a set-up that raced with another.
func (l *lane) install(c *laneConn) error {
	t := l.t
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.raw.Close()
		return nil
	}
	if t.ln != nil {
		if reason := t.holderConflict(c.peerID); reason != "" {
			t.mu.Unlock()
			c.raw.Close()
			return &refusedError{retry: true, reason: reason}
		}
	}
	old := l.cur.Swap(c)
	t.goroutines.Add(1)
	t.mu.Unlock()
	if old != nil {
		old.fail(errReplaced)
	}
	l.stats.connects.Add(1)
	t.emit(Event{Kind: EventLaneUp, Lane: l.id, Peer: c.peer})
	t.notifyState()
	go func() {
		defer t.goroutines.Done()
		c.readLoop()
	}()
	return nil
}

// holderConflict returns why a connection from peer p may not be
// installed on a listener, or "": while any lane is connected to one peer,
// only that same peer may replace a connection (it saw the loss first and
// reconnected); anyone else, though authenticated, would take the lanes
// from an in-step secondary. t.mu must be held (install swaps lanes under
// it).
func (t *Transport) holderConflict(p peerIdentity) string {
	for _, l := range t.lanes {
		if c := l.cur.Load(); c != nil && c.peerID.key() != p.key() {
			return fmt.Sprintf("this host's %s lane is connected to peer %s; a connection from peer %s never replaces it (it may once that connection is lost)", l.id, c.peerID, p)
		}
	}
	return ""
}

// connDied is called once per connection, by laneConn.fail.
func (l *lane) connDied(c *laneConn, err error) {
	if !l.cur.CompareAndSwap(c, nil) {
		// Already replaced: the new connection is the lane now.
		if err != errReplaced {
			return
		}
	}
	l.lastErr.Store(&err)
	l.stats.losses.Add(1)
	l.t.emit(Event{Kind: EventLaneDown, Lane: l.id, Peer: c.peer, Err: err})
	l.t.notifyState()
}

// newConn wraps an authenticated connection.
func (t *Transport) newConn(l *lane, raw net.Conn, sock *sockConn, res handshakeResult) (*laneConn, error) {
	c, err := newLaneConn(l, raw, sock, res.peerMaxPayload, res.leftover)
	if err != nil {
		raw.Close()
		return nil, err
	}
	size := controlRecvBufferBytes
	if l.id == LaneBulk {
		size = HeaderBytes + int(min(t.cfg.MaxPayloadBytes, 1<<20)) + minReadRoomBytes
	}
	c.rbuf = make([]byte, max(size, len(res.leftover)+minReadRoomBytes))
	return c, nil
}

// connectError: nothing answered at the address (connection refused,
// unreachable, timeout before TCP was up). Worth retrying at first dial.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// dialLane opens, authenticates and sets up one lane's connection.
func (t *Transport) dialLane(ctx context.Context, l *lane) (*laneConn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	defer cancel()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return tuneSocket(rc, t.cfg.socketBufferBytes(l.id), t.cfg.BusyPoll > 0 && l.id == LaneControl)
	}}
	nc, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, &connectError{fmt.Errorf("tcpfallback: %s lane: connecting to %s: %w", l.id, t.addr, err)}
	}
	tcp := nc.(*net.TCPConn)
	sock, err := newSockConn(tcp)
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("tcpfallback: %s lane: connection to %s: %w", l.id, t.addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		tcp.SetDeadline(dl)
	}
	raw := net.Conn(sock)
	if t.tlsCfg != nil {
		tc := tls.Client(sock, t.tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			tcp.Close()
			t.stats.handshakeFailures.Add(1)
			return nil, fmt.Errorf("tcpfallback: %s lane: TLS set-up with %s: %w (both hosts need certificates from the same CA, and the listener's must name the host dialed; see `ftvm certs`)", l.id, t.addr, err)
		}
		raw = tc
	}
	params := t.cfg.handshakeParams(l.id)
	var id peerIdentity
	params.checkPeer = func(name string) (string, bool) {
		id = identityOf(raw, name)
		return t.cfg.checkAllowed(id), false
	}
	res, err := dialerHandshake(raw, params)
	if err != nil {
		raw.Close()
		t.stats.handshakeFailures.Add(1)
		return nil, fmt.Errorf("tcpfallback: %s lane: set-up with %s: %w", l.id, t.addr, err)
	}
	tcp.SetDeadline(time.Time{})
	c, err := t.newConn(l, raw, sock, res)
	if c != nil {
		c.peerID = id
	}
	return c, err
}

// backoff returns the delay before reconnection attempt n (from 0):
// exponential from ReconnectMinDelay, capped at ReconnectMaxDelay, drawn
// uniformly from the upper half so that peers that failed together do not
// retry in step.
func (t *Transport) backoff(n int) time.Duration {
	d := t.cfg.ReconnectMinDelay
	for i := 0; i < n && d < t.cfg.ReconnectMaxDelay; i++ {
		d *= 2
	}
	d = min(d, t.cfg.ReconnectMaxDelay)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until Close; false means closed.
func (t *Transport) sleep(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-t.closedCh:
		return false
	}
}

func (t *Transport) connectFirst(ctx context.Context, l *lane) (*laneConn, error) {
	for attempt := 0; ; attempt++ {
		c, err := t.dialLane(ctx, l)
		if err == nil {
			return c, nil
		}
		var ce *connectError
		var re *refusedError
		// Nothing answers yet, or another peer holds the listener's
		// lanes for now (its connection may be about to be found dead).
		busy := errors.As(err, &re) && re.retry
		if !errors.As(err, &ce) && !busy || ctx.Err() != nil {
			return nil, err
		}
		delay := t.backoff(attempt)
		t.emit(Event{Kind: EventConnectFailed, Lane: l.id, Peer: t.addr, Err: err, Attempt: attempt + 1, Delay: delay})
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		}
	}
}

// supervise redials a dialer's lane each time its connection dies.
func (t *Transport) supervise(l *lane) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-t.closedCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		c := l.cur.Load()
		if c != nil {
			select {
			case <-c.done:
			case <-t.closedCh:
				return
			}
		}
		for attempt := 0; ; attempt++ {
			if t.cfg.ReconnectMaxAttempts > 0 && attempt >= t.cfg.ReconnectMaxAttempts {
				t.emit(Event{Kind: EventGaveUp, Lane: l.id, Peer: t.addr, Attempt: attempt,
					Err: fmt.Errorf("tcpfallback: %s lane: gave up after %d attempts (ReconnectMaxAttempts)", l.id, attempt)})
				return
			}
			delay := t.backoff(attempt)
			if !t.sleep(delay) {
				return
			}
			nc, err := t.dialLane(ctx, l)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				t.emit(Event{Kind: EventConnectFailed, Lane: l.id, Peer: t.addr, Err: err, Attempt: attempt + 1, Delay: t.backoff(attempt + 1)})
				continue
			}
			l.install(nc) // a dialer's install never refuses
			break
		}
	}
}

// pendingSetUp is an accepted connection in set-up.
type pendingSetUp struct {
	accepted time.Time
	evicted  bool // closed to make room for a newer one
}

func (t *Transport) acceptLoop() {
	for {
		// While evicted set-ups are still unwinding, leave new
		// connections in the kernel's accept queue rather than drop them:
		// the right peer may be among them.
		t.mu.Lock()
		for len(t.pending) >= 2*maxPendingHandshakes && !t.closed {
			t.pendingGone.Wait()
		}
		t.mu.Unlock()
		nc, err := t.ln.Accept()
		if err != nil {
			t.mu.Lock()
			closed := t.closed
			t.mu.Unlock()
			if closed {
				return
			}
			// Out of file descriptors and the like: say so, breathe, go on.
			t.emit(Event{Kind: EventPeerRejected, Err: fmt.Errorf("tcpfallback: accepting on %s: %w", t.ln.Addr(), err)})
			if !t.sleep(t.cfg.ReconnectMinDelay) {
				return
			}
			continue
		}
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			nc.Close()
			continue
		}
		if t.live() >= maxPendingHandshakes {
			// Make room by closing the oldest set-up: the right peer
			// finishes in a round trip or two, so a flood of silent
			// connections evicts its own members, not the right peer.
			var oldest net.Conn
			for c, p := range t.pending {
				if !p.evicted && (oldest == nil || p.accepted.Before(t.pending[oldest].accepted)) {
					oldest = c
				}
			}
			t.pending[oldest].evicted = true
			oldest.Close()
		}
		t.pending[nc] = &pendingSetUp{accepted: time.Now()}
		t.goroutines.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.goroutines.Done()
			t.serveConn(nc)
			t.mu.Lock()
			delete(t.pending, nc)
			t.pendingGone.Broadcast()
			t.mu.Unlock()
		}()
	}
}

// live counts the set-ups in progress that have not been evicted; mu must
// be held.
func (t *Transport) live() int {
	n := 0
	for _, p := range t.pending {
		if !p.evicted {
			n++
		}
	}
	return n
}

// serveConn sets up one accepted connection and installs it on its lane.
func (t *Transport) serveConn(nc net.Conn) {
	peer := nc.RemoteAddr().String()
	reject := func(err error) {
		t.mu.Lock()
		if p := t.pending[nc]; p != nil && p.evicted {
			err = fmt.Errorf("tcpfallback: set-up with %s evicted after %v: %d newer connections were waiting (maxPendingHandshakes)", peer, time.Since(p.accepted).Round(time.Millisecond), maxPendingHandshakes)
		}
		t.mu.Unlock()
		t.stats.handshakeFailures.Add(1)
		t.emit(Event{Kind: EventPeerRejected, Peer: peer, Err: err})
	}
	tcp, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return
	}
	sock, err := newSockConn(tcp)
	if err != nil {
		tcp.Close()
		reject(fmt.Errorf("tcpfallback: connection from %s: %w", peer, err))
		return
	}
	deadline := time.Now().Add(t.cfg.HandshakeTimeout)
	tcp.SetDeadline(deadline)
	raw := net.Conn(sock)
	if t.cfg.TLS != nil {
		tc := tls.Server(sock, t.cfg.TLS)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			tcp.Close()
			reject(fmt.Errorf("tcpfallback: TLS set-up with %s: %w", peer, err))
			return
		}
		raw = tc
	}
	params := t.cfg.handshakeParams(LaneControl)
	var id peerIdentity
	params.checkPeer = func(name string) (string, bool) {
		id = identityOf(raw, name)
		if reason := t.cfg.checkAllowed(id); reason != "" {
			return reason, false
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		reason := t.holderConflict(id)
		return reason, reason != ""
	}
	res, err := listenerHandshake(raw, params)
	if err != nil {
		raw.Close()
		reject(fmt.Errorf("tcpfallback: set-up with %s: %w", peer, err))
		return
	}
	l := t.lanes[res.lane]
	rc, err := tcp.SyscallConn()
	if err == nil {
		err = tuneSocket(rc, t.cfg.socketBufferBytes(l.id), t.cfg.BusyPoll > 0 && l.id == LaneControl)
	}
	if err != nil {
		raw.Close()
		reject(fmt.Errorf("tcpfallback: %s lane: socket options for %s: %w", l.id, peer, err))
		return
	}
	tcp.SetDeadline(time.Time{})
	c, err := t.newConn(l, raw, sock, res)
	if err != nil {
		reject(err)
		return
	}
	c.peerID = id
	if err := l.install(c); err != nil {
		reject(fmt.Errorf("tcpfallback: %s lane: set-up with %s: %w", l.id, peer, err))
	}
}

// Stats returns a snapshot of the counters.
func (t *Transport) Stats() Stats {
	var s Stats
	s.FrameErrors = make(map[string]uint64, len(frameErrorReasons))
	for i, r := range frameErrorReasons {
		s.FrameErrors[r] = t.stats.frameErrors[i].Load()
	}
	s.HandshakeFailures = t.stats.handshakeFailures.Load()
	s.EventsDropped = t.stats.eventsDropped.Load()
	for i, l := range t.lanes {
		ls := &s.Lanes[i]
		ls.FramesSent = l.stats.framesSent.Load()
		ls.BytesSent = l.stats.bytesSent.Load()
		ls.FramesReceived = l.stats.framesReceived.Load()
		ls.BytesReceived = l.stats.bytesReceived.Load()
		ls.HeartbeatsSent = l.stats.heartbeatsSent.Load()
		ls.HeartbeatsReceived = l.stats.heartbeatsReceived.Load()
		ls.HeartbeatTimeouts = l.stats.heartbeatTimeouts.Load()
		ls.Writes = l.stats.writes.Load()
		ls.Reads = l.stats.reads.Load()
		ls.Batches = l.stats.batches.Load()
		ls.Connects = l.stats.connects.Load()
		ls.Losses = l.stats.losses.Load()
		if c := l.cur.Load(); c != nil {
			ls.SocketSendBufferBytes, ls.SocketRecvBufferBytes, _ = socketBuffers(c.rc)
			ls.RTT = socketRTT(c.rc)
		}
	}
	return s
}

// Close closes both lanes and the listener, stops reconnecting, waits for
// the transport's goroutines (including running OnFrame calls, so do not
// call Close from OnFrame) and closes Events.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.closed = true
		close(t.closedCh)
		t.pendingGone.Broadcast()
		pending := make([]net.Conn, 0, len(t.pending))
		for c := range t.pending {
			pending = append(pending, c)
		}
		t.mu.Unlock()
		t.stopWatchdog()
		if t.ln != nil {
			t.ln.Close()
		}
		for _, c := range pending {
			c.Close()
		}
		for _, l := range t.lanes {
			if c := l.cur.Load(); c != nil {
				c.fail(ErrClosed)
			}
		}
		t.goroutines.Wait()
		t.mu.Lock()
		close(t.events)
		t.mu.Unlock()
		close(t.closeFinished)
	})
	<-t.closeFinished
	return nil
}
