package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// The daemon tells the agent which of its transports a frame came on, so
// that a frame that is not a protocol message drops that transport's
// connection (the agent alone, not yet running, would drop nothing).
func TestDaemonDropsTheConnectionABadFrameCameOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	const vmID = "vm-badframe"
	ag, err := agent.New(agent.Config{
		Node:    lockstep.Config{VMID: vmID, Role: wire.RoleSecondary, Mode: lockstep.AckOnCompare},
		NewVM:   func(vmm.ExitHook) (agent.VM, error) { return nil, errors.New("no VM in this test") },
		Arbiter: arbiter.NewMemory(),
		Logger:  quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cfg: &daemonConfig{}, log: quiet, ag: ag, fence: newTxFence(time.Second, time.Second, 100*time.Millisecond)}
	tcp := tcpfallback.Config{VMID: vmID, PSK: bytes.Repeat([]byte{7}, tcpfallback.MinPSKBytes),
		ReconnectMinDelay: 5 * time.Millisecond, ReconnectMaxDelay: 50 * time.Millisecond,
		// Slow heartbeats: a loaded machine must not lose the lane first.
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 5 * time.Second,
		OnFrame: func(transport.Frame) { t.Error("ringConfig left the OnFrame it was given") }}
	var src frameSource
	l, err := rdma.Listen("127.0.0.1:0", d.ringConfig(tcp, nil, &src))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	src.set(l)
	hostileCfg := tcp
	hostileCfg.OnFrame = func(transport.Frame) {}
	hostile, err := rdma.Dial(ctx, l.Addr(), rdma.Config{TCP: hostileCfg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer hostile.Close()
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := hostile.Send(transport.TypeControl, []byte("garbage that passes the transport's checks")); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-l.Events():
			if ev.Kind != transport.EventLaneDown || ev.Lane != transport.LaneControl {
				continue
			}
			if !errors.Is(ev.Err, agent.ErrBadFrame) {
				t.Fatalf("the listener lost its control lane with %v, want agent.ErrBadFrame", ev.Err)
			}
			if n := ag.Stats().FrameErrors; n != 1 {
				t.Fatalf("FrameErrors %d, want 1", n)
			}
			return
		case <-ctx.Done():
			t.Fatal("the bad frame dropped no connection")
		}
	}
}
