package tcpfallback

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// smallBuffers: socket buffers small enough that a few frames fill them.
const smallBufferBytes = 16 << 10

// stuckPair connects a dialer to a listener whose OnFrame blocks until
// release is closed, so that the listener reads nothing more while its
// connection stays alive: its watchdog waits a long time (so it does not
// end the test by declaring the dialer dead) and it sends heartbeats, so
// the dialer hears from it and its own watchdog sees no loss either. Only
// a deadline on the dialer's writes can end a send.
func stuckPair(t *testing.T, mutate func(*Config)) (d *Transport, release func()) {
	t.Helper()
	stuck := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(stuck) }) }
	lc := testConfig(nil)
	lc.OnFrame = func(Frame) { <-stuck }
	lc.HeartbeatTimeout = hangGuard
	lc.ControlSocketBufferBytes = smallBufferBytes
	l := listen(t, lc)
	dc := testConfig(newSink())
	dc.HeartbeatInterval = 20 * time.Millisecond
	dc.HeartbeatTimeout = 400 * time.Millisecond
	dc.ControlSocketBufferBytes = smallBufferBytes
	if mutate != nil {
		mutate(&dc)
	}
	d = dial(t, l.Addr(), dc)
	// After listen and dial: cleanups run last first, and Close waits
	// for the reader blocked in OnFrame.
	t.Cleanup(release)
	waitConnected(t, l)
	return d, release
}

// Issue 16, item 8: a send to a peer that keeps its connection alive but
// never reads fails within the send timeout (the heartbeat timeout by
// default), and the connection is treated as lost. Without a write
// deadline it waited for as long as the peer kept the connection.
//
// "Within" is a race, not a clock: a second stuck pair whose sends time
// out after 3 × the timeout, started first, must fail later. A loaded
// host slows both alike; a deadline the length of the reference's or
// longer loses the race.
func TestSendToPeerThatNeverReadsFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		bound  func(Config) time.Duration
	}{
		{"default: DefaultSendTimeout or the heartbeat timeout", nil, func(c Config) time.Duration { return max(DefaultSendTimeout, c.HeartbeatTimeout) }},
		// A heartbeat timeout far above the reference's: a SendTimeout
		// that is ignored loses the race.
		{"SendTimeout", func(c *Config) { c.SendTimeout, c.HeartbeatTimeout = 150*time.Millisecond, 2*time.Second }, func(c Config) time.Duration { return c.SendTimeout }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := stuckPair(t, tc.mutate)
			timeout := tc.bound(d.cfg)
			ref, _ := stuckPair(t, func(c *Config) { c.SendTimeout = 3 * timeout })
			payload := bytes.Repeat([]byte{7}, 4<<10)
			var failures atomic.Int32 // the order in which the two fail
			type failure struct {
				err   error
				order int32
				took  time.Duration
			}
			sendUntilFails := func(tr *Transport) <-chan failure {
				done := make(chan failure, 1)
				go func() {
					start := time.Now()
					for {
						if err := tr.Send(TypeLog, payload); err != nil {
							done <- failure{err, failures.Add(1), time.Since(start)}
							return
						}
					}
				}()
				return done
			}
			refDone := sendUntilFails(ref)
			done := sendUntilFails(d)
			var f failure
			select {
			case f = <-done:
			case <-time.After(20 * timeout):
				t.Fatalf("Send to a peer that never reads still waits after 20 × the send timeout %v", timeout)
			}
			t.Logf("Send failed after %v (send timeout %v)", f.took, timeout)
			if f.order != 1 {
				r := <-refDone
				t.Errorf("Send failed after %v, later than a pair whose send timeout is 3 × %v (%v): the deadline is not the send timeout", f.took, timeout, r.took)
			}
			if !errors.Is(f.err, ErrLaneDown) || !strings.Contains(f.err.Error(), "SendTimeout") {
				t.Errorf("error %q should wrap ErrLaneDown and name SendTimeout", f.err)
			}
			waitEvent(t, d, EventLaneDown, int(LaneControl))
		})
	}
}

// TrySend never waits: once the peer stops reading and the buffers are
// full it says ErrWouldBlock and sends nothing, the connection stays up,
// and what it did send arrives whole and in order when the peer reads.
func TestTrySendDoesNotWait(t *testing.T) {
	stuck := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(stuck) }) }
	ls := newSink()
	lc := testConfig(nil)
	lc.OnFrame = func(f Frame) {
		<-stuck
		ls.on(f)
	}
	lc.ControlSocketBufferBytes = smallBufferBytes
	lc.HeartbeatTimeout = hangGuard // its reader is held on purpose
	l := listen(t, lc)
	dc := testConfig(newSink())
	dc.ControlSocketBufferBytes = smallBufferBytes
	d := dial(t, l.Addr(), dc)
	t.Cleanup(release) // after listen and dial: it must run before their Close
	waitConnected(t, l)

	sent := 0
	for ; ; sent++ {
		payload := make([]byte, 1<<10)
		binary.LittleEndian.PutUint32(payload, uint32(sent))
		err := d.TrySend(TypeLog, payload)
		if errors.Is(err, ErrWouldBlock) {
			break
		}
		if err != nil {
			t.Fatalf("TrySend %d: %v", sent, err)
		}
		if sent > 1<<16 {
			t.Fatal("TrySend never said ErrWouldBlock to a peer that reads nothing")
		}
	}
	if sent == 0 {
		t.Fatal("TrySend refused the first frame on an empty socket")
	}
	// A blocking Send waits for room, and goes once the peer reads.
	sendDone := make(chan error, 1)
	go func() { sendDone <- d.Send(TypeLog, bytes.Repeat([]byte{1}, 64<<10)) }()
	release()
	if err := <-sendDone; err != nil {
		t.Fatalf("the blocked Send, once the peer reads: %v", err)
	}
	got := ls.waitN(t, sent+1)
	for i := range sent {
		if n := binary.LittleEndian.Uint32(got[i].Payload); n != uint32(i) {
			t.Fatalf("frame %d carries %d: TrySend frames lost or reordered", i, n)
		}
	}
	if n := d.Stats().Lanes[LaneControl].Losses; n != 0 {
		t.Fatalf("%d losses: TrySend must not break the connection", n)
	}
}

