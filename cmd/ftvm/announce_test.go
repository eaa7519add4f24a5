package main

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/vmm"
)

// frameRecorder is a NIC backend that keeps what is written to it and
// reads nothing (a read blocks until its deadline or Close).
type frameRecorder struct {
	mu       sync.Mutex
	written  [][]byte
	deadline time.Time
	closed   bool
}

func (r *frameRecorder) WriteFrame(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.written = append(r.written, append([]byte(nil), b...))
	return nil
}

func (r *frameRecorder) ReadFrame([]byte) (int, error) {
	for {
		r.mu.Lock()
		closed, dl := r.closed, r.deadline
		r.mu.Unlock()
		if closed {
			return 0, os.ErrClosed
		}
		if !dl.IsZero() && time.Now().After(dl) {
			return 0, os.ErrDeadlineExceeded
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *frameRecorder) SetReadDeadline(t time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadline = t
	return nil
}

func (r *frameRecorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

func (r *frameRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.written)
}

// TestAnnounceObeysTheFence: a gratuitous ARP claims the VM's address, so
// it must leave only when the VM's own frames may: not through a shut
// gate (a secondary), not while the fence holds a primary that stalled
// and may have been deposed (it would move the address back to itself
// when it wakes and sees the new primary's frames), and again once
// go-live clears the fence.
func TestAnnounceObeysTheFence(t *testing.T) {
	rec := &frameRecorder{}
	gate, err := vmm.NewNICGate(rec)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	const peerTimeout = 5 * time.Second // no stall but the planted one
	d := &daemon{nic: gate, fence: newTxFence(peerTimeout, peerTimeout, peerTimeout/10),
		log: slog.New(slog.DiscardHandler), cfg: &daemonConfig{mac: [6]byte{0x02, 0x66, 0x74, 0x76, 0x6d, 0x01}, vmIP: netip.MustParseAddr("10.9.0.2")}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.life.Store(&ctx)
	burst := 0
	for _, at := range announceSchedule {
		if at == 0 {
			burst++
		}
	}

	// Each phase's announcements get a context of their own, ended with
	// the phase, so that one phase's later announcements (the schedule's
	// next is announceDenseEvery away) never count in the next phase.
	phase := func(why string) {
		pctx, pcancel := context.WithCancel(ctx)
		d.announce(pctx, why)
		pcancel()
		d.announcing.Wait()
	}
	phase("test: shut")
	if n := rec.count(); n != 0 {
		t.Fatalf("a shut gate (a secondary) announced the VM: %d frames", n)
	}
	gate.Open()
	phase("test: open")
	if n := rec.count(); n != burst {
		t.Fatalf("an open, unfenced gate sent %d frames at once, want the schedule's %d", n, burst)
	}
	d.fence.lastLook.Store(d.fence.now() - int64(20*peerTimeout)) // a stall
	fctx, fcancel := context.WithCancel(ctx)
	d.announce(fctx, "test: fenced") // its later ones, while the fence holds, are refused too
	d.staleFrameSeen()
	time.Sleep(3 * announceDenseEvery) // room for a stale-frame announcement's goroutine and the schedule
	fcancel()
	d.announcing.Wait()
	if n := rec.count(); n != burst {
		t.Fatalf("a primary fenced after a stall announced the VM: %d frames, want still %d", n-burst, 0)
	}
	d.fence.clear() // go-live
	phase("test: live again")
	if n := rec.count(); n != 2*burst {
		t.Fatalf("after go-live cleared the fence: %d frames in all, want %d", n, 2*burst)
	}
}

// TestStatusShowsRuntimePauses: after collections the liveness report
// gives the longest stop-the-world pause, which a soak reads beside the
// watchdogs' gaps (a pause stops the watchdog threads too).
func TestStatusShowsRuntimePauses(t *testing.T) {
	for range 3 {
		runtime.GC()
	}
	var r livenessReport
	r.addRuntimePauses()
	if r.GCPauseMaxMs <= 0 || r.GCStopMaxMs <= 0 {
		t.Fatalf("after three collections the report shows longest pause %v ms, longest stop %v ms: want both above 0", r.GCPauseMaxMs, r.GCStopMaxMs)
	}
	if r.GCPauseMaxMs > 10_000 {
		t.Fatalf("longest pause %v ms: not a sane reading of the histogram", r.GCPauseMaxMs)
	}
}

// TestDaemonLogsLivenessAsItStops: the line a stopping daemon leaves
// carries the runtime's pauses, for a daemon that halted and so has no
// control socket left to ask.
func TestDaemonLogsLivenessAsItStops(t *testing.T) {
	runtime.GC()
	var buf strings.Builder
	d := &daemon{log: slog.New(slog.NewTextHandler(&buf, nil))}
	d.logLiveness()
	line := buf.String()
	if !strings.Contains(line, "liveness over this daemon's life") || !strings.Contains(line, "gc_pause_max_ms=") || strings.Contains(line, "gc_pause_max_ms=0 ") {
		t.Fatalf("the stop's liveness line: %q; want the message and a longest GC pause above 0", line)
	}
}
