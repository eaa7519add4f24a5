package rdma

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/ring"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
)

// Config configures a Transport.
type Config struct {
	// TCP configures the authenticated TCP transport underneath, which
	// carries the bulk lane (checkpoint chunks), the set-up of the ring,
	// the heartbeats that say the peer lives, and the control lane until
	// the ring is up. Its OnFrame receives every frame, from TCP or from
	// the ring; its OnLinkSetup must be nil (the Transport takes it).
	TCP tcpfallback.Config
	// Provider is the one-sided memory the control lane moves to (shm,
	// verbs). Nil: the control lane stays on TCP (and the Transport tells
	// a peer that offers a ring so).
	Provider Provider
	// RingBytes is the size of this side's receive ring: a power of two
	// from MinTransportRingBytes to MaxRingBytes. Zero: DefaultRingBytes.
	RingBytes int
	// WaitSpin is how long the poller spins on the ring before it blocks
	// in Link.Wait. Zero: DefaultWaitSpin; negative: it never spins.
	WaitSpin time.Duration
	// NoPoller starts no poller goroutine: frames are delivered only by
	// Poll, which the owner must then call often enough (a thread that
	// spins on it, as the round-trip benchmark's primary does). An idle
	// owner that stops calling it would let the peer's ring fill.
	NoPoller bool
	// Logger says which transport the control lane uses and why. Nil:
	// slog.Default().
	Logger *slog.Logger
}

// MinTransportRingBytes: the ring must take the largest control-lane
// frame (a log entry of a 64 KiB block write) with room to spare, since
// a record may take at most half the ring.
const MinTransportRingBytes = 256 << 10

// pollerWaitSlice bounds one Link.Wait of the poller, so that it notices
// a teardown.
const pollerWaitSlice = 20 * time.Millisecond

// Transport keeps package transport's contract (transport/doc.go) with the
// control lane in a ring in the peer's memory once both sides have set it
// up, and everything else on the TCP transport underneath. doc.go says how.
// All methods are safe for concurrent use.
type Transport struct {
	cfg     Config
	onFrame func(transport.Frame)
	tcp     *tcpfallback.Transport
	log     *slog.Logger

	events        chan transport.Event
	eventsDropped atomic.Uint64
	setupCh       chan setupMsg
	failCh        chan *generation
	closing       chan struct{}
	pumpDone      chan struct{}
	closeOnce     sync.Once

	// smu orders the control lane's sends: a send goes by TCP or by the
	// ring, and the switch from one to the other happens with smu held,
	// between two sends.
	smu      sync.Mutex
	sendRing *generation // smu held: the generation sent into, or nil (TCP)

	recv atomic.Pointer[generation] // the generation Poll reads, or nil

	stMu sync.Mutex    // guards cur, and its link and rc once set
	cur  *generation   // the current connection's set-up; the pump writes it
	gen  atomic.Uint32 // written by the pump only: the last generation opened

	why        atomic.Pointer[string] // why the control lane is where it is
	ringFrames atomic.Uint64
	// ringSent counts the frames and bytes (records: header, frame header,
	// payload, padding) sent into the peer's rings.
	ringSentFrames, ringSentBytes atomic.Uint64
	// polls counts Poll calls: while it moves, the poller leaves the ring
	// to whoever polls instead of sleeping in Link.Wait, which holds the
	// receiver's lock. A count, not a clock: reading the clock at every
	// Poll cost more than the rest of it.
	polls atomic.Uint64
}

// generation is one TCP control connection's ring: this side's endpoint,
// the link to the peer's, and the ring protocol over it.
type generation struct {
	localGen, peerGen uint32
	ep                Endpoint
	link              Link
	rc                *RingConn
	peerReady         bool // the peer connected to our endpoint
	switched          bool // our sends go into its ring
	delivering        atomic.Bool
	seq               uint32 // the receiver's: the next frame's Seq
	deliverFn         func(transport.Type, transport.Flags, []byte)
	stop              chan struct{}
	stopped           atomic.Bool // set before stop is closed; the poller looks at it
	done              chan struct{}
	failOnce          sync.Once
	// dropped: DropLane dropped the control lane; nothing more in the
	// ring is delivered (the pump tears the generation down).
	dropped atomic.Bool

	// The poller's progress, for the stall watchdog (watchPoller): a
	// count of its loop's turns and what it is doing.
	pollTurns atomic.Uint64
	pollState atomic.Uint32
}

