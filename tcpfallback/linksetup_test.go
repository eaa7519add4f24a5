package tcpfallback

import (
	"errors"
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
