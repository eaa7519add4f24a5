package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// droppingTransport records the lanes the agent drops.
type droppingTransport struct {
	loggedTransport
	drops []error
}

func (t *droppingTransport) DropLane(l transport.Lane, err error) string {
	t.drops = append(t.drops, err)
	return "192.0.2.7:7070"
}

// A frame that does not parse drops the connection it came on, every
// time, and is counted; a burst of them costs one log line, naming the
// peer and the reason.
func TestBadFrameDropsItsConnection(t *testing.T) {
	var buf bytes.Buffer
	a, err := New(Config{
		Node:    lockstep.Config{VMID: testVMID, Role: wire.RoleSecondary, Mode: lockstep.AckOnCompare},
		NewVM:   func(vmm.ExitHook) (VM, error) { return &loggedVM{log: &opLog{}}, nil },
		Arbiter: arbiter.NewMemory(),
		Logger:  slog.New(slog.NewTextHandler(&buf, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := &droppingTransport{loggedTransport: loggedTransport{log: &opLog{}}}
	a.tr = tr
	a.started.Store(true)
	good := (&wire.Heartbeat{LastSeq: 1}).Append(nil)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 0xff // the message's CRC
	for range 5 {
		a.HandleFrame(transport.Frame{Lane: transport.LaneControl, Type: transport.TypeControl, Payload: bad})
	}
	if n := a.Stats().FrameErrors; n != 5 {
		t.Fatalf("FrameErrors %d, want 5", n)
	}
	if len(tr.drops) != 5 {
		t.Fatalf("%d connections dropped for 5 bad frames", len(tr.drops))
	}
	for _, err := range tr.drops {
		if !errors.Is(err, ErrBadFrame) || !errors.Is(err, wire.ErrChecksum) {
			t.Fatalf("dropped with %v, want ErrBadFrame and the parse error", err)
		}
	}
	out := buf.String()
	if strings.Count(out, "does not parse") != 1 || !strings.Contains(out, "192.0.2.7:7070") || !strings.Contains(out, "CRC32C") {
		t.Fatalf("want one log line naming the peer and the reason, got:\n%s", out)
	}
	// A frame that parses drops nothing.
	a.HandleFrame(transport.Frame{Lane: transport.LaneControl, Type: transport.TypeControl, Payload: good})
	if len(tr.drops) != 5 || a.Stats().FrameErrors != 5 {
		t.Fatalf("a good frame: %d drops, %d frame errors", len(tr.drops), a.Stats().FrameErrors)
	}
}

// A hostile peer that authenticates and then sends garbage loses its
// connection, which it makes again; the agent serving the VM goes on.
func TestHostilePeerGarbageDropsConnectionNotVM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var logs syncBuffer
	a := newIdlePrimary(t, slog.New(slog.NewTextHandler(&logs, nil)))
	cfg := func(on func(transport.Frame)) tcpfallback.Config {
		return tcpfallback.Config{VMID: testVMID, PSK: testPSK, OnFrame: on,
			ReconnectMinDelay: 5 * time.Millisecond, ReconnectMaxDelay: 50 * time.Millisecond,
			// Slow heartbeats: a loaded machine must not lose the lane first.
			HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 5 * time.Second}
	}
	lt, err := tcpfallback.Listen("127.0.0.1:0", cfg(a.HandleFrame))
	if err != nil {
		t.Fatal(err)
	}
	defer lt.Close()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx, lt) }()
	hostile, err := tcpfallback.Dial(ctx, lt.Addr(), cfg(func(transport.Frame) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer hostile.Close()
	waitEv := func(tr *tcpfallback.Transport, kind transport.EventKind) transport.Event {
		t.Helper()
		for {
			select {
			case ev := <-tr.Events():
				if ev.Kind == kind && ev.Lane == transport.LaneControl {
					return ev
				}
			case err := <-runErr:
				t.Fatalf("the agent stopped: %v", err)
			case <-ctx.Done():
				t.Fatalf("no %s event", kind)
			}
		}
	}
	waitEv(hostile, transport.EventLaneUp)
	if err := hostile.Send(transport.TypeControl, []byte("not a protocol message, though it passes the transport's CRC")); err != nil {
		t.Fatal(err)
	}
	down := waitEv(lt, transport.EventLaneDown)
	if !errors.Is(down.Err, ErrBadFrame) {
		t.Fatalf("the agent's side lost the lane with %v, want ErrBadFrame", down.Err)
	}
	waitEv(hostile, transport.EventLaneDown)
	waitEv(hostile, transport.EventLaneUp) // the peer connects again
	if n := a.Stats().FrameErrors; n != 1 {
		t.Fatalf("FrameErrors %d, want 1", n)
	}
	select {
	case err := <-runErr:
		t.Fatalf("the agent stopped on a bad frame: %v", err)
	default:
	}
	if st := a.Status(); st.Role != lockstep.RolePrimary {
		t.Fatalf("after the bad frame the node is %v, want primary", st.Role)
	}
	out := logs.String()
	if !strings.Contains(out, "does not parse") || !strings.Contains(out, "peer=127.0.0.1:") || !strings.Contains(out, "wire:") {
		t.Fatalf("want a log line naming the peer and the reason, got:\n%s", out)
	}
	a.Stop()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// newIdlePrimary is a primary agent whose VM makes no exits, for tests
// that Run it against a real transport.
func newIdlePrimary(t *testing.T, log *slog.Logger) *Agent {
	t.Helper()
	a, err := New(Config{
		Node:         lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnCompare},
		NewVM:        func(vmm.ExitHook) (VM, error) { return &loggedVM{log: &opLog{}}, nil },
		Boot:         func(VM) error { return nil },
		Arbiter:      arbiter.NewMemory(),
		TickInterval: 5 * time.Millisecond,
		Logger:       log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}