// What the poller is doing (generation.pollState).
const (
	pollerReceiving uint32 = iota // in Receive: polling, or waiting for the receiver's lock
	pollerInOnFrame               // in OnFrame: the frame's user has it
	pollerWaiting                 // in Link.Wait
	pollerNapping                 // in its nap while Poll is active
)

var pollerStateNames = [...]string{"receiving (or waiting for the receiver's lock)", "in OnFrame", "in Link.Wait", "napping while Poll is active"}

// Listen is tcpfallback.Listen with the control lane moved to a ring once
// the peer that connects has set one up.
func Listen(addr string, cfg Config) (*Transport, error) {
	t, err := newTransport(&cfg)
	if err != nil {
		return nil, err
	}
	if t.tcp, err = tcpfallback.Listen(addr, cfg.TCP); err != nil {
		return nil, err
	}
	t.start()
	return t, nil
}

// Dial is tcpfallback.Dial with the control lane moved to a ring once
// both sides have set it up.
func Dial(ctx context.Context, addr string, cfg Config) (*Transport, error) {
	t, err := newTransport(&cfg)
	if err != nil {
		return nil, err
	}
	if t.tcp, err = tcpfallback.Dial(ctx, addr, cfg.TCP); err != nil {
		return nil, err
	}
	t.start()
	return t, nil
}

func newTransport(cfg *Config) (*Transport, error) {
	if cfg.TCP.OnFrame == nil {
		return nil, errors.New("rdma: Config.TCP.OnFrame is nil; every received frame goes there")
	}
	if cfg.TCP.OnLinkSetup != nil {
		return nil, errors.New("rdma: Config.TCP.OnLinkSetup must be nil: the Transport sets its ring up there")
	}
	if cfg.RingBytes == 0 {
		cfg.RingBytes = DefaultRingBytes
	}
	if err := checkRingBytes("the configured", cfg.RingBytes); err != nil {
		return nil, err
	}
	if cfg.RingBytes < MinTransportRingBytes {
		return nil, fmt.Errorf("rdma: Config.RingBytes %d is below %d: the ring must take the largest control-lane frame twice over", cfg.RingBytes, MinTransportRingBytes)
	}
	if cfg.WaitSpin == 0 {
		cfg.WaitSpin = DefaultWaitSpin
	}
	t := &Transport{
		cfg: *cfg, onFrame: cfg.TCP.OnFrame, log: cfg.Logger,
		events:   make(chan transport.Event, max(cfg.TCP.EventQueueLen, tcpfallback.DefaultEventQueueLen)),
		setupCh:  make(chan setupMsg, 64),
		failCh:   make(chan *generation, 4),
		closing:  make(chan struct{}),
		pumpDone: make(chan struct{}),
	}
	if t.log == nil {
		t.log = slog.Default()
	}
	t.setWhy("the ring is not set up yet")
	cfg.TCP.OnLinkSetup = t.onLinkSetup
	return t, nil
}

func (t *Transport) start() {
	go t.pump()
}

func (t *Transport) setWhy(s string) { t.why.Store(&s) }

// Using says which transport carries the control lane now ("shm", "rdma"
// or "tcp") and why.
func (t *Transport) Using() (name, why string) {
	t.smu.Lock()
	g := t.sendRing
	t.smu.Unlock()
	why = *t.why.Load()
	if g != nil && g.delivering.Load() && t.cfg.Provider != nil {
		return t.cfg.Provider.Name(), why
	}
	return "tcp", why
}

// RingUp reports whether the control lane runs over the ring both ways.
func (t *Transport) RingUp() bool {
	name, _ := t.Using()
	return name != "tcp"
}

