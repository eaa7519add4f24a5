package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"golang.org/x/sys/unix"
)

// maxDeferredMessages bounds the messages readers leave to the loop
// because the socket was full; beyond it a reader sends with Send, whose
// wait the transport bounds (tcpfallback.Config.SendTimeout).
const maxDeferredMessages = 4096

// work is one Ready, copied out of the node so that it can be performed
// without the lock (the vCPU thread must be able to finish an exit while
// the loop waits for it to pause).
type work struct {
	cmds   []lockstep.Command
	rel    []lockstep.Output
	drop   []uint64
	msgs   []encoded
	goLive bool // cmds take this host live: open the gate after rel
	// fromReader: performed on a transport reader (HandleFrame), which
	// must not wait for room in a socket (see send).
	fromReader bool
}

type encoded struct {
	typ transport.Type
	b   []byte
	// bulk: a checkpoint's chunk or the CheckpointDone after them, which
	// the bulk sender sends (bulksend.go).
	bulk bool
	// chunk is a checkpoint chunk left for the bulk sender to encode (b
	// is nil then).
	chunk *wire.CheckpointChunk
	// ckpt is the checkpoint a bulk message belongs to (IDs start at 1):
	// the bulk sender drops it if the node no longer ships that one.
	ckpt uint64
}

// process performs Ready after Ready until the node has nothing to do.
func (a *Agent) process(ctx context.Context) error {
	for {
		a.readyMu.Lock()
		if err := a.inlineErr; err != nil {
			// An inline perform failed: the run stops on it as it does
			// on the loop's own.
			a.readyMu.Unlock()
			return err
		}
		a.sendDeferred()
		a.mu.Lock()
		if !a.node.HasReady() {
			ns := a.node.Status()
			// A Step may have brought log items without any Ready: let
			// a hook waiting for them look again.
			a.cond.Broadcast()
			a.mu.Unlock()
			a.readyMu.Unlock()
			if ns.Protected && !a.guarded {
				a.guarded = true
				if err := a.applyRun(); err != nil {
					return err
				}
			}
			// A primary's VM starts once the arbiter granted it its epoch:
			// no command says so when no secondary is there to join (the
			// node has nothing to resume, it never paused).
			if ns.Role == lockstep.RolePrimary && ns.Epoch > 0 && !a.granted {
				a.granted = true
				if err := a.applyRun(); err != nil {
					return err
				}
			}
			return nil
		}
		w := a.takeReady()
		a.mu.Unlock()
		if holdProf.Load() != nil {
			a.readyMu.site = readySite(&w)
		}
		err := a.perform(ctx, &w)
		a.readyMu.Unlock()
		if err != nil {
			return err
		}
		a.mu.Lock()
		if w.goLive {
			a.liveGate = false
		}
		a.cond.Broadcast()
		a.mu.Unlock()
	}
}

// readySite names the loop's hold of readyMu for the lock-hold profile
// by what the Ready it performs asks for: its commands, else whether it
// releases or sends.
func readySite(w *work) string {
	site := "agent.process:"
	for i, c := range w.cmds {
		if i > 0 {
			site += "+"
		}
		site += c.Kind.String()
	}
	if len(w.cmds) == 0 {
		site += fmt.Sprintf("rel=%t,msgs=%t", len(w.rel) > 0, len(w.msgs) > 0)
	}
	return site
}

// takeReady copies the node's Ready out (encoding its messages) and
// advances the node. a.mu and a.readyMu held.
func (a *Agent) takeReady() work {
	rd := a.node.Ready()
	w := work{
		cmds: append([]lockstep.Command(nil), rd.Commands...),
		rel:  append([]lockstep.Output(nil), rd.Release...),
		drop: append([]uint64(nil), rd.Drop...),
	}
	for _, m := range rd.Messages {
		if c, ok := m.(*wire.CheckpointChunk); ok {
			// Encoded by the bulk sender, off both locks: a Ready's
			// chunks are CheckpointReadyBytes to copy twice, and their
			// data is never written (CheckpointTaken lends it).
			w.msgs = append(w.msgs, encoded{typ: transport.TypeCheckpoint, bulk: true, chunk: c, ckpt: c.ID})
			continue
		}
		a.enc = m.Append(a.enc[:0])
		e := encoded{typ: frameType(m), b: append([]byte(nil), a.enc...), bulk: isBulk(m.Type())}
		if d, ok := m.(*wire.CheckpointDone); ok && !d.Restored {
			e.ckpt = d.ID // a primary's; a secondary's confirmation is always sent
		}
		w.msgs = append(w.msgs, e)
	}
	for _, c := range w.cmds {
		w.goLive = w.goLive || c.Kind == lockstep.CmdGoLive
	}
	a.node.Advance(rd)
	return w
}

