package tcpfallback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// Each bad peer is refused with an error that names what was wrong, on both
// sides where the bad peer can understand it, and the listener then serves
// the right peer.
func TestListenerRefusesBadPeersAndServesTheRightOne(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mutate     func(*Config)
		dialerSays []string // in the bad dialer's error
		listenSays []string // in the listener's EventPeerRejected
		refused    bool     // errors.Is(err, ErrRefused) on the dialer
	}{
		{"wrong protocol version", func(c *Config) { c.protocolVersion = ProtocolVersion + 1 },
			[]string{"protocol version mismatch", fmt.Sprintf("peer speaks %d, this host speaks %d", ProtocolVersion, ProtocolVersion+1)},
			[]string{"refused by the peer", "protocol version mismatch"}, true},
		{"wrong VM id", func(c *Config) { c.VMID = "some-other-vm" },
			[]string{"VM id mismatch", `"vm-test"`, `"some-other-vm"`},
			[]string{"refused by the peer", "VM id mismatch"}, true},
		{"wrong pre-shared key", func(c *Config) { c.PSK = []byte("an-entirely-different-key-000000") },
			[]string{"refused by the peer", "pre-shared key proof does not match"},
			[]string{"pre-shared key proof does not match"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls := newSink()
			l := listen(t, testConfig(ls))
			bad := testConfig(newSink())
			tc.mutate(&bad)
			_, err := Dial(context.Background(), l.Addr(), bad)
			mustContain(t, err, tc.dialerSays...)
			if errors.Is(err, ErrRefused) != tc.refused {
				t.Errorf("errors.Is(err, ErrRefused) = %v, want %v", !tc.refused, tc.refused)
			}
			ev := waitEvent(t, l, EventPeerRejected, -1)
			mustContain(t, ev.Err, tc.listenSays...)
			if l.Stats().HandshakeFailures == 0 {
				t.Error("handshake failure not counted")
			}
			ds := newSink()
			d := dial(t, l.Addr(), testConfig(ds))
			waitConnected(t, l)
			exchange(t, d, l, ds, ls)
		})
	}
}

func TestTLSRefusesCertificatesFromAnotherCA(t *testing.T) {
	good, other := t.TempDir(), t.TempDir()
	if err := WriteTestCertificates(good, "primary", "secondary"); err != nil {
		t.Fatal(err)
	}
	if err := WriteTestCertificates(other, "primary"); err != nil {
		t.Fatal(err)
	}
	ls := newSink()
	l := listen(t, tlsConfig(t, ls, good, "secondary"))

	// A dialer whose certificate the listener's CA did not sign, and which
	// does not trust the listener either.
	_, err := Dial(context.Background(), l.Addr(), tlsConfig(t, newSink(), other, "primary"))
	mustContain(t, err, "TLS set-up", "certificate")
	ev := waitEvent(t, l, EventPeerRejected, -1)
	mustContain(t, ev.Err, "TLS set-up")

	// A dialer that trusts the listener but presents a certificate from
	// another CA: the listener must refuse it (client certs are verified).
	mixed := tlsConfig(t, newSink(), other, "primary")
	mixed.TLS.RootCAs = tlsConfig(t, newSink(), good, "primary").TLS.RootCAs
	_, err = Dial(context.Background(), l.Addr(), mixed)
	if err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
	ev = waitEvent(t, l, EventPeerRejected, -1)
	mustContain(t, ev.Err, "certificate")

	// A PSK dialer at a TLS listener: set-up fails with a message, not a hang.
	_, err = Dial(context.Background(), l.Addr(), testConfig(newSink()))
	if err == nil {
		t.Fatal("PSK dialer accepted by TLS listener")
	}
	waitEvent(t, l, EventPeerRejected, -1)

	ds := newSink()
	d := dial(t, l.Addr(), tlsConfig(t, ds, good, "primary"))
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)
}

func TestGarbagePeerIsDropped(t *testing.T) {
	ls := newSink()
	l := listen(t, testConfig(ls))
	for _, garbage := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: secondary\r\n\r\n"),
		appendFrame(nil, TypeLog, 0, 0, []byte("data before hello")),
		appendFrame(nil, TypeHello, 0, 0, []byte("XXXX not a hello")),
	} {
		c, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(garbage)
		c.SetReadDeadline(time.Now().Add(hangGuard))
		// The listener closes on us (possibly after a refusal frame).
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
		ev := waitEvent(t, l, EventPeerRejected, -1)
		var fe *FrameError
		var re *refusedError
		if !errors.As(ev.Err, &fe) && !errors.As(ev.Err, &re) {
			t.Fatalf("rejection %v names neither a bad frame nor a refusal", ev.Err)
		}
		t.Logf("garbage %q: %v", garbage[:8], ev.Err)
	}
	ds := newSink()
	d := dial(t, l.Addr(), testConfig(ds))
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)
}