// Generation counts the rings this side has opened, one per control
// connection (0 with no provider).
func (t *Transport) Generation() uint32 { return t.gen.Load() }

// TCP is the transport underneath (for its Stats, Addr, WaitConnected).
func (t *Transport) TCP() *tcpfallback.Transport { return t.tcp }

// Addr is the TCP transport's address.
func (t *Transport) Addr() string { return t.tcp.Addr() }

// WaitConnected waits until both TCP lanes are up (the control lane
// moves to the ring shortly after; see RingUp).
func (t *Transport) WaitConnected(ctx context.Context) error { return t.tcp.WaitConnected(ctx) }

// Events reports what the TCP transport reports (lanes up and down, set-up
// failures); a broken ring shows as the control lane going down. Closed by
// Close.
func (t *Transport) Events() <-chan transport.Event { return t.events }

func (t *Transport) countRing(err error, payload []byte) {
	if err == nil {
		t.ringSentFrames.Add(1)
		t.ringSentBytes.Add(uint64(ring.RecordBytes(frameHeaderBytes + len(payload))))
	}
}

// RingSent counts the frames, and the bytes of ring they took, sent into
// the peer's rings (the TCP transport's Stats count the rest).
func (t *Transport) RingSent() (frames, bytes uint64) {
	return t.ringSentFrames.Load(), t.ringSentBytes.Load()
}

// RingFrames counts the control-lane frames received over the ring.
func (t *Transport) RingFrames() uint64 { return t.ringFrames.Load() }

// Send implements the contract's Send.
func (t *Transport) Send(typ transport.Type, payload []byte) error {
	return t.SendFlags(typ, 0, payload)
}

// SendFlags implements the contract's SendFlags: control-lane frames go
// into the peer's ring once it is up (waiting for room at most the TCP
// configuration's send timeout), bulk-lane frames by TCP.
func (t *Transport) SendFlags(typ transport.Type, flags transport.Flags, payload []byte) error {
	if !typ.User() || transport.LaneOf(typ) != transport.LaneControl {
		return t.tcp.SendFlags(typ, flags, payload)
	}
	t.smu.Lock()
	defer t.smu.Unlock()
	if g := t.sendRing; g != nil {
		err := g.rc.Send(typ, flags, payload)
		if err != nil && g.rc.Err() != nil {
			t.linkFailed(g)
		}
		t.countRing(err, payload)
		return err
	}
	return t.tcp.SendFlags(typ, flags, payload)
}

// TrySend is the contract's optional TrySend: ErrWouldBlock when the
// lane's sender is busy or the peer's ring (or the socket) has no room.
func (t *Transport) TrySend(typ transport.Type, payload []byte) error {
	if !typ.User() || transport.LaneOf(typ) != transport.LaneControl {
		return t.tcp.TrySend(typ, payload)
	}
	if !t.smu.TryLock() {
		return transport.ErrWouldBlock
	}
	defer t.smu.Unlock()
	if g := t.sendRing; g != nil {
		err := g.rc.TrySend(typ, 0, payload)
		if err != nil && !errors.Is(err, transport.ErrWouldBlock) && g.rc.Err() != nil {
			t.linkFailed(g)
		}
		t.countRing(err, payload)
		return err
	}
	return t.tcp.TrySend(typ, payload)
}

// SendBatch implements the contract's optional SendBatch: control-lane
// frames go into the peer's ring one after the other under one hold of
// the sender (the ring has no system call to save), and over TCP once
// the ring is down, or for the bulk lane, by tcpfallback's SendBatch, in
// one write. It returns how many frames went.
func (t *Transport) SendBatch(frames []transport.OutFrame) (int, error) {
	return t.sendBatch(frames, false)
}

// TrySendBatch is SendBatch that never waits: it sends the frames the
// ring (or the socket) takes now, in order, and returns how many with
// ErrWouldBlock for the rest.
func (t *Transport) TrySendBatch(frames []transport.OutFrame) (int, error) {
	return t.sendBatch(frames, true)
}