// flushInline is called with a.mu held by the hook (on the vCPU thread)
// after it gave the node something to send, and by HandleFrame (on a
// transport reader) after a Step: it performs the node's Ready right there
// when it asks for no command, so that a log entry, an acknowledgement or
// a release happens now. Handing it to the loop costs a thread wake-up,
// and from the vCPU thread worse: the loop's goroutine cannot run on that
// thread's processor until the vCPU's KVM_RUN gives it up (60 to 100 µs
// measured here, most of an output's hold time). Commands (pause,
// checkpoint, stall, ...) stay with the loop: a pause waits for the vCPU
// thread itself. Returns with a.mu held.
func (a *Agent) flushInline() { a.flushInlineOn(false) }

// flushInlineVCPU is flushInline for the hook, on the vCPU thread.
func (a *Agent) flushInlineVCPU() { a.flushInlineOn(true) }

func (a *Agent) flushInlineOn(onVCPU bool) {
	if a.bugWaitForReadyMu {
		a.readyMu.Lock()
	} else if !a.readyMu.TryLock() {
		a.poke() // the loop is performing; it looks again after
		return
	}
	if !a.started.Load() || a.inlineErr != nil {
		// Run has not begun, or has ended, or is ending on an error
		// an inline perform met.
		a.readyMu.Unlock()
		return
	}
	if !a.node.HasReady() {
		a.readyMu.Unlock()
		return
	}
	if len(a.node.Ready().Commands) > 0 {
		a.readyMu.Unlock()
		a.poke()
		return
	}
	w := a.takeReady()
	w.fromReader = !onVCPU
	a.mu.Unlock()
	// Without commands perform needs none of the loop's state. An error
	// (an output it cannot perform) stops the run as the loop's would:
	// the loop returns it.
	if err := a.perform(context.Background(), &w); err != nil {
		where := "a transport reader"
		if onVCPU {
			where = "the vCPU thread"
		}
		a.inlineErr = fmt.Errorf("%w (performed on %s)", err, where)
		a.poke()
	}
	a.readyMu.Unlock()
	if onVCPU && len(w.msgs) > 0 {
		yieldToSoftirq()
	}
	a.mu.Lock()
	a.cond.Broadcast()
}

// yieldToSoftirq gives this CPU up for a moment after the vCPU thread sent
// a frame. The kernel hands the frame to the peer in a softirq on this
// CPU, and where ksoftirqd has that work it runs only when this thread
// stops running: a vCPU thread goes straight back into KVM_RUN, so the
// frame waited for the guest's next blocking exit (measured here: one-way
// 40 to 570 µs on a path whose idle round trip is 20 µs, and an output's
// hold p50 of 120 to 165 µs; with the yield, 2 to 30 µs).
func yieldToSoftirq() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// perform does one Ready in the order lockstep.Ready documents: commands,
// releases, drops, messages.
func (a *Agent) perform(ctx context.Context, w *work) error {
	for _, c := range w.cmds {
		if err := a.command(ctx, c); err != nil {
			return fmt.Errorf("agent: %s: %w", c.Kind, err)
		}
	}
	protected := false
	if len(w.rel) > 0 {
		a.mu.Lock()
		protected = a.node.Status().Protected
		a.mu.Unlock()
	}
	now := time.Now()
	for _, o := range w.rel {
		e, ok := a.take(o.ID)
		if !ok && !o.Carried {
			return fmt.Errorf("agent: %w", errNotHeld("releasing", o))
		}
		if a.cfg.OnRelease != nil {
			a.cfg.OnRelease(o)
		}
		a.stats.released.Add(1)
		if !ok {
			// An output a checkpoint carried (held on the old primary
			// when it was taken): no exit of this VM holds it.
			if err := a.deliverCarried(o, false); err != nil {
				return fmt.Errorf("agent: releasing output seq %d that a checkpoint carried: %w", o.Seq, err)
			}
			continue
		}
		if protected {
			a.holdLatency.record(now.Sub(e.at))
		}
		probeOutputReleased(o.ID, b2u(isNIC(o.Device)))
		// A backend error is the device's to report (the guest already
		// got its status when the output was held); the protocol's
		// promise is only that nothing leaves before Ready says so. A
		// block write is made durable by the disk writer, which retries
		// it until it is; any other output leaves only once the writes
		// released before it are durable (diskWriter.release).
		if isDiskWrite(o.Device) {
			write := a.fenced(o, e.h.Release)
			if a.tail.timing() {
				write = func(w func() error) func() error {
					return func() error { err := w(); a.tail.markDurable(); return err }
				}(write)
			}
			a.disk.enqueue(fmt.Sprintf("seq %d", o.Seq), o.Seq, write, vmmOutput(e.h))
			continue
		}
		send := e.h.Release
		if a.tail.timing() && isNIC(o.Device) {
			send = func(s func() error) func() error {
				return func() error { err := s(); a.tail.markFrame(a.log); return err }
			}(send)
		}
		a.disk.release(fmt.Sprintf("seq %d", o.Seq), o.Seq, send)
	}
	if w.goLive {
		// The new primary's guest may read the disk as soon as the gate
		// opens: every write owed to it must be there. Its exits wait
		// for this (liveGate), so the client does too: logged.
		// batched: of those, the secondary's persists made durable a
		// batch at a time; the rest (the outputs go-live released)
		// were each synced on their own.
		began, jobs, batched := time.Now(), a.disk.queued.Load(), a.disk.batched.Load()
		a.disk.drain()
		a.log.Info("serving live: the writes owed to the guest are on disk", "jobs_drained", jobs,
			"took", time.Since(began).Round(10*time.Microsecond), "batched", a.disk.batched.Load()-batched)
	}
	for _, id := range w.drop {
		if e, ok := a.take(id); ok {
			e.h.Drop()
		}
	}
	k := 0 // w.msgs[:k]: those sent here, in order
	for _, m := range w.msgs {
		if m.bulk {
			a.bulk.push(m) // never waits, whoever performs
			continue
		}
		if m.typ == transport.TypeCheckpoint {
			a.sync.sent.Add(int64(len(m.b)))
		}
		w.msgs[k] = m
		k++
	}
	a.sendAll(w.msgs[:k], w.fromReader)
	return nil
}

