package transport

import "testing"

func TestOnlyCheckpointsTravelOnTheBulkLane(t *testing.T) {
	for typ := Type(0); typ < 255; typ++ {
		if !typ.User() {
			// Heartbeats go on both lanes, a link set-up on the control
			// lane only; no other internal type once set up.
			if typ.AllowedOn(LaneControl) != (typ == TypeHeartbeat || typ == TypeLinkSetup) || typ.AllowedOn(LaneBulk) != (typ == TypeHeartbeat) {
				t.Errorf("%s: allowed on a lane although not a user type", typ)
			}
			continue
		}
		wantBulk := typ == TypeCheckpoint
		if (LaneOf(typ) == LaneBulk) != wantBulk || typ.AllowedOn(LaneBulk) != wantBulk || typ.AllowedOn(LaneControl) == wantBulk {
			t.Errorf("%s: lane %s, allowed on bulk %v, on control %v", typ, LaneOf(typ), typ.AllowedOn(LaneBulk), typ.AllowedOn(LaneControl))
		}
		if !typ.Known() {
			t.Errorf("user type %s not known", typ)
		}
	}
	if Type(99).Known() || Type(99).String() != "type(99)" {
		t.Errorf("type 99: known %v, %q", Type(99).Known(), Type(99))
	}
}