func (t *Transport) sendBatch(frames []transport.OutFrame, try bool) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	if ft := frames[0].Type; !ft.User() || transport.LaneOf(ft) != transport.LaneControl {
		if try {
			return t.tcp.TrySendBatch(frames)
		}
		return t.tcp.SendBatch(frames)
	}
	if try {
		if !t.smu.TryLock() {
			return 0, transport.ErrWouldBlock
		}
	} else {
		t.smu.Lock()
	}
	defer t.smu.Unlock()
	g := t.sendRing
	if g == nil {
		if try {
			return t.tcp.TrySendBatch(frames)
		}
		return t.tcp.SendBatch(frames)
	}
	for i, f := range frames {
		if transport.LaneOf(f.Type) != transport.LaneControl || !f.Type.User() {
			return i, fmt.Errorf("rdma: a batch goes on one lane: %s frames on the control lane, %s on the %s lane", frames[0].Type, f.Type, transport.LaneOf(f.Type))
		}
		var err error
		if try {
			err = g.rc.TrySend(f.Type, f.Flags, f.Payload)
			if err != nil && !errors.Is(err, transport.ErrWouldBlock) && g.rc.Err() != nil {
				t.linkFailed(g)
			}
		} else {
			err = g.rc.Send(f.Type, f.Flags, f.Payload)
			if err != nil && g.rc.Err() != nil {
				t.linkFailed(g)
			}
		}
		t.countRing(err, f.Payload)
		if err != nil {
			return i, err
		}
	}
	return len(frames), nil
}

// Poll delivers the control-lane frames that arrived in the ring to
// OnFrame, inline on the caller's goroutine, and returns how many. It
// never blocks and makes no system call: the agent calls it on the vCPU
// thread at each exit, so that an acknowledgement is read with no thread
// hand-off. If the poller is receiving at that moment it returns 0 and
// the poller delivers. Over TCP it does nothing.
func (t *Transport) Poll() int {
	g := t.recv.Load()
	if g == nil {
		return 0
	}
	t.polls.Add(1)
	_, n, _, err := g.rc.TryReceive(g.deliverFn)
	if err != nil {
		t.linkFailed(g)
	}
	return n
}

// DropLane closes lane l's TCP connection with err as the reason, as
// tcpfallback.Transport.DropLane does, and returns the peer's address ("":
// no connection). Dropping the control lane ends the ring's generation
// too: nothing more the peer wrote into the ring is delivered, even from
// OnFrame's own call. The agent drops the lane a frame that is not a
// protocol message came on.
func (t *Transport) DropLane(l transport.Lane, err error) (peer string) {
	if l == transport.LaneControl {
		if g := t.recv.Load(); g != nil {
			g.dropped.Store(true)
		}
	}
	return t.tcp.DropLane(l, err)
}

// Fence revokes the peer's access to this side's ring (Link.Revoke) and
// drops the control lane, so that a stale peer's writes fail or land
// nowhere this side reads, and a peer still alive has to set up afresh
// (where the protocol above refuses its stale epoch). The agent calls it
// when this host goes live or learns of a newer epoch.
func (t *Transport) Fence() error {
	t.stMu.Lock()
	g := t.cur
	var rc *RingConn
	if g != nil {
		rc = g.rc
	}
	t.stMu.Unlock()
	if rc == nil {
		return nil
	}
	err := rc.Revoke()
	t.linkFailed(g)
	return err
}

// Close closes the TCP transport (waiting for running OnFrame calls: do
// not call it from OnFrame), tears the ring down and closes Events.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		close(t.closing)
		t.tcp.Close()
		<-t.pumpDone
	})
	<-t.pumpDone
	return nil
}

// linkFailed hands a broken generation to the pump, which tears it down
// and drops the control lane; any goroutine may call it.
func (t *Transport) linkFailed(g *generation) {
	g.failOnce.Do(func() {
		select {
		case t.failCh <- g:
		default:
			// The pump may be waiting for a lock the caller holds.
			go func() {
				select {
				case t.failCh <- g:
				case <-t.closing:
				}
			}()
		}
	})
}