// sendAll sends a Ready's messages, in order after those deferred before
// them: with a BatchSender all at once (one write where each Send is
// one), else one by one (send). On a transport reader it never waits for
// room in the socket: what the transport cannot take now is deferred to
// the loop, as send does. a.readyMu must be held.
func (a *Agent) sendAll(ms []encoded, fromReader bool) {
	bs, ok := a.tr.(BatchSender)
	if !ok || len(ms) < 2 || !oneLane(ms) {
		for _, m := range ms {
			a.send(m, fromReader)
		}
		return
	}
	if fromReader && len(a.deferred) < maxDeferredMessages {
		if len(a.deferred) == 0 {
			n, err := bs.TrySendBatch(a.frames(ms))
			a.clearBatch()
			if !errors.Is(err, transport.ErrWouldBlock) {
				if err != nil {
					a.stats.send.Add(1) // lost frames are the protocol's to resend
				}
				return
			}
			ms = ms[n:]
		}
		a.deferred = append(a.deferred, ms...)
		a.poke()
		return
	}
	a.sendDeferred()
	if _, err := bs.SendBatch(a.frames(ms)); err != nil {
		a.stats.send.Add(1) // lost frames are the protocol's to resend
	}
	a.clearBatch()
}

// oneLane reports whether every message goes on one lane, as a batch
// must.
func oneLane(ms []encoded) bool {
	for _, m := range ms[1:] {
		if transport.LaneOf(m.typ) != transport.LaneOf(ms[0].typ) {
			return false
		}
	}
	return true
}

// frames is ms as a batch of frames, in a.batch. a.readyMu must be held.
func (a *Agent) frames(ms []encoded) []transport.OutFrame {
	a.batch = a.batch[:0]
	for _, m := range ms {
		a.batch = append(a.batch, transport.OutFrame{Type: m.typ, Payload: m.b})
	}
	return a.batch
}

// clearBatch lets go of the payloads a.batch points to.
func (a *Agent) clearBatch() {
	clear(a.batch)
	a.batch = a.batch[:0]
}

// send sends one message, in order after those deferred before it. On a
// transport reader it never waits for room in the socket: what the
// transport cannot take now is deferred to the loop (poked), up to
// maxDeferredMessages. a.readyMu must be held.
func (a *Agent) send(m encoded, fromReader bool) {
	if ts, ok := a.tr.(TrySender); ok && fromReader && len(a.deferred) < maxDeferredMessages {
		if len(a.deferred) == 0 {
			err := ts.TrySend(m.typ, m.b)
			if !errors.Is(err, transport.ErrWouldBlock) {
				if err != nil {
					a.stats.send.Add(1) // lost frames are the protocol's to resend
				}
				return
			}
		}
		a.deferred = append(a.deferred, m)
		a.poke()
		return
	}
	a.sendDeferred()
	if err := a.tr.Send(m.typ, m.b); err != nil {
		a.stats.send.Add(1) // lost frames are the protocol's to resend
	}
}

// sendDeferred sends what readers deferred, with sends that may wait (the
// transport bounds the wait): together with a BatchSender. a.readyMu must
// be held.
func (a *Agent) sendDeferred() {
	if bs, ok := a.tr.(BatchSender); ok && len(a.deferred) > 1 && oneLane(a.deferred) {
		if _, err := bs.SendBatch(a.frames(a.deferred)); err != nil {
			a.stats.send.Add(1)
		}
		a.clearBatch()
		clear(a.deferred)
		a.deferred = a.deferred[:0]
		return
	}
	for i, m := range a.deferred {
		if err := a.tr.Send(m.typ, m.b); err != nil {
			a.stats.send.Add(1)
		}
		a.deferred[i] = encoded{}
	}
	a.deferred = a.deferred[:0]
}

// frameType picks the transport frame type (and so the lane) of a message.
func frameType(m wire.Msg) transport.Type {
	switch m.Type() {
	case wire.TypeEntry:
		return transport.TypeLog
	case wire.TypeOutput:
		return transport.TypeOutput
	case wire.TypeAck:
		return transport.TypeAck
	case wire.TypeCheckpointChunk:
		return transport.TypeCheckpoint
	}
	return transport.TypeControl
}
