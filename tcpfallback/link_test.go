package tcpfallback

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"
)

// rawLane is a hand-driven dialer: it completes set-up for one lane with
// the real handshake and then writes whatever bytes a test wants.
func rawLane(t *testing.T, addr string, lane Lane) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(hangGuard))
	p := testConfig(newSink())
	p, _ = p.withDefaults()
	if _, err := dialerHandshake(c, p.handshakeParams(lane)); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// A refused frame closes the connection with an error naming what failed,
// is counted, and nothing sent after it is delivered.
func TestBadFrameClosesConnection(t *testing.T) {
	const maxPayload = 4096
	for _, tc := range []struct {
		name   string
		lane   Lane
		bad    func(seq uint32) []byte
		reason string
		says   []string
	}{
		{"bad length", LaneControl, func(seq uint32) []byte {
			b := appendFrame(nil, TypeLog, 0, seq, nil)
			binary.LittleEndian.PutUint32(b, maxPayload+1)
			fixFrameCRC(b)
			return b
		}, reasonBadLength, []string{"4097", "maximum 4096"}},
		{"corrupt length below the maximum", LaneControl, func(seq uint32) []byte {
			b := appendFrame(nil, TypeLog, 0, seq, []byte("payload"))
			b[1] ^= 0x02 // 7 becomes 519: would wait for 512 bytes that never come
			return b
		}, reasonHeaderCheck, []string{"header check mismatch", "header says 0x"}},
		{"CRC mismatch", LaneControl, func(seq uint32) []byte {
			b := appendFrame(nil, TypeLog, 0, seq, []byte("payload"))
			b[len(b)-1] ^= 0xFF
			return b
		}, reasonCRC, []string{"header says 0x", "bytes received give 0x"}},
		{"unknown type", LaneControl, func(seq uint32) []byte {
			b := appendFrame(nil, 77, 0, seq, nil)
			return b
		}, reasonUnknownType, []string{"type(77)"}},
		{"checkpoint on control lane", LaneControl, func(seq uint32) []byte {
			return appendFrame(nil, TypeCheckpoint, 0, seq, []byte("chunk"))
		}, reasonWrongLane, []string{"checkpoint"}},
		{"ack on bulk lane", LaneBulk, func(seq uint32) []byte {
			return appendFrame(nil, TypeAck, 0, seq, nil)
		}, reasonWrongLane, []string{"bulk lane", "ack"}},
		{"unknown flags", LaneControl, func(seq uint32) []byte {
			b := appendFrame(nil, TypeLog, 0, seq, nil)
			b[5] = 0x02
			fixFrameCRC(b)
			return b
		}, reasonBadFlags, []string{"flags 0x02"}},
		{"sequence gap", LaneControl, func(seq uint32) []byte {
			return appendFrame(nil, TypeLog, 0, seq+1, nil)
		}, reasonBadSeq, []string{"got 2, want 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls := newSink()
			lc := testConfig(ls)
			lc.MaxPayloadBytes = maxPayload
			l := listen(t, lc)
			c := rawLane(t, l.Addr(), tc.lane)
			typ := TypeLog
			if tc.lane == LaneBulk {
				typ = TypeCheckpoint
			}
			var stream []byte
			stream = appendFrame(stream, typ, 0, 0, []byte("before"))
			stream = append(stream, tc.bad(1)...)
			stream = appendFrame(stream, typ, 0, 2, []byte("after"))
			if _, err := c.Write(stream); err != nil {
				t.Fatal(err)
			}
			ev := waitEvent(t, l, EventLaneDown, int(tc.lane))
			var fe *FrameError
			if !errors.As(ev.Err, &fe) || fe.Reason != tc.reason {
				t.Fatalf("lane down with %v, want FrameError %q", ev.Err, tc.reason)
			}
			mustContain(t, ev.Err, append(tc.says, "nothing after this frame was delivered")...)
			if n := l.Stats().FrameErrors[tc.reason]; n != 1 {
				t.Errorf("FrameErrors[%q] = %d, want 1", tc.reason, n)
			}
			got := ls.snapshot()
			if len(got) != 1 || string(got[0].Payload) != "before" {
				t.Fatalf("delivered %d frames (%v), want only \"before\"", len(got), got)
			}
			// The listener hung up on us.
			c.SetReadDeadline(time.Now().Add(hangGuard))
			if _, err := c.Read(make([]byte, 64)); err == nil {
				t.Fatal("connection still open after a refused frame")
			}
		})
	}
}

