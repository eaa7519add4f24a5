package rdmatest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
)

// Sink collects the frames a Transport delivers (copies of them).
type Sink struct {
	// SlowFirst makes OnFrame spin 20 µs for each of the first SlowFirst
	// frames, so that a backlog builds on TCP while the ring is set up.
	SlowFirst int
	// Hook, if set, sees each frame after it is recorded, on the
	// delivering goroutine.
	Hook func(transport.Frame)

	mu     sync.Mutex
	frames []transport.Frame
	cond   *sync.Cond
}

// NewSink returns an empty sink.
func NewSink() *Sink {
	s := &Sink{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// OnFrame is the Transport's OnFrame.
func (s *Sink) OnFrame(f transport.Frame) {
	f.Payload = append([]byte(nil), f.Payload...)
	s.mu.Lock()
	if len(s.frames) < s.SlowFirst {
		s.mu.Unlock()
		for start := time.Now(); time.Since(start) < 20*time.Microsecond; {
		}
		s.mu.Lock()
	}
	s.frames = append(s.frames, f)
	s.cond.Broadcast()
	hook := s.Hook
	s.mu.Unlock()
	if hook != nil {
		hook(f)
	}
}

// Frames returns what arrived so far.
func (s *Sink) Frames() []transport.Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]transport.Frame(nil), s.frames...)
}

