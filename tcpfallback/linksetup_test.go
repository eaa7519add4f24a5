package tcpfallback

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// A link-setup frame reaches OnLinkSetup, in order with the frames OnFrame
// gets, and never OnFrame; a transport without OnLinkSetup drops it.
func TestLinkSetupFramesGoToOnLinkSetupInOrder(t *testing.T) {
	setups := newSink()
	d, _, _, ls := pair(t, func(c *Config) { c.OnLinkSetup = setups.on })
	if err := d.Send(TypeLog, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if err := d.SendLinkSetup([]byte("setup")); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(TypeLog, []byte("after")); err != nil {
		t.Fatal(err)
	}
	got := ls.waitN(t, 2)
	s := setups.waitN(t, 1)
	if string(got[0].Payload) != "before" || string(got[1].Payload) != "after" || got[1].Seq != 2 {
		t.Fatalf("OnFrame got %q seq %d, %q seq %d", got[0].Payload, got[0].Seq, got[1].Payload, got[1].Seq)
	}
	if s[0].Type != TypeLinkSetup || string(s[0].Payload) != "setup" || s[0].Seq != 1 {
		t.Fatalf("OnLinkSetup got %s %q seq %d, want link-setup \"setup\" seq 1", s[0].Type, s[0].Payload, s[0].Seq)
	}

	d2, _, _, ls2 := pair(t, nil)
	d2.SendLinkSetup([]byte("dropped"))
	d2.Send(TypeAck, []byte("next"))
	if f := ls2.waitN(t, 1); string(f[0].Payload) != "next" {
		t.Fatalf("without OnLinkSetup OnFrame got %q", f[0].Payload)
	}
}

// DropLane closes the lane as a failure would: both ends see it down, and
// the dialer reconnects.
func TestDropLaneReconnects(t *testing.T) {
	d, l, _, _ := pair(t, nil)
	drainEvents(d)
	drainEvents(l)
	d.DropLane(LaneControl, errors.New("planted"))
	if ev := waitEvent(t, d, EventLaneDown, int(LaneControl)); ev.Err == nil || ev.Err.Error() != "planted" {
		t.Fatalf("dialer's lane down: %v", ev.Err)
	}
	waitEvent(t, l, EventLaneDown, int(LaneControl))
	waitEvent(t, l, EventLaneUp, int(LaneControl))
}

// DropLane from OnFrame ends delivery at once: frames already in the
// reader's buffer behind the one that dropped the lane belong to a dead
// connection and must not reach OnFrame (the agent drops a lane on a
// frame it cannot parse: what follows in that stream is out of step).
func TestDropLaneFromOnFrameDeliversNothingMore(t *testing.T) {
	ls := newSink()
	var l *Transport
	var dropped atomic.Bool
	lc := testConfig(ls)
	lc.OnFrame = func(f Frame) {
		ls.on(f)
		if string(f.Payload) == "bad" && dropped.CompareAndSwap(false, true) {
			l.DropLane(f.Lane, errors.New("planted: a frame that does not parse"))
		}
	}
	l = listen(t, lc)
	d := dial(t, l.Addr(), testConfig(newSink()))
	waitConnected(t, l)
	drainEvents(l)
	// One writev: the bad frame and ten behind it arrive in one read.
	span := AppendRecord(nil, []byte("bad"))
	for i := range 10 {
		span = AppendRecord(span, fmt.Appendf(nil, "after-%d", i))
	}
	if _, err := d.SendSpan(TypeLog, span); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, l, EventLaneDown, int(LaneControl))
	if ev.Err == nil || !strings.Contains(ev.Err.Error(), "planted") {
		t.Fatalf("listener's lane down: %v, want the reason DropLane gave", ev.Err)
	}
	if ev.Peer == "" {
		t.Fatal("lane down names no peer")
	}
	// The dialer reconnects; whatever it sends then is delivered.
	waitEvent(t, l, EventLaneUp, int(LaneControl))
	if err := sendRetry(t, d, TypeLog, []byte("fresh")); err != nil {
		t.Fatal(err)
	}
	fs := ls.wait(t, "the frame sent after the reconnection", func(fs []Frame) bool {
		return len(fs) > 0 && string(fs[len(fs)-1].Payload) == "fresh"
	})
	for _, f := range fs {
		if strings.HasPrefix(string(f.Payload), "after-") {
			t.Fatalf("frame %q, behind the one that dropped the lane, was delivered", f.Payload)
		}
	}
}
