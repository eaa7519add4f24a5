package agent

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// pauseTail times what a client still waits for once a primary's pause
// for a checkpoint is over: the guest's first output held after the
// resume, the secondary's first acknowledgement, the first block write
// made durable and the first frame sent into the TAP. A client's silence
// around a join is the pause plus this tail; the pause's own log line
// ("resumed after the pause") does not show it. The marks are set by
// whichever thread gets there first (the vCPU's, a transport reader, the
// disk writer) and the line is logged once the first frame is out, or
// dropped at the next pause.
type pauseTail struct {
	resumed atomic.Int64 // UnixNano of the resume; 0: not timing
	held    atomic.Int64 // each: nanoseconds after resumed, 0 until seen
	ack     atomic.Int64
	durable atomic.Int64
	frame   atomic.Int64
}

// begin starts timing the tail of the pause that ends now.
func (p *pauseTail) begin(now time.Time) {
	p.held.Store(0)
	p.ack.Store(0)
	p.durable.Store(0)
	p.frame.Store(0)
	p.resumed.Store(now.UnixNano())
}

// timing reports whether a tail is being timed: the callers wrap a
// release's backend call only then.
func (p *pauseTail) timing() bool { return p.resumed.Load() != 0 }

// mark sets one mark to the time since the resume, if it is unset.
func (p *pauseTail) mark(m *atomic.Int64) {
	r := p.resumed.Load()
	if r == 0 || m.Load() != 0 {
		return
	}
	m.CompareAndSwap(0, max(1, time.Now().UnixNano()-r))
}

func (p *pauseTail) markHeld()    { p.mark(&p.held) }
func (p *pauseTail) markAck()     { p.mark(&p.ack) }
func (p *pauseTail) markDurable() { p.mark(&p.durable) }

// markFrame sets the frame mark and logs the tail: the first frame after
// the pause is the end of the client's wait.
func (p *pauseTail) markFrame(log *slog.Logger) {
	r := p.resumed.Load()
	if r == 0 || p.frame.Load() != 0 {
		return
	}
	if !p.frame.CompareAndSwap(0, max(1, time.Now().UnixNano()-r)) || !p.resumed.CompareAndSwap(r, 0) {
		return
	}
	d := func(m *atomic.Int64) any {
		if v := m.Load(); v != 0 {
			return time.Duration(v).Round(10 * time.Microsecond)
		}
		return "none"
	}
	// Off the thread that sent the frame: that may be the vCPU's.
	go log.Info("first frame out after the pause for a checkpoint", "after", d(&p.frame),
		"first_held", d(&p.held), "first_ack", d(&p.ack), "first_write_durable", d(&p.durable))
}
