package tcpfallback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var testPSK = []byte("ftvm-test-pre-shared-key-32bytes")

// hangGuard bounds how long a test waits for something that should happen;
// it only turns a hang into a failure and says nothing about speed.
const hangGuard = 20 * time.Second

// sink collects frames delivered to OnFrame, copying payloads.
type sink struct {
	mu     sync.Mutex
	frames []Frame
	notify chan struct{}
}

func newSink() *sink { return &sink{notify: make(chan struct{}, 1)} }

func (s *sink) on(f Frame) {
	f.Payload = append([]byte(nil), f.Payload...)
	s.mu.Lock()
	s.frames = append(s.frames, f)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *sink) snapshot() []Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Frame(nil), s.frames...)
}

// wait returns once pred holds for the frames received so far.
func (s *sink) wait(t *testing.T, what string, pred func([]Frame) bool) []Frame {
	t.Helper()
	deadline := time.After(hangGuard)
	for {
		fs := s.snapshot()
		if pred(fs) {
			return fs
		}
		select {
		case <-s.notify:
		case <-deadline:
			t.Fatalf("waiting for %s: have %d frames", what, len(fs))
		}
	}
}

func (s *sink) waitN(t *testing.T, n int) []Frame {
	t.Helper()
	return s.wait(t, "frames", func(fs []Frame) bool { return len(fs) >= n })
}

// testConfig is a PSK configuration with heartbeats slow enough that a
// loaded machine running the race detector does not see false losses.
func testConfig(s *sink) Config {
	return Config{
		VMID:              "vm-test",
		PSK:               testPSK,
		OnFrame:           s.on,
		HeartbeatInterval: 50 * time.Millisecond,
		HeartbeatTimeout:  2 * time.Second,
		ReconnectMinDelay: 5 * time.Millisecond,
		ReconnectMaxDelay: 100 * time.Millisecond,
		HandshakeTimeout:  5 * time.Second,
	}
}

