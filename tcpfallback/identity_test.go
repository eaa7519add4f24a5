package tcpfallback

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// identityCerts writes a CA and certificates for a and b, and one for x
// signed by the same CA: a host the pair does not expect.
func identityCerts(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteTestCertificates(dir, "a", "b"); err != nil {
		t.Fatal(err)
	}
	if err := AddTestCertificate(dir, "x"); err != nil {
		t.Fatal(err)
	}
	return dir
}

// dialErr dials and returns the error (the transport is closed if the
// dial succeeded). Dial retries a listener that is busy with another peer
// until its context ends: patience bounds that.
func dialErr(t *testing.T, addr string, cfg Config) error {
	t.Helper()
	return dialErrWithin(t, addr, cfg, hangGuard)
}

func dialErrWithin(t *testing.T, addr string, cfg Config, patience time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	tr, err := Dial(ctx, addr, cfg)
	if err == nil {
		tr.Close()
	}
	return err
}

// noLaneDown fails if tr reported a lane lost among the events queued so far.
func noLaneDown(t *testing.T, tr *Transport, what string) {
	t.Helper()
	for {
		select {
		case ev := <-tr.Events():
			if ev.Kind == EventLaneDown {
				t.Fatalf("%s: a lane was lost: %s", what, ev)
			}
		default:
			return
		}
	}
}

// stillConnected checks that d's frames still reach the listener's sink.
func stillConnected(t *testing.T, d *Transport, ls *sink, what string) {
	t.Helper()
	n := len(ls.snapshot())
	if err := d.Send(TypeLog, []byte(what)); err != nil {
		t.Fatalf("%s: the right peer cannot send: %v", what, err)
	}
	ls.wait(t, what, func(fs []Frame) bool { return len(fs) > n && string(fs[len(fs)-1].Payload) == what })
}

// Issue 15, item 1: a certificate from the pair's CA that names another
// host is refused by a listener that expects b, with the name it
// presented, and the connected peer is not disturbed.
func TestCertificateForAnotherHostRefused(t *testing.T) {
	dir := identityCerts(t)
	ls, ds := newSink(), newSink()
	lc := tlsConfig(t, ls, dir, "a")
	lc.PeerNames = []string{"b"}
	l := listen(t, lc)
	bc := tlsConfig(t, ds, dir, "b")
	bc.TLS.ServerName = "a"
	d := dial(t, l.Addr(), bc)
	waitConnected(t, l)
	drainEvents(l)

	xc := tlsConfig(t, newSink(), dir, "x")
	xc.TLS.ServerName = "a"
	err := dialErr(t, l.Addr(), xc)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("dial with a certificate for x: %v, want a refusal naming x", err)
	}
	ev := waitEvent(t, l, EventPeerRejected, -1)
	if !strings.Contains(ev.Err.Error(), `"x"`) || !strings.Contains(ev.Err.Error(), "accepts only b") {
		t.Errorf("rejection event %q should name what x presented and what is accepted", ev.Err)
	}
	if r := RejectReason(ev.Err); r != RejectPeerName {
		t.Errorf("RejectReason(%q) = %q, want %q", ev.Err, r, RejectPeerName)
	}
	stillConnected(t, d, ls, "after the intruder")
	noLaneDown(t, l, "intruder with a certificate for x")
	if n := d.Stats().Lanes[LaneControl].Connects; n != 1 {
		t.Errorf("the right peer connected %d times, want 1 (never displaced)", n)
	}
}