// onLinkSetup runs on the TCP control lane's reader. A switch is acted on
// here, in order with the frames OnFrame got before it; the rest goes to
// the pump.
func (t *Transport) onLinkSetup(f transport.Frame) {
	m, err := parseSetup(f.Payload)
	if err != nil {
		t.log.Warn("rdma: the peer sent a link-setup message this host cannot use; the control lane stays on TCP", "err", err)
		return
	}
	if m.kind == setupSwitch {
		t.stMu.Lock()
		g := t.cur
		ok := g != nil && g.rc != nil && g.localGen == m.toGen && g.peerGen == m.fromGen
		t.stMu.Unlock()
		if !ok {
			t.log.Warn("rdma: the peer switched to a ring this host does not have (an older set-up); dropping the control lane to start afresh", "to_gen", m.toGen)
			t.tcp.DropLane(transport.LaneControl, fmt.Errorf("rdma: the peer switched to ring generation %d, which is not this host's current one", m.toGen))
			return
		}
		// Frames of the ring follow this one on the lane.
		g.seq = f.Seq + 1
		g.rc.EnableDelivery()
		g.delivering.Store(true)
		return
	}
	m.seq = f.Seq
	select {
	case t.setupCh <- m:
	case <-t.closing:
	}
}

// pump is the Transport's goroutine: it forwards the TCP transport's
// events and runs the ring's set-up and teardown, one step at a time.
func (t *Transport) pump() {
	defer close(t.pumpDone)
	defer close(t.events)
	tcpEvents := t.tcp.Events()
	for {
		select {
		case ev, ok := <-tcpEvents:
			if !ok {
				t.endGen(nil, false)
				return
			}
			t.onEvent(ev)
		case m := <-t.setupCh:
			// Every event the TCP transport emitted before the frame
			// was read (a lane down and up before a new connection's
			// first frame) is in its channel now: act on those first.
			if !t.drainEvents(tcpEvents) {
				t.endGen(nil, false)
				return
			}
			t.onSetup(m)
		case g := <-t.failCh:
			t.stMu.Lock()
			cur := t.cur
			t.stMu.Unlock()
			if g == cur {
				err := g.rc.Err()
				t.log.Warn("rdma: the ring broke; dropping the control lane so that both hosts set up afresh", "err", err)
				t.endGen(err, true)
			}
		}
	}
}

func (t *Transport) drainEvents(ch <-chan transport.Event) bool {
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return false
			}
			t.onEvent(ev)
		default:
			return true
		}
	}
}

func (t *Transport) onEvent(ev transport.Event) {
	up := ev.Lane == transport.LaneControl && ev.Kind == transport.EventLaneUp
	if up {
		t.endGen(nil, false)
		t.startGen()
	}
	// A lost peer is reported before the ring is torn down: the teardown
	// waits for the poller, which may be asleep in Link.Wait, and the
	// owner acts on a lost peer at once (a failover).
	select {
	case t.events <- ev:
	default:
		t.eventsDropped.Add(1)
	}
	if ev.Lane == transport.LaneControl && ev.Kind == transport.EventLaneDown {
		t.endGen(ev.Err, false)
	}
}

func (t *Transport) sendSetup(m setupMsg) {
	if err := t.tcp.SendLinkSetup(m.append(nil)); err != nil {
		t.log.Debug("rdma: link-setup message not sent", "kind", m.kind, "err", err)
	}
}

// startGen opens a fresh endpoint for a new control connection and offers
// it to the peer.
func (t *Transport) startGen() {
	p := t.cfg.Provider
	if p == nil {
		t.setWhy("no one-sided memory configured: the control lane uses TCP")
		return
	}
	gen := t.gen.Add(1)
	ep, err := p.Open(RegionBytes(t.cfg.RingBytes))
	if err != nil {
		t.setWhy(fmt.Sprintf("%s: opening a region failed: %v", p.Name(), err))
		t.log.Warn("rdma: cannot open a ring; the control lane stays on TCP", "provider", p.Name(), "err", err)
		return
	}
	g := &generation{localGen: gen, ep: ep}
	t.stMu.Lock()
	t.cur = g
	t.stMu.Unlock()
	t.sendSetup(setupMsg{kind: setupParams, fromGen: g.localGen, provider: p.Name(), ringBytes: uint32(t.cfg.RingBytes), params: ep.Params()})
}