// Issue 16, item 8: two readers that acknowledge inline, each under a lock
// (as the agent's readers do under perf), while both sides stream: with a
// blocking send each reader ends up waiting for room in its socket while
// the other waits the same way, neither reads, and both stall until the
// heartbeat timeout kills the lanes. Readers that TrySend and leave what
// does not fit to a sender goroutine keep reading, so everything arrives
// long before that timeout and no lane is lost.
func TestReadersAcknowledgingInlineDoNotDeadlock(t *testing.T) {
	const frames = 400
	heartbeatTimeout := 10 * time.Second
	type side struct {
		tr *Transport
		// mu is the lock readers send under (the agent's perf): a
		// reader only tries it, and leaves what it owes to the
		// sender when it is taken.
		mu      sync.Mutex
		pending int          // acknowledgements owed that did not fit the socket; mu
		owed    atomic.Int64 // acknowledgements owed while mu was taken
		wake    chan struct{}
		acks    chan struct{}
	}
	a := &side{wake: make(chan struct{}, 1), acks: make(chan struct{}, 2*frames)}
	b := &side{wake: make(chan struct{}, 1), acks: make(chan struct{}, 2*frames)}
	ack := bytes.Repeat([]byte{'a'}, 2<<10)
	poke := func(s *side) {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	onFrame := func(s *side) func(Frame) {
		return func(f Frame) {
			if f.Type == TypeAck {
				s.acks <- struct{}{}
				return
			}
			if !s.mu.TryLock() {
				s.owed.Add(1)
				poke(s)
				return
			}
			defer s.mu.Unlock()
			if s.pending == 0 {
				err := s.tr.TrySend(TypeAck, ack)
				if !errors.Is(err, ErrWouldBlock) {
					return
				}
			}
			s.pending++
			poke(s)
		}
	}
	// sender sends what readers left, with sends that may wait (the
	// agent's loop).
	sender := func(s *side, stop chan struct{}) {
		for {
			select {
			case <-stop:
				return
			case <-s.wake:
			}
			s.mu.Lock()
			for s.pending += int(s.owed.Swap(0)); s.pending > 0; s.pending-- {
				s.tr.Send(TypeAck, ack)
			}
			s.mu.Unlock()
			if s.owed.Load() > 0 {
				poke(s)
			}
		}
	}
	cfg := func(s *side) Config {
		c := testConfig(nil)
		c.OnFrame = onFrame(s)
		c.HeartbeatTimeout = heartbeatTimeout
		c.ControlSocketBufferBytes = smallBufferBytes
		// Small from the SYN on: the listener's sockets start with
		// the larger of the two lanes' sizes and the control lane
		// shrinks to its own after set-up. The dialer then coalesces
		// its writes into a segment sized for the window it saw first
		// (here 35 KB), larger than any window the shrunken 32 KiB
		// buffer offers, and sent nothing for seconds while its
		// window probe timer ran and the receiver's queue was empty
		// (ss: notsent 35275, snd_wnd 30208, rwnd_limited 100%,
		// lastsnd 5 s), until a send timed out: a kernel stall, not
		// a deadlock. Real buffers (≥ 1 MiB) dwarf a segment.
		c.BulkSocketBufferBytes = smallBufferBytes
		return c
	}
	// The transports' OnFrame needs s.tr: set before any frame flows.
	lc := cfg(b)
	ready := make(chan struct{})
	inner := lc.OnFrame
	lc.OnFrame = func(f Frame) { <-ready; inner(f) }
	b.tr = listen(t, lc)
	dc := cfg(a)
	dinner := dc.OnFrame
	dc.OnFrame = func(f Frame) { <-ready; dinner(f) }
	a.tr = dial(t, b.tr.Addr(), dc)
	waitConnected(t, b.tr)
	close(ready)
	stop := make(chan struct{})
	defer close(stop)
	go sender(a, stop)
	go sender(b, stop)

	start := time.Now()
	payload := bytes.Repeat([]byte{'l'}, 2<<10)
	for _, s := range []*side{a, b} {
		go func() {
			for range frames {
				if err := s.tr.Send(TypeLog, payload); err != nil {
					return
				}
			}
		}()
	}
	for _, s := range []*side{a, b} {
		for i := range frames {
			select {
			case <-s.acks:
			case <-time.After(heartbeatTimeout):
				t.Fatalf("%d of %d acknowledgements after %v: the readers deadlocked", i, frames, time.Since(start))
			}
		}
	}
	for _, s := range []*side{a, b} {
		if n := s.tr.Stats().Lanes[LaneControl].Losses; n != 0 {
			t.Fatalf("%d lanes lost: the stall lasted until a timeout", n)
		}
	}
}