// A listener that accepts any peer the CA signed still never lets a
// connection from another peer replace the live one; once the peer's
// connection is gone, another may connect.
func TestNewConnectionFromAnotherPeerDoesNotDisplace(t *testing.T) {
	dir := identityCerts(t)
	ls := newSink()
	l := listen(t, tlsConfig(t, ls, dir, "a")) // no PeerNames: any certificate from the CA
	bc := tlsConfig(t, newSink(), dir, "b")
	bc.TLS.ServerName = "a"
	// The first transport stands for b's old process: once replaced
	// it does not redial (two live transports with one identity take
	// the lanes from each other, as they should: each is b). A
	// successful Send from the winner would not prove it holds them:
	// it only says the bytes reached its own kernel, and the listener
	// may have closed that connection already for the other's.
	old := bc
	old.ReconnectMinDelay, old.ReconnectMaxDelay = time.Hour, time.Hour
	d := dial(t, l.Addr(), old)
	waitConnected(t, l)
	drainEvents(l)

	xc := tlsConfig(t, newSink(), dir, "x")
	xc.TLS.ServerName = "a"
	// Refused for now: Dial keeps trying (b's connection might be about
	// to be found dead) until its context ends.
	// (Its error is its last attempt's, which the deadline may cut.)
	if err := dialErrWithin(t, l.Addr(), xc, 300*time.Millisecond); err == nil {
		t.Fatal("a second connection from x was accepted while b is connected")
	}
	ev := waitEvent(t, l, EventPeerRejected, -1)
	if !strings.Contains(ev.Err.Error(), "never replaces") || errors.Is(ev.Err, ErrRefused) {
		t.Errorf("rejection %q: want a refusal for now saying x does not replace b", ev.Err)
	}
	if r := RejectReason(ev.Err); r != RejectPeerBusy {
		t.Errorf("RejectReason(%q) = %q, want %q", ev.Err, r, RejectPeerBusy)
	}
	drainEvents(l)
	stillConnected(t, d, ls, "after x tried to take the lanes")
	noLaneDown(t, l, "x tried to take the lanes")

	// The same peer reconnecting still replaces its own connection, on
	// both lanes, and closing what it replaced takes nothing down.
	d2 := dial(t, l.Addr(), bc)
	waitLanesDown(t, l)
	stillConnected(t, d2, ls, "b reconnected")
	drainEvents(l)
	d.Close()
	stillConnected(t, d2, ls, "b's replaced transport closed")
	noLaneDown(t, l, "b's replaced transport closed")

	// Once b is gone, x may connect: the rule is about displacing.
	d2.Close()
	waitLanesDown(t, l)
	x := dial(t, l.Addr(), xc)
	stillConnected(t, x, ls, "x after b left")
}

// The dialer checks the listener's name too: a listener whose certificate
// names x is refused even when TLS accepts the name dialed (here
// "localhost", which every test certificate carries).
func TestDialerRefusesUnexpectedListener(t *testing.T) {
	dir := identityCerts(t)
	l := listen(t, tlsConfig(t, newSink(), dir, "x"))
	bc := tlsConfig(t, newSink(), dir, "b")
	bc.TLS.ServerName = "localhost"
	bc.PeerNames = []string{"a"}
	err := dialErr(t, l.Addr(), bc)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("dialing a listener that is x: %v, want a refusal naming x", err)
	}
}

// Under a pre-shared key the name travels in the hello, covered by the
// proof of the key: a key holder that says it is x is refused by a
// listener that expects b, and does not displace b.
func TestPSKPeerNameChecked(t *testing.T) {
	ls := newSink()
	lc := testConfig(ls)
	lc.Name = "a"
	lc.PeerNames = []string{"b", "x"}
	l := listen(t, lc)

	xc := testConfig(newSink())
	xc.Name = "y"
	err := dialErr(t, l.Addr(), xc)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `"y"`) {
		t.Fatalf("PSK peer named y: %v, want a refusal naming y", err)
	}
	// The dialer may read its refusal before the listener has reported
	// it: take y's rejection now, so that it cannot stand in for x's
	// below.
	if ev := waitEvent(t, l, EventPeerRejected, -1); !strings.Contains(ev.Err.Error(), `"y"`) || RejectReason(ev.Err) != RejectPeerName {
		t.Errorf("rejection of PSK peer y: %q (%s), want a %q naming y", ev.Err, RejectReason(ev.Err), RejectPeerName)
	}

	bc := testConfig(newSink())
	bc.Name = "b"
	bc.PeerNames = []string{"a"}
	d := dial(t, l.Addr(), bc)
	waitConnected(t, l)
	drainEvents(l)

	xc.Name = "x" // accepted by name, but b holds the lanes
	if err := dialErrWithin(t, l.Addr(), xc, 300*time.Millisecond); err == nil {
		t.Fatal("PSK peer x was accepted while b is connected")
	}
	if ev := waitEvent(t, l, EventPeerRejected, -1); !strings.Contains(ev.Err.Error(), "never replaces") {
		t.Errorf("rejection of PSK peer x while b is connected: %q, want one saying x does not replace b", ev.Err)
	}
	stillConnected(t, d, ls, "after x")
	noLaneDown(t, l, "PSK peer x")

	// The dialer checks the listener's name as well.
	wrong := testConfig(newSink())
	wrong.Name = "b"
	wrong.PeerNames = []string{"c"}
	wrong.HandshakeTimeout = 2 * time.Second
	if err := dialErr(t, l.Addr(), wrong); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("dialer expecting c, listener a: %v, want a refusal naming a", err)
	}
}