func (t *Transport) onSetup(m setupMsg) {
	t.stMu.Lock()
	g := t.cur
	t.stMu.Unlock()
	switch m.kind {
	case setupParams:
		if t.cfg.Provider == nil {
			t.sendSetup(setupMsg{kind: setupFail, fromGen: 0, toGen: m.fromGen, reason: "this host runs the control lane over TCP (--transport tcp)"})
			return
		}
		if m.provider != t.cfg.Provider.Name() {
			why := fmt.Sprintf("the peer offers %s, this host uses %s", m.provider, t.cfg.Provider.Name())
			t.setWhy(why + ": the control lane uses TCP")
			t.log.Warn("rdma: the hosts use different one-sided memories; the control lane stays on TCP", "peer", m.provider, "this_host", t.cfg.Provider.Name())
			t.sendSetup(setupMsg{kind: setupFail, toGen: m.fromGen, reason: why})
			return
		}
		if g != nil && g.link != nil {
			// The peer started over on this connection: so do we.
			t.endGen(nil, true)
			return
		}
		if g == nil {
			t.startGen()
			t.stMu.Lock()
			g = t.cur
			t.stMu.Unlock()
			if g == nil {
				t.sendSetup(setupMsg{kind: setupFail, toGen: m.fromGen, reason: *t.why.Load()})
				return
			}
		}
		g.peerGen = m.fromGen
		link, err := g.ep.Connect(m.params)
		if err != nil {
			why := fmt.Sprintf("%s: connecting to the peer's region failed: %v", t.cfg.Provider.Name(), err)
			t.setWhy(why + "; the control lane uses TCP")
			t.log.Warn("rdma: cannot reach the peer's ring; the control lane stays on TCP", "err", err)
			t.sendSetup(setupMsg{kind: setupFail, toGen: m.fromGen, fromGen: g.localGen, reason: why})
			return
		}
		rc, err := NewRingConn(link, uint64(g.localGen), uint64(g.peerGen), t.cfg.TCP.SendTimeout)
		if err != nil {
			link.Close()
			t.sendSetup(setupMsg{kind: setupFail, toGen: m.fromGen, fromGen: g.localGen, reason: err.Error()})
			return
		}
		t.stMu.Lock()
		g.link, g.rc = link, rc
		t.stMu.Unlock()
		g.deliverFn = func(typ transport.Type, flags transport.Flags, payload []byte) {
			// Counted before OnFrame sees it, so that whoever OnFrame
			// tells of the frame finds it counted.
			t.ringFrames.Add(1)
			if g.dropped.Load() {
				return // of a connection DropLane dropped
			}
			prev := g.pollState.Swap(pollerInOnFrame)
			t.onFrame(transport.Frame{Lane: transport.LaneControl, Type: typ, Flags: flags, Seq: g.seq, Payload: payload})
			g.pollState.Store(prev)
			g.seq++
		}
		g.stop, g.done = make(chan struct{}), make(chan struct{})
		t.recv.Store(g)
		if !t.cfg.NoPoller {
			go t.poll(g)
			go t.watchPoller(g)
		} else {
			close(g.done)
		}
		t.sendSetup(setupMsg{kind: setupReady, toGen: g.peerGen, fromGen: g.localGen})
		t.maybeSwitch(g)
	case setupReady:
		if g == nil || g.localGen != m.toGen {
			return // for a generation this host has left
		}
		g.peerReady = true
		t.maybeSwitch(g)
	case setupFail:
		if g != nil && g.localGen == m.toGen || m.toGen == 0 {
			t.setWhy("the peer: " + m.reason + "; the control lane uses TCP")
			t.log.Info("rdma: the peer cannot use a ring; the control lane stays on TCP", "reason", m.reason)
		}
	}
}

