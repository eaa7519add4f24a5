package vmm

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// NICGate holds one NIC backend open for a host's whole life and lends it
// to one VM at a time, gated: until Open, every frame a VM sends is
// dropped and every frame that arrives is read and dropped, so none
// reaches the VM and none queues in the backend; after Open frames pass
// both ways.
//
// It is what the daemon puts between its TAP and its VMs. A secondary's
// VM must not see the network before the host goes live: its inputs come
// from the primary's log, and the frames arriving meanwhile are requests
// the primary has already answered, which the VM would answer again. Yet
// the TAP must be open long before go-live: a TAP's carrier comes up when
// it is opened, and the kernel's link-watch can delay the bridge port's
// carrier event (and so its forwarding) by up to a second when link
// events are frequent, so a TAP opened at go-live loses the gratuitous ARP
// and the client's requests for that long. So the daemon opens the TAP
// when it starts, gives every VM a loan (Lend) and opens the gate when
// the host goes live, then announces the VM's address with WriteFrame:
//
//	tap, err := vmm.OpenTAP(name) // at start: carrier up, the port forwards
//	gate, err := vmm.NewNICGate(tap)
//	...
//	nic, err := gate.Lend()       // for every VM, one at a time
//	m, err := vmm.New(vmm.Config{NIC: nic, ...})
//	if err != nil { nic.Close(); ... }
//	...
//	gate.Open()                   // go-live (at start on a primary)
//	gate.WriteFrame(garp)
//	...
//	gate.Close()                  // when the daemon exits
//
// A secondary replaces its VM with a fresh one at every checkpoint it
// restores, so the TAP is lent again and again without being closed. A
// loan's Close (Machine.Close closes its NIC backend) ends the loan, not
// the backend: it ends the loan's ReadFrame at once, by setting the
// backend's read deadline to now, and returns when the read has ended;
// from then on the loan's reads and writes fail with a closed error. The
// next Lend clears the deadline. Between loans nobody reads the backend,
// and the frames arriving queue in it (a TAP's queue is bounded) until the
// next loan reads them.
//
// An open gate can still be fenced: SetFence gives it a check that every
// frame a VM sends must pass, asked as the frame is about to leave. The
// daemon fences a primary that may have been deposed while it was stalled
// (a frame it sends then carries the VM's MAC, and the switch would move
// the VM's address back to a host that no longer serves it). WatchSource
// reports a frame that arrives from the VM's own MAC: another host is
// sending as this VM, and the switch may have followed it.
//
// All methods, and the loans', are safe for concurrent use.
type NICGate struct {
	b       deadlineBackend
	open    atomic.Bool
	dropped atomic.Uint64 // frames dropped while shut, both directions
	fenced  atomic.Uint64 // frames a VM sent that the fence refused
	fence   atomic.Pointer[func() bool]
	watch   atomic.Pointer[sourceWatch]

	mu     sync.Mutex
	cond   *sync.Cond // on mu: a loan's reads in progress dropped to 0
	closed bool
	cur    *nicLoan // the latest loan; every earlier one is closed and idle
	// kicked says the backend's read deadline is in the past, set by a
	// loan's Close to end its read; the next Lend clears it.
	kicked bool
}

// deadlineBackend is a NIC backend whose blocked read can be ended without
// closing it.
type deadlineBackend interface {
	NICBackend
	SetReadDeadline(time.Time) error
}

// NewNICGate returns a shut gate over b, which it owns from now on (Close
// closes it). b must also have a SetReadDeadline(time.Time) error method
// that ends a blocked ReadFrame, as TAP and UDPNIC do; otherwise, or if
// setting the deadline fails, NewNICGate fails and b stays the caller's.
func NewNICGate(b NICBackend) (*NICGate, error) {
	if b == nil {
		return nil, errors.New("NICGate: nil backend: pass the TAP (or other backend) to hold")
	}
	db, ok := b.(deadlineBackend)
	if !ok {
		return nil, fmt.Errorf("NICGate: the %T backend has no SetReadDeadline(time.Time) error method, so one VM's read could not be ended without closing the backend (TAP and UDPNIC have one)", b)
	}
	if err := db.SetReadDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("NICGate: the %T backend cannot set a read deadline: %w", b, err)
	}
	g := &NICGate{b: db}
	g.cond = sync.NewCond(&g.mu)
	return g, nil
}

// Lend returns the backend for one VM: give it as Config.NIC. It fails
// while the previous loan is still open or its read has not ended (the
// previous VM is not closed yet: close it, or the loan itself if no VM
// took it), and after Close.
func (g *NICGate) Lend() (NICBackend, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, fmt.Errorf("NICGate: Lend after Close: %w", errNICClosed)
	}
	if c := g.cur; c != nil && (!c.closed || c.reads > 0) {
		return nil, errors.New("NICGate: Lend while the previous loan is still in use (its VM is not closed): close that VM, or the loan if no VM took it, first")
	}
	if g.kicked {
		// No read is in progress (the previous loans are closed and
		// idle), so nobody needs the kick any more.
		if err := g.b.SetReadDeadline(time.Time{}); err != nil {
			return nil, fmt.Errorf("NICGate: clearing the read deadline that ended the previous loan's read: %w", err)
		}
		g.kicked = false
	}
	g.cur = &nicLoan{g: g}
	return g.cur, nil
}