// Through a proxy that delays every chunk, everything arrives, in order.
func TestThroughDelayingProxy(t *testing.T) {
	ls := newSink()
	l := listen(t, testConfig(ls))
	p := newProxy(t, l.Addr())
	p.delay.Store(int64(2 * time.Millisecond))
	ds := newSink()
	d := dial(t, p.addr(), testConfig(ds))
	waitConnected(t, l)
	for i := range 300 {
		if err := d.Send(TypeLog, payloadFor(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range ls.waitN(t, 300) {
		if !bytes.Equal(f.Payload, payloadFor(i)) {
			t.Fatalf("frame %d: %q", i, f.Payload)
		}
	}
	exchange(t, d, l, ds, ls)
}

// streamThenDamage sends numbered frames through the proxy, damages the
// stream once in the middle, keeps sending, and checks that: the damage is
// detected and counted, the dialer reconnects, frames flow again, and every
// delivered frame is one that was sent, intact, in increasing order.
func streamThenDamage(t *testing.T, damage func(*proxy), reasons ...string) {
	ls := newSink()
	l := listen(t, testConfig(ls))
	p := newProxy(t, l.Addr())
	ds := newSink()
	d := dial(t, p.addr(), testConfig(ds))
	waitConnected(t, l)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			// A lane that is down refuses; the protocol above would
			// resend, this test just moves on.
			if err := d.Send(TypeLog, payloadFor(i)); err != nil && !errors.Is(err, ErrLaneDown) {
				t.Fatal(err)
			}
		}
	}
	send(0, 100)
	ls.waitN(t, 100)
	damage(p)
	send(100, 200)
	ev := waitEvent(t, l, EventLaneDown, int(LaneControl))
	var fe *FrameError
	if !errors.As(ev.Err, &fe) {
		t.Fatalf("listener lost the lane with %v, want a FrameError", ev.Err)
	}
	found := false
	for _, r := range reasons {
		found = found || fe.Reason == r
	}
	if !found {
		t.Fatalf("reason %q, want one of %q", fe.Reason, reasons)
	}
	if l.Stats().FrameErrorsTotal() == 0 {
		t.Fatal("frame error not counted")
	}
	waitEvent(t, d, EventLaneDown, int(LaneControl))
	waitEvent(t, d, EventLaneUp, int(LaneControl))
	waitConnected(t, l)
	before := len(ls.snapshot())
	exchange(t, d, l, ds, ls)
	last := -1
	for _, f := range ls.snapshot()[:before] {
		var i int
		if _, err := fmtSscan(f.Payload, &i); err != nil || !bytes.Equal(f.Payload, payloadFor(i)) || i <= last {
			t.Fatalf("delivered %q after frame %d: corrupt or out of order", f.Payload, last)
		}
		last = i
	}
}

func TestCorruptionThroughProxyIsDetected(t *testing.T) {
	streamThenDamage(t, func(p *proxy) { p.flipNext.Store(true) }, reasonCRC, reasonBadLength, reasonUnknownType, reasonWrongLane, reasonBadFlags, reasonHeaderCheck, reasonBadSeq)
}

func TestDroppedBytesThroughProxyAreDetected(t *testing.T) {
	streamThenDamage(t, func(p *proxy) { p.dropNext.Store(5) }, reasonCRC, reasonBadLength, reasonUnknownType, reasonWrongLane, reasonBadFlags, reasonHeaderCheck, reasonBadSeq)
}

// A cut connection is reported on both sides, the dialer reconnects (with
// backoff) and traffic flows again.
func TestCutConnectionReconnects(t *testing.T) {
	ls := newSink()
	l := listen(t, testConfig(ls))
	p := newProxy(t, l.Addr())
	ds := newSink()
	d := dial(t, p.addr(), testConfig(ds))
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)
	for round := range 3 {
		p.cut()
		for _, tr := range []*Transport{d, l} {
			ev := waitEvent(t, tr, EventLaneDown, int(LaneControl))
			if ev.Err == nil {
				t.Fatalf("round %d: lane down without a reason", round)
			}
		}
		waitConnected(t, d)
		waitConnected(t, l)
		exchange(t, d, l, ds, ls)
	}
	if st := d.Stats(); st.Lanes[LaneControl].Losses < 3 || st.Lanes[LaneControl].Connects < 4 {
		t.Fatalf("control lane: %d losses, %d connects", st.Lanes[LaneControl].Losses, st.Lanes[LaneControl].Connects)
	}
}