// maybeSwitch moves our control-lane sends to the ring once both sides are
// connected: the switch message goes by TCP behind every frame sent there,
// and every later frame goes into the ring.
func (t *Transport) maybeSwitch(g *generation) {
	if g.rc == nil || !g.peerReady || g.switched || g.peerGen == 0 {
		return
	}
	t.smu.Lock()
	defer t.smu.Unlock()
	if err := t.tcp.SendLinkSetup((&setupMsg{kind: setupSwitch, toGen: g.peerGen, fromGen: g.localGen}).append(nil)); err != nil {
		t.log.Debug("rdma: switch not sent; the control lane stays on TCP", "err", err)
		return
	}
	g.switched = true
	t.sendRing = g
	t.setWhy(fmt.Sprintf("%s ring of %d bytes each way, set up over the authenticated TCP connection", t.cfg.Provider.Name(), t.cfg.RingBytes))
	t.log.Info("rdma: control lane on the ring", "provider", t.cfg.Provider.Name(), "ring_bytes", t.cfg.RingBytes, "generation", g.localGen)
}

// endGen tears the current generation down. drop: drop the TCP control
// lane too, so that the peer (which may be writing into the ring) sees
// the connection lost.
func (t *Transport) endGen(reason error, drop bool) {
	t.stMu.Lock()
	g := t.cur
	t.cur = nil
	t.stMu.Unlock()
	if g == nil {
		return
	}
	if g.rc != nil {
		g.rc.Fail(fmt.Errorf("%w: the ring's connection ended", transport.ErrLaneDown))
	}
	t.smu.Lock()
	if t.sendRing == g {
		t.sendRing = nil
	}
	t.smu.Unlock()
	if g.stop != nil {
		g.stopped.Store(true)
		close(g.stop)
		<-g.done
	}
	t.recv.CompareAndSwap(g, nil)
	if g.rc != nil {
		g.rc.Close()
	}
	g.ep.Close()
	if drop {
		if reason == nil {
			reason = errors.New("rdma: the ring was set up again")
		}
		t.tcp.DropLane(transport.LaneControl, reason)
	}
	if t.cfg.Provider != nil {
		t.setWhy("the ring is not set up (the control connection is being re-established)")
	}
}

// poll is a generation's poller: it receives while frames come, spins
// WaitSpin when they stop, then blocks in Link.Wait, so that a busy pair
// never sleeps and an idle one burns no CPU.
func (t *Transport) poll(g *generation) {
	defer close(g.done)
	var idleSince time.Time
	napping := false // the last idle step was a nap: no spin phase now
	polls := t.polls.Load()
	for idle := 0; ; {
		if g.stopped.Load() {
			return
		}
		g.pollTurns.Add(1)
		sig, n, err := g.rc.Receive(g.deliverFn)
		if err != nil {
			t.linkFailed(g)
			<-g.stop
			return
		}
		if sig > 0 || n > 0 {
			idle, napping = 0, false
			continue
		}
		if !napping {
			// Reading the clock costs more than a look at the ring on
			// some hosts (200 ns in a PVM guest): start it only after a
			// while idle, and look at it once every pollerClockEvery.
			idle++
			switch {
			case t.cfg.WaitSpin <= 0:
			case idle == pollerClockEvery:
				idleSince = time.Now()
				continue
			case idle < pollerClockEvery || idle%pollerClockEvery != 0:
				continue
			case time.Since(idleSince) < t.cfg.WaitSpin:
				runtime.Gosched()
				continue
			}
		}
		if p := t.polls.Load(); p != polls {
			polls = p
			// Someone (the vCPU thread, at its exits) is polling: Wait
			// would hold the receiver's lock and make its Poll come back
			// empty, so nap without it and look again.
			g.pollState.Store(pollerNapping)
			time.Sleep(pollActiveNap)
			g.pollState.Store(pollerReceiving)
			napping = true
			continue
		}
		napping = false
		g.pollState.Store(pollerWaiting)
		g.rc.Wait(pollerWaitSlice)
		g.pollState.Store(pollerReceiving)
		idle = 0
	}
}