// Open lets frames through from now on, for every loan present and
// future: the host went live. Later calls do nothing.
func (g *NICGate) Open() { g.open.Store(true) }

// IsOpen reports whether Open was called.
func (g *NICGate) IsOpen() bool { return g.open.Load() }

// SetFence makes every frame a VM sends from now on ask mayTransmit, as
// it is about to leave, whether it may: false drops it (counted by
// Fenced). mayTransmit runs on the sender's thread (the vCPU thread, or
// whoever releases the output) and must be quick and must not block. Nil
// removes the fence. WriteFrame is not fenced.
func (g *NICGate) SetFence(mayTransmit func() bool) {
	if mayTransmit == nil {
		g.fence.Store(nil)
		return
	}
	g.fence.Store(&mayTransmit)
}

// Fenced counts the frames a VM sent through the open gate that the fence
// refused.
func (g *NICGate) Fenced() uint64 { return g.fenced.Load() }

// sourceWatch is what WatchSource set.
type sourceWatch struct {
	mac  [6]byte
	seen func()
}

// WatchSource calls seen for every frame read from the backend (shut or
// open, before it is dropped or returned) whose source MAC is mac: a
// frame this host's VM did not send, from its own address. seen runs on
// the reading goroutine and must not block.
func (g *NICGate) WatchSource(mac [6]byte, seen func()) {
	g.watch.Store(&sourceWatch{mac: mac, seen: seen})
}

// WriteFrame writes frame straight to the backend, shut or open, fenced
// or not: the daemon announces the VM's address this way at go-live.
func (g *NICGate) WriteFrame(frame []byte) error { return g.b.WriteFrame(frame) }

// Dropped counts the frames dropped while the gate was shut, both those a
// VM sent and those read for it.
func (g *NICGate) Dropped() uint64 { return g.dropped.Load() }

// Close closes the backend for good; the loans' reads in progress end, and
// their reads and writes fail, with a closed error. Later calls do
// nothing.
func (g *NICGate) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	g.cond.Broadcast()
	return g.b.Close()
}

// nicLoan is one VM's use of a NICGate's backend.
type nicLoan struct {
	g      *NICGate
	closed bool // under g.mu
	reads  int  // ReadFrame calls between their check and their return; under g.mu
}

var _ NICBackend = (*nicLoan)(nil)

// ReadFrame implements NICBackend. Shut, it reads and drops every frame;
// open, it returns them. Once the loan is closed it returns no frame,
// not even one it was reading as Close was called.
func (l *nicLoan) ReadFrame(buf []byte) (int, error) {
	g := l.g
	for {
		g.mu.Lock()
		if l.closed || g.closed {
			g.mu.Unlock()
			return 0, errNICClosed
		}
		l.reads++
		g.mu.Unlock()

		n, err := g.b.ReadFrame(buf)

		g.mu.Lock()
		l.reads--
		if l.reads == 0 {
			g.cond.Broadcast()
		}
		if l.closed || g.closed {
			// The kick of Close, the backend closed, or a frame read as
			// the loan closed: the VM has gone.
			g.mu.Unlock()
			return 0, errNICClosed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// A deadline this open loan must not heed: clear it, which is
			// safe while the loan is open (no earlier loan is reading),
			// and read again.
			err = g.b.SetReadDeadline(time.Time{})
			if err == nil {
				g.kicked = false
				g.mu.Unlock()
				continue
			}
		}
		g.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if w := g.watch.Load(); w != nil && n >= 12 && [6]byte(buf[6:12]) == w.mac {
			w.seen()
		}
		if !g.open.Load() {
			g.dropped.Add(1)
			continue
		}
		return n, nil
	}
}

// WriteFrame implements NICBackend: shut, or refused by the fence, the
// frame is dropped.
func (l *nicLoan) WriteFrame(frame []byte) error {
	g := l.g
	g.mu.Lock()
	closed := l.closed || g.closed
	g.mu.Unlock()
	if closed {
		return errNICClosed
	}
	if !g.open.Load() {
		g.dropped.Add(1)
		return nil
	}
	if f := g.fence.Load(); f != nil && !(*f)() {
		g.fenced.Add(1)
		return nil
	}
	return g.b.WriteFrame(frame)
}

// Close implements NICBackend: it ends the loan, and its read in progress
// with a closed error, and returns when that read has returned. The
// backend stays open for the next loan. Later calls do nothing.
func (l *nicLoan) Close() error {
	g := l.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.reads == 0 || g.closed {
		return nil
	}
	// Kick the read: a deadline in the past ends a read blocked in the
	// backend, and one about to start there, at once.
	if err := g.b.SetReadDeadline(time.Now()); err != nil {
		return fmt.Errorf("NICGate: ending a loan's read: %w", err)
	}
	g.kicked = true
	for l.reads > 0 && !g.closed {
		g.cond.Wait()
	}
	return nil
}