// WaitFor waits until n frames arrived, at most d.
func (s *Sink) WaitFor(t testing.TB, n int, d time.Duration) []transport.Frame {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		f := s.Frames()
		if len(f) >= n {
			return f
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d frames arrived within %v, want %d", len(f), d, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TransportPair is a listener and a dialer over loopback TCP, with the
// control lane on p's rings (p nil: TCP only), closed when the test ends.
func TransportPair(t testing.TB, p rdma.Provider, ls, ds *Sink) (l, d *rdma.Transport) {
	t.Helper()
	psk := bytes.Repeat([]byte{0x42}, tcpfallback.MinPSKBytes)
	cfg := func(s *Sink, name string) rdma.Config {
		return rdma.Config{Provider: p, Logger: slog.New(slog.DiscardHandler), TCP: tcpfallback.Config{
			VMID: "conformance", PSK: psk, Name: name, OnFrame: s.OnFrame,
			HeartbeatInterval: 10 * time.Millisecond, HeartbeatTimeout: time.Second,
			ReconnectMinDelay: time.Millisecond, ReconnectMaxDelay: 20 * time.Millisecond,
		}}
	}
	var err error
	if l, err = rdma.Listen("127.0.0.1:0", cfg(ls, "listener")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if d, err = rdma.Dial(ctx, l.Addr(), cfg(ds, "dialer")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return l, d
}

// WaitRing waits until both transports run the control lane on the ring
// (or, for a nil provider, checks that they stay on TCP).
func WaitRing(t testing.TB, p rdma.Provider, ts ...*rdma.Transport) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, tr := range ts {
		for {
			name, why := tr.Using()
			if p == nil {
				if name != "tcp" {
					t.Fatalf("with no provider the control lane uses %s (%s)", name, why)
				}
				break
			}
			if name == p.Name() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the control lane is still on %s after 10s: %s", name, why)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func seqPayload(i int) []byte {
	b := make([]byte, 8+i%200)
	binary.LittleEndian.PutUint64(b, uint64(i))
	return b
}

// RunTransport runs the transport-level suite: rdma.Transport over
// loopback TCP with p's rings (p nil: the same tests with the control lane
// on TCP, i.e. tcpfallback underneath).
func RunTransport(t *testing.T, p rdma.Provider) {
	t.Run("OrderAcrossTheSwitch", func(t *testing.T) { testOrderAcrossSwitch(t, p) })
	t.Run("BulkLaneStaysOnTCP", func(t *testing.T) { testBulk(t, p) })
	t.Run("PeerDies", func(t *testing.T) { testPeerDies(t, p) })
	t.Run("Reconnect", func(t *testing.T) { testTransportReconnect(t, p) })
	t.Run("Fence", func(t *testing.T) { testTransportFence(t, p) })
	t.Run("PollDeliversInline", func(t *testing.T) { testPollInline(t, p) })
	t.Run("DropLaneFromOnFrame", func(t *testing.T) { testDropLaneFromOnFrame(t, p) })
}

// testDropLaneFromOnFrame: a receiver that drops the control lane from
// OnFrame (the agent, on a frame that is not a protocol message) is given
// nothing more of that connection, ring or TCP, though the peer wrote it
// before the drop; the peer connects again and what it sends then comes.
func testDropLaneFromOnFrame(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	sent := make(chan struct{})
	var lp atomic.Pointer[rdma.Transport]
	var once sync.Once
	peer := make(chan string, 1)
	ls.Hook = func(f transport.Frame) {
		if string(f.Payload) != "bad" {
			return
		}
		once.Do(func() {
			<-sent // the frames behind it are in the ring (or the socket)
			peer <- lp.Load().DropLane(f.Lane, fmt.Errorf("test: a frame that does not parse"))
		})
	}
	l, d := TransportPair(t, p, ls, ds)
	lp.Store(l)
	WaitRing(t, p, l, d)
	if err := d.Send(transport.TypeLog, []byte("bad")); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := d.Send(transport.TypeLog, fmt.Appendf(nil, "after-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	close(sent)
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := d.Send(transport.TypeLog, []byte("fresh"))
		f := ls.Frames()
		if err == nil && len(f) > 0 && string(f[len(f)-1].Payload) == "fresh" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing sent after the reconnection arrived (last error %v)", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, f := range ls.Frames() {
		if bytes.HasPrefix(f.Payload, []byte("after-")) {
			t.Fatalf("frame %q, sent on the connection the receiver dropped, was delivered", f.Payload)
		}
	}
	if <-peer == "" {
		t.Fatal("DropLane named no peer")
	}
}

// testPollInline: while a thread keeps calling Poll (the vCPU thread at
// its exits), frames are handed to OnFrame on that thread rather than by
// the poller, which leaves the ring to it.
//
// The thread that polls sends each frame itself, as the vCPU thread polls
// for what its output brings back, and keeps polling a while after it
// arrived, so that the poller's spin after a frame it took has ended
// before the next one: then only a poller that keeps the ring from Poll
// takes most of them, however the host schedules the two (a separate
// sender and a polling thread that sleeps between calls measured the
// host's scheduler: under load Poll got 40% to 60%).
func testPollInline(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	l, d := TransportPair(t, p, ls, ds)
	WaitRing(t, p, l, d)
	const frames = 200
	const pause = 500 * time.Microsecond // 10 times DefaultWaitSpin
	n := 0
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < frames; i++ {
		if err := d.Send(transport.TypeAck, seqPayload(i)); err != nil {
			t.Fatal(err)
		}
		var arrived time.Time
		for arrived.IsZero() || time.Since(arrived) < pause {
			n += l.Poll()
			if arrived.IsZero() && len(ls.Frames()) > i {
				arrived = time.Now()
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d frames arrived after 10s", len(ls.Frames()), frames)
			}
			runtime.Gosched() // an exit now and then
		}
	}
	t.Logf("%d of %d frames delivered by Poll", n, frames)
	if p == nil {
		if n != 0 {
			t.Fatalf("over TCP Poll delivered %d frames", n)
		}
		return
	}
	// Without the nap the poller takes nearly all (1 or 2 of 200 reach
	// Poll); with it most do, less on a loaded host, where the poller's
	// spin after each frame it delivered still wins some.
	if n < frames/5 {
		t.Fatalf("Poll delivered only %d of %d frames while it was being called: the poller kept the ring", n, frames)
	}
}

// testOrderAcrossSwitch sends from the moment the dialer is up, so that
// the first frames go by TCP and the later ones into the ring: every one
// arrives, in order, on the control lane.
func testOrderAcrossSwitch(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	ls.SlowFirst = 1000
	l, d := TransportPair(t, p, ls, ds)
	// Send until the dialer has switched, and 1000 frames after that.
	n, after := 0, -1
	for ; n < 200000 && after != 0; n++ {
		typ := transport.TypeLog
		if n%3 == 0 {
			typ = transport.TypeAck
		}
		if err := d.Send(typ, seqPayload(n)); err != nil {
			t.Fatalf("Send %d: %v", n, err)
		}
		if after < 0 && (p == nil || d.RingUp()) {
			after = 1000
		} else if after > 0 {
			after--
		}
	}
	got := ls.WaitFor(t, n, 20*time.Second)
	for i, f := range got[:n] {
		if f.Lane != transport.LaneControl || !bytes.Equal(f.Payload, seqPayload(i)) {
			t.Fatalf("frame %d on lane %s carries entry %d: out of order or lost across the switch", i, f.Lane, binary.LittleEndian.Uint64(f.Payload))
		}
	}
	WaitRing(t, p, l, d)
	// The other way, now on the ring (with a provider).
	before := l.RingFrames()
	for i := 0; i < 100; i++ {
		if err := l.Send(transport.TypeAck, seqPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	back := ds.WaitFor(t, 100, 10*time.Second)
	for i, f := range back {
		if !bytes.Equal(f.Payload, seqPayload(i)) {
			t.Fatalf("reply %d differs", i)
		}
	}
	if p != nil && d.RingFrames() == 0 {
		t.Fatal("no frame came over the ring")
	}
	t.Logf("listener got %d of %d frames over the ring", before, n)
}

func testBulk(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	l, d := TransportPair(t, p, ls, ds)
	WaitRing(t, p, l, d)
	chunk := bytes.Repeat([]byte{7}, 1<<20)
	if err := d.Send(transport.TypeCheckpoint, chunk); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(transport.TypeAck, []byte("after")); err != nil {
		t.Fatal(err)
	}
	got := ls.WaitFor(t, 2, 10*time.Second)
	lanes := map[transport.Lane]int{}
	for _, f := range got {
		lanes[f.Lane]++
		if f.Type == transport.TypeCheckpoint && len(f.Payload) != len(chunk) {
			t.Fatalf("checkpoint chunk of %d bytes arrived as %d", len(chunk), len(f.Payload))
		}
	}
	if lanes[transport.LaneBulk] != 1 || lanes[transport.LaneControl] != 1 {
		t.Fatalf("frames by lane: %v, want one on each", lanes)
	}
}

func waitEvent(t testing.TB, tr *rdma.Transport, kind transport.EventKind, lane transport.Lane, d time.Duration) transport.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-tr.Events():
			if !ok {
				t.Fatalf("Events closed before %s", kind)
			}
			if ev.Kind == kind && ev.Lane == lane {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s on the %s lane within %v", kind, lane, d)
		}
	}
}

func testPeerDies(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	l, d := TransportPair(t, p, ls, ds)
	WaitRing(t, p, l, d)
	d.Close()
	ev := waitEvent(t, l, transport.EventLaneDown, transport.LaneControl, 5*time.Second)
	t.Logf("listener: %v", ev)
	if err := l.Send(transport.TypeAck, []byte("x")); err == nil {
		t.Fatal("Send to a dead peer succeeded")
	}
}

// testTransportReconnect drops the control lane: both sides see it go
// down, the dialer reconnects, a fresh ring is set up and frames flow in
// order again.
func testTransportReconnect(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	l, d := TransportPair(t, p, ls, ds)
	WaitRing(t, p, l, d)
	for round := 0; round < 3; round++ {
		lg, dg := l.Generation(), d.Generation()
		lc := l.TCP().Stats().Lanes[transport.LaneControl].Connects
		dc := d.TCP().Stats().Lanes[transport.LaneControl].Connects
		d.TCP().DropLane(transport.LaneControl, fmt.Errorf("test: round %d", round))
		waitNewConnection(t, p, l, lg, lc)
		waitNewConnection(t, p, d, dg, dc)
		base := len(ls.Frames())
		for i := 0; i < 200; i++ {
			if err := d.Send(transport.TypeLog, seqPayload(i)); err != nil {
				// The dialer may still be between connections.
				t.Fatalf("round %d: Send %d: %v", round, i, err)
			}
		}
		got := ls.WaitFor(t, base+200, 10*time.Second)[base:]
		for i, f := range got {
			if !bytes.Equal(f.Payload, seqPayload(i)) {
				t.Fatalf("round %d: frame %d out of order after reconnection", round, i)
			}
		}
	}
}

// waitNewConnection waits until tr has a control connection newer than the
// one counted by connects (and, with a provider, a ring on it newer than
// gen).
func waitNewConnection(t testing.TB, p rdma.Provider, tr *rdma.Transport, gen uint32, connects uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		name, why := tr.Using()
		fresh := tr.TCP().Stats().Lanes[transport.LaneControl].Connects > connects
		if p != nil {
			fresh = fresh && tr.Generation() > gen && name == p.Name()
		}
		if fresh {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new control connection within 10s (%s: %s)", name, why)
		}
		time.Sleep(time.Millisecond)
	}
}

// testTransportFence: after the listener fences, nothing the dialer sent
// into the old ring is delivered; the lane is dropped and comes back, on a
// fresh ring.
func testTransportFence(t *testing.T, p rdma.Provider) {
	ls, ds := NewSink(), NewSink()
	l, d := TransportPair(t, p, ls, ds)
	WaitRing(t, p, l, d)
	if err := d.Send(transport.TypeLog, seqPayload(0)); err != nil {
		t.Fatal(err)
	}
	ls.WaitFor(t, 1, 5*time.Second)
	before := l.RingFrames()
	lg, dg := l.Generation(), d.Generation()
	lc := l.TCP().Stats().Lanes[transport.LaneControl].Connects
	dc := d.TCP().Stats().Lanes[transport.LaneControl].Connects
	if err := l.Fence(); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if p == nil {
		// Nothing to revoke over TCP: the lane stays as it is.
		if err := d.Send(transport.TypeAck, []byte("fresh")); err != nil {
			t.Fatal(err)
		}
		ls.WaitFor(t, 2, 5*time.Second)
		return
	}
	var sendErr error
	for i := 1; i < 50; i++ {
		if err := d.Send(transport.TypeLog, []byte("stale")); err != nil && sendErr == nil {
			sendErr = err
		}
	}
	waitEvent(t, l, transport.EventLaneDown, transport.LaneControl, 5*time.Second)
	if got := l.RingFrames(); got != before {
		t.Fatalf("%d frames the stale peer wrote into the ring after the fence were delivered", got-before)
	}
	t.Logf("the stale peer's first failed send: %v", sendErr)
	waitNewConnection(t, p, l, lg, lc)
	waitNewConnection(t, p, d, dg, dc)
	if err := d.Send(transport.TypeAck, []byte("fresh")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fs := ls.Frames()
		if len(fs) > 0 && string(fs[len(fs)-1].Payload) == "fresh" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no frame after the fence and reconnection")
		}
		time.Sleep(time.Millisecond)
	}
}