// A peer that connects and says nothing must not block the right peer, and
// is dropped at the handshake deadline.
func TestSilentPeerDoesNotBlockRightPeer(t *testing.T) {
	ls := newSink()
	lc := testConfig(ls)
	lc.HandshakeTimeout = 500 * time.Millisecond
	l := listen(t, lc)
	silent, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	ds := newSink()
	d := dial(t, l.Addr(), testConfig(ds))
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)

	ev := waitEvent(t, l, EventPeerRejected, -1)
	mustContain(t, ev.Err, "timeout")
	silent.SetReadDeadline(time.Now().Add(hangGuard))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("silent peer was not disconnected")
	}
}

// A dialer whose listener accepts and says nothing gives up at its deadline.
func TestDialerHandshakeDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	c := testConfig(newSink())
	c.HandshakeTimeout = 300 * time.Millisecond
	_, err = Dial(context.Background(), ln.Addr().String(), c)
	mustContain(t, err, "set-up", "timeout")
}

// Dial waits for a listener that is not up yet, reporting each attempt.
func TestDialRetriesUntilListenerIsUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now

	ls := newSink()
	lc := testConfig(ls)
	started := make(chan *Transport, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		l, err := Listen(addr, lc)
		if err != nil {
			t.Error(err)
			l = nil
		}
		started <- l
	}()
	ds := newSink()
	d := dial(t, addr, testConfig(ds))
	l := <-started
	if l == nil {
		t.FailNow()
	}
	defer l.Close()
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)
	ev := waitEvent(t, d, EventConnectFailed, -1)
	mustContain(t, ev.Err, "connecting to", "refused")
}

// A flood of silent connections, more than maxPendingHandshakes, evicts its
// own oldest members; the right peer still gets through, and memory stays
// bounded.
func TestSilentFloodDoesNotLockOutRightPeer(t *testing.T) {
	ls := newSink()
	l := listen(t, testConfig(ls))
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for range 3 * maxPendingHandshakes {
		c, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	ev := waitEvent(t, l, EventPeerRejected, -1)
	mustContain(t, ev.Err, "evicted")
	ds := newSink()
	d := dial(t, l.Addr(), testConfig(ds))
	waitConnected(t, l)
	exchange(t, d, l, ds, ls)
	l.mu.Lock()
	n := len(l.pending)
	l.mu.Unlock()
	if n > 2*maxPendingHandshakes {
		t.Fatalf("%d connections in set-up, bound is %d", n, 2*maxPendingHandshakes)
	}
}

func TestBackoffIsBoundedJitteredAndGrows(t *testing.T) {
	tr := newTransport(Config{ReconnectMinDelay: 10 * time.Millisecond, ReconnectMaxDelay: 300 * time.Millisecond})
	seen := map[time.Duration]bool{}
	for n := range 12 {
		ceiling := min(10*time.Millisecond<<n, 300*time.Millisecond)
		for range 50 {
			d := tr.backoff(n)
			if d < ceiling/2 || d > ceiling {
				t.Fatalf("attempt %d: delay %v outside [%v, %v]", n, d, ceiling/2, ceiling)
			}
			seen[d] = true
		}
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct delays in 600 draws: not jittered", len(seen))
	}
}

// A dialer with ReconnectMaxAttempts stops after that many failures in a
// row and says so.
func TestDialerGivesUp(t *testing.T) {
	ls := newSink()
	l := listen(t, testConfig(ls))
	p := newProxy(t, l.Addr())
	ds := newSink()
	dc := testConfig(ds)
	dc.ReconnectMaxAttempts = 3
	d := dial(t, p.addr(), dc)
	waitConnected(t, l)
	p.ln.Close() // nothing answers at the proxy's address any more
	p.cut()
	for range LaneCount {
		ev := waitEvent(t, d, EventGaveUp, -1)
		mustContain(t, ev.Err, "gave up after 3 attempts")
	}
	for _, typ := range []Type{TypeLog, TypeCheckpoint} {
		if err := d.Send(typ, []byte("x")); !errors.Is(err, ErrLaneDown) {
			t.Fatalf("%s after the dialer gave up: %v, want ErrLaneDown", typ, err)
		}
	}
}
