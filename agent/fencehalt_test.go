package agent

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/rdma/shm"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
)

var _ Fencer = (*rdma.Transport)(nil)

// A primary that learns of a newer epoch from its peer halts, and takes
// the peer's right to write into its ring before Run returns: what the
// peer writes after that is never delivered, and the peer loses the
// connection.
func TestDeposedPrimaryFencesItsRing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := newIdlePrimary(t, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	cfg := func(on func(transport.Frame)) rdma.Config {
		return rdma.Config{Provider: shm.Provider{Dir: dir}, Logger: slog.New(slog.DiscardHandler), TCP: tcpfallback.Config{
			VMID: testVMID, PSK: testPSK, OnFrame: on,
			ReconnectMinDelay: 5 * time.Millisecond, ReconnectMaxDelay: 50 * time.Millisecond,
			HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 5 * time.Second,
		}}
	}
	lt, err := rdma.Listen("127.0.0.1:0", cfg(a.HandleFrame))
	if err != nil {
		t.Fatal(err)
	}
	defer lt.Close()
	peer, err := rdma.Dial(ctx, lt.Addr(), cfg(func(transport.Frame) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	for !peer.RingUp() || !lt.RingUp() {
		if ctx.Err() != nil {
			t.Fatal("the shm ring did not come up")
		}
		time.Sleep(time.Millisecond)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx, lt) }()
	for a.Status().Epoch == 0 {
		time.Sleep(time.Millisecond)
	}
	newer := (&wire.Heartbeat{Header: wire.Header{Epoch: 5}}).Append(nil)
	if err := peer.Send(transport.TypeControl, newer); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if !errors.Is(err, ErrHalted) {
			t.Fatalf("Run: %v, want ErrHalted", err)
		}
	case <-ctx.Done():
		t.Fatal("a primary told of a newer epoch did not halt")
	}
	before := lt.RingFrames()
	lost := false
	for i := 0; i < 50; i++ {
		if err := peer.Send(transport.TypeControl, newer); err != nil {
			lost = true
		}
	}
	time.Sleep(50 * time.Millisecond) // for a poller that would deliver them
	if got := lt.RingFrames(); got != before {
		t.Fatalf("%d frames the peer wrote into the halted host's ring were delivered: it was not fenced", got-before)
	}
	for !lost {
		select {
		case ev := <-peer.Events():
			lost = ev.Kind == transport.EventLaneDown && ev.Lane == transport.LaneControl
		case <-ctx.Done():
			t.Fatal("the peer never lost its connection to the halted host")
		}
	}
}