// pollerClockEvery: the poller looks at the clock once per this many
// empty looks at the ring.
const pollerClockEvery = 64

// While Poll was called since the poller last looked (at most a nap
// ago), the idle poller naps pollActiveNap at a time without the
// receiver's lock instead of blocking in Link.Wait: the caller of Poll
// reads the ring then, with no hand-off, and the poller still delivers
// within a nap once it stops.
const pollActiveNap = 50 * time.Microsecond

// watchPoller reports a poller that made no turn for pollerStallReport:
// at most pollerWaitSlice passes between two turns of a poller that is
// scheduled, so a longer gap means it was held (in OnFrame, or waiting
// for the receiver's lock) or not run at all (the process starved: then
// this goroutine's own ticks come late too, and the line says by how
// much). Frames the peer wrote meanwhile waited in the ring, and the
// peer's failure detector counts that silence.
func (t *Transport) watchPoller(g *generation) {
	tick := time.NewTicker(pollerWatchEvery)
	defer tick.Stop()
	last, lastMoved, lastTick := g.pollTurns.Load(), time.Now(), time.Now()
	var worstTickGap time.Duration
	stuck := uint32(0)
	sched := newSchedWaits()
	for {
		select {
		case <-g.stop:
			if d := time.Since(lastMoved); d >= pollerStallReport && g.pollTurns.Load() == last {
				t.log.Warn("rdma: the ring's poller made no progress until the ring was torn down",
					"stalled", d.Round(time.Millisecond), "poller", pollerStateNames[g.pollState.Load()])
			}
			return
		case now := <-tick.C:
			worstTickGap = max(worstTickGap, now.Sub(lastTick))
			lastTick = now
			turns := g.pollTurns.Load()
			if turns == last {
				stuck = g.pollState.Load()
				continue
			}
			if d := now.Sub(lastMoved); d >= pollerStallReport {
				t.log.Warn("rdma: the ring's poller made no progress; frames the peer wrote meanwhile waited in the ring",
					"stalled", d.Round(time.Millisecond), "poller", pollerStateNames[stuck],
					"watchdog_worst_tick_gap", worstTickGap.Round(time.Millisecond), "watchdog_tick", pollerWatchEvery,
					"go_runnable_waits_over_half_the_stall", sched.over(d/2))
			} else {
				sched.over(0) // only what happens from now on counts at the next report
			}
			last, lastMoved, worstTickGap = turns, now, 0
		}
	}
}

// schedWaits reads the Go runtime's histogram of how long goroutines
// waited runnable for a processor (/sched/latencies:seconds), so that a
// stall report says whether goroutines of this process waited that long
// (the Go scheduler had no P for them) or not (the thread was not run).
type schedWaits struct {
	s    []metrics.Sample
	last []uint64
}

func newSchedWaits() *schedWaits {
	w := &schedWaits{s: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
	w.over(0)
	return w
}

// over returns how many waits of at least d the runtime recorded since
// the last call (0 while it is not there to read).
func (w *schedWaits) over(d time.Duration) uint64 {
	metrics.Read(w.s)
	if w.s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.s[0].Value.Float64Histogram()
	var n uint64
	for i, c := range h.Counts {
		prev := uint64(0)
		if i < len(w.last) {
			prev = w.last[i]
		}
		if h.Buckets[i] >= d.Seconds() {
			n += c - prev
		}
	}
	w.last = append(w.last[:0], h.Counts...)
	return n
}

// The poller watchdog looks every pollerWatchEvery and reports a poller
// that made no turn for pollerStallReport (well over pollerWaitSlice,
// well under the lockstep peer timeout's default 120 ms).
const (
	pollerWatchEvery  = 10 * time.Millisecond
	pollerStallReport = 50 * time.Millisecond
)