// listen starts a listener on loopback and closes it at the end of the test.
func listen(t *testing.T, cfg Config) *Transport {
	t.Helper()
	l, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func dial(t *testing.T, addr string, cfg Config) *Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	d, err := Dial(ctx, addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func waitConnected(t *testing.T, tr *Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := tr.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
}

// pair returns a connected dialer and listener and their sinks.
func pair(t *testing.T, mutate func(*Config)) (d, l *Transport, ds, ls *sink) {
	t.Helper()
	ds, ls = newSink(), newSink()
	lc, dc := testConfig(ls), testConfig(ds)
	if mutate != nil {
		mutate(&lc)
		mutate(&dc)
	}
	l = listen(t, lc)
	d = dial(t, l.Addr(), dc)
	waitConnected(t, l)
	return d, l, ds, ls
}

// tlsConfig is testConfig with this host's certificates from dir instead of
// the PSK.
func tlsConfig(t *testing.T, s *sink, dir, host string) Config {
	t.Helper()
	c := testConfig(s)
	c.PSK = nil
	var err error
	if c.TLS, err = LoadTLSConfig(dir, host); err != nil {
		t.Fatal(err)
	}
	return c
}

// pairTLS is pair with mutual TLS, certificates from dir for hosts
// "primary" (dialer) and "secondary" (listener).
func pairTLS(t *testing.T, dir string, mutate func(*Config)) (d, l *Transport, ds, ls *sink) {
	t.Helper()
	ds, ls = newSink(), newSink()
	lc, dc := tlsConfig(t, ls, dir, "secondary"), tlsConfig(t, ds, dir, "primary")
	if mutate != nil {
		mutate(&lc)
		mutate(&dc)
	}
	l = listen(t, lc)
	d = dial(t, l.Addr(), dc)
	waitConnected(t, l)
	return d, l, ds, ls
}

// waitEvent reads events until one of kind arrives (and lane, if lane ≥ 0).
func waitEvent(t *testing.T, tr *Transport, kind EventKind, lane int) Event {
	t.Helper()
	deadline := time.After(hangGuard)
	for {
		select {
		case ev, ok := <-tr.Events():
			if !ok {
				t.Fatalf("events closed while waiting for %s", kind)
			}
			if ev.Kind == kind && (lane < 0 || ev.Lane == Lane(lane)) {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event", kind)
		}
	}
}

// drainEvents discards the events queued so far.
func drainEvents(tr *Transport) {
	for {
		select {
		case <-tr.Events():
		default:
			return
		}
	}
}

// waitLanesDown returns the first EventLaneDown of each lane.
func waitLanesDown(t *testing.T, tr *Transport) [LaneCount]Event {
	t.Helper()
	var got [LaneCount]Event
	deadline := time.After(hangGuard)
	for n := 0; n < LaneCount; {
		select {
		case ev := <-tr.Events():
			if ev.Kind == EventLaneDown && got[ev.Lane].Kind == 0 {
				got[ev.Lane] = ev
				n++
			}
		case <-deadline:
			t.Fatalf("lanes down so far: %v", got)
		}
	}
	return got
}

// fmtSscan reads the number back out of a payloadFor payload.
func fmtSscan(p []byte, i *int) (int, error) { return fmt.Sscanf(string(p), "entry-%05d-", i) }

func mustContain(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

// exchange proves a pair works: a log frame one way, an ack back.
func exchange(t *testing.T, d, l *Transport, ds, ls *sink) {
	t.Helper()
	nl, nd := len(ls.snapshot()), len(ds.snapshot())
	if err := sendRetry(t, d, TypeLog, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	ls.waitN(t, nl+1)
	if err := sendRetry(t, l, TypeAck, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	got := ds.waitN(t, nd+1)
	if f := got[nd]; f.Type != TypeAck || string(f.Payload) != "pong" {
		t.Fatalf("got %s %q, want ack \"pong\"", f.Type, f.Payload)
	}
}

// sendRetry sends, waiting out a lane that is reconnecting.
func sendRetry(t *testing.T, tr *Transport, typ Type, p []byte) error {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		err := tr.Send(typ, p)
		if !errors.Is(err, ErrLaneDown) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Millisecond)
	}
}

// proxy is a user-space TCP proxy on loopback that can delay, corrupt,
// drop, black-hole and cut the byte streams it relays.
type proxy struct {
	ln     net.Listener
	target string

	delay     atomic.Int64 // nanoseconds to hold each chunk
	blackhole atomic.Bool  // read and discard everything
	flipNext  atomic.Bool  // flip one bit in the next dialer→listener chunk of the control lane
	dropNext  atomic.Int64 // drop this many bytes of the next such chunk

	mu    sync.Mutex
	conns []net.Conn
	links []*proxyLink
	wg    sync.WaitGroup
}

// proxyLink is one relayed connection: its lane (read from the dialer's
// hello as it passes) and, per direction, when it last began relaying bytes
// (stamped before the write, so no relayed byte arrives before its stamp).
type proxyLink struct {
	lane      atomic.Int32    // -1 until the hello is seen
	lastRelay [2]atomic.Int64 // UnixNano; [1] toward the listener, [0] toward the dialer
}

// helloLaneOffset: the lane byte of the hello payload, behind the header.
const helloLaneOffset = HeaderBytes + 6

// lastRelay is when the proxy last relayed bytes toward the listener (or
// the dialer) on any connection of lane.
func (p *proxy) lastRelay(lane Lane, toListener bool) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var last int64
	for _, l := range p.links {
		if l.lane.Load() == int32(lane) {
			last = max(last, l.lastRelay[b2i(toListener)].Load())
		}
	}
	return time.Unix(0, last)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		link := &proxyLink{}
		link.lane.Store(-1)
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.links = append(p.links, link)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(u, c, true, link)
		go p.pump(c, u, false, link)
	}
}

// pump copies src to dst; toListener says the direction.
func (p *proxy) pump(dst, src net.Conn, toListener bool, link *proxyLink) {
	defer p.wg.Done()
	defer func() {
		// A black hole passes on nothing, not even a close; cut()
		// closes both sides at the end.
		if !p.blackhole.Load() {
			src.Close()
			dst.Close()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if d := p.delay.Load(); d > 0 {
				time.Sleep(time.Duration(d))
			}
			if p.blackhole.Load() {
				chunk = nil
			}
			// Damage goes to the control lane, where the test streams.
			if toListener && len(chunk) > 0 && link.lane.Load() == int32(LaneControl) {
				if p.flipNext.CompareAndSwap(true, false) {
					chunk[len(chunk)/2] ^= 0x10
				}
				if k := p.dropNext.Swap(0); k > 0 {
					k = min(k, int64(len(chunk)))
					chunk = chunk[k:]
				}
			}
			if len(chunk) == 0 {
				continue
			}
			if toListener && link.lane.Load() < 0 && len(chunk) > helloLaneOffset {
				link.lane.Store(int32(chunk[helloLaneOffset]))
			}
			link.lastRelay[b2i(toListener)].Store(time.Now().UnixNano())
			if _, werr := dst.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or closed: dst is closed by the defer, as a relay would
		}
	}
}

// cut closes every relayed connection, as a failed switch would.
func (p *proxy) cut() {
	p.mu.Lock()
	cs := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}