// A peer that goes silent (a black-holing switch: no reset, no FIN) is
// reported within HeartbeatTimeout + HeartbeatInterval of the last byte the
// proxy relayed on any lane, on both sides, and never before
// HeartbeatTimeout of real silence on the lane has passed. The bounds come from the
// configuration, not from a guess about this machine's speed.
func TestSilentPeerReportedWithinHeartbeatBound(t *testing.T) {
	const interval, timeout = 200 * time.Millisecond, 400 * time.Millisecond
	cfg := func(s *sink) Config {
		c := testConfig(s)
		c.HeartbeatInterval, c.HeartbeatTimeout = interval, timeout
		// Keep the reconnection out of the measured window.
		c.ReconnectMinDelay, c.ReconnectMaxDelay = time.Second, time.Second
		return c
	}
	ls := newSink()
	l := listen(t, cfg(ls))
	p := newProxy(t, l.Addr())
	ds := newSink()
	d := dial(t, p.addr(), cfg(ds))
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)
	// Idle for longer than the timeout: heartbeats alone keep both lanes
	// up.
	time.Sleep(timeout + interval)
	for _, tr := range []*Transport{d, l} {
		noLaneDown(t, tr, "idle lane declared dead although heartbeats flowed")
	}
	// The upper bound assumes the watchdog's ticks come on time; a loaded
	// host makes them late, so a ticker like the watchdog's measures in
	// the same window how late this host's ticks are, and the bound takes
	// that on.
	stopLateness := make(chan struct{})
	lateness := make(chan time.Duration, 1)
	go func() {
		period := interval / watchdogTicksPerInterval
		tk := time.NewTicker(period)
		defer tk.Stop()
		var late time.Duration
		for prev := time.Now(); ; {
			select {
			case <-stopLateness:
				lateness <- late
				return
			case <-tk.C:
				now := time.Now()
				late = max(late, now.Sub(prev)-period)
				prev = now
			}
		}
	}()
	p.blackhole.Store(true)
	var downs [2][LaneCount]Event
	for i, tr := range []*Transport{d, l} {
		downs[i] = waitLanesDown(t, tr)
	}
	close(stopLateness)
	late := <-lateness
	for i, tr := range []*Transport{d, l} {
		// The peer is silent once no lane hears it: the upper bound
		// counts from its last byte on any lane.
		peerLast := p.lastRelay(LaneControl, tr == l)
		if b := p.lastRelay(LaneBulk, tr == l); b.After(peerLast) {
			peerLast = b
		}
		for lane, ev := range downs[i] {
			silence := ev.Time.Sub(p.lastRelay(Lane(lane), tr == l))
			peerSilence := ev.Time.Sub(peerLast)
			t.Logf("%s lane: loss reported %v after the last relayed byte (bounds %v..%v, ticks up to %v late)", Lane(lane), silence, timeout, interval+timeout, late)
			var he *HeartbeatTimeoutError
			if !errors.As(ev.Err, &he) {
				t.Fatalf("%s lane down with %v, want a heartbeat timeout", Lane(lane), ev.Err)
			}
			// Two ticks late at most: the one that saw the last byte
			// and the one that saw the silence.
			if bound := interval + timeout + 2*late; peerSilence > bound {
				t.Errorf("%s lane: loss reported %v after the peer's last byte on any lane, bound is interval+timeout = %v, and 2 × %v for this host's late ticks", Lane(lane), peerSilence, interval+timeout, late)
			}
			// No slack: the proxy stamps a chunk before it writes it,
			// so the transport had it no earlier, and the watchdog
			// takes the time at which it saw it no earlier either.
			if silence < timeout {
				t.Errorf("%s lane: loss reported after %v of silence, before the timeout %v", Lane(lane), silence, timeout)
			}
		}
	}
}
