package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// gateWait bounds how long a test waits for what must happen; how long it
// waits to see that nothing happens is gateQuiet.
const (
	gateWait  = 10 * time.Second
	gateQuiet = 50 * time.Millisecond
)

// gatePeer is a shut gate over a UDP NIC whose other end the test plays.
func gatePeer(t testing.TB) (*NICGate, *UDPNIC, *net.UDPConn) {
	t.Helper()
	udp, peer := udpPeer(t)
	g, err := NewNICGate(udp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, udp, peer
}

func shutGate(t testing.TB) *NICGate {
	g, _, _ := gatePeer(t)
	return g
}

func mustLend(t testing.TB, g *NICGate) NICBackend {
	t.Helper()
	l, err := g.Lend()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type readResult struct {
	frame []byte
	err   error
}

// startRead reads one frame from b on a goroutine.
func startRead(b NICBackend) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 2048)
		n, err := b.ReadFrame(buf)
		ch <- readResult{bytes.Clone(buf[:n]), err}
	}()
	return ch
}

// send has the peer send frame to the NIC.
func send(t testing.TB, peer *net.UDPConn, udp *UDPNIC, frame []byte) {
	t.Helper()
	if _, err := peer.WriteToUDP(frame, udp.LocalAddr()); err != nil {
		t.Fatal(err)
	}
}

// peerGot reads what reached the peer within d.
func peerGot(peer *net.UDPConn, d time.Duration) ([]byte, error) {
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(d))
	n, _, err := peer.ReadFromUDP(buf)
	return buf[:n], err
}

// waitFor polls cond until it holds or gateWait passes.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(gateWait)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// TestNICGateShutThenOpen: shut, the gate drops frames both ways (and
// counts them) while the loan's read goes on reading; its own WriteFrame
// passes. Open, frames pass both ways.
func TestNICGateShutThenOpen(t *testing.T) {
	g, udp, peer := gatePeer(t)
	if g.IsOpen() {
		t.Fatal("a new gate says it is open")
	}
	loan := mustLend(t, g)
	r := startRead(loan)
	for i := range 3 {
		send(t, peer, udp, testFrame(fmt.Sprint("stale ", i)))
	}
	if !waitFor(func() bool { return g.Dropped() == 3 }) {
		t.Fatalf("Dropped = %d after 3 frames arrived at a shut gate; want 3", g.Dropped())
	}
	select {
	case res := <-r:
		t.Fatalf("a shut gate's loan returned %q, %v", res.frame, res.err)
	case <-time.After(gateQuiet):
	}
	for range 2 {
		if err := loan.WriteFrame(testFrame("lost")); err != nil {
			t.Fatalf("a loan's WriteFrame while shut: %v; want the frame dropped without error", err)
		}
	}
	if g.Dropped() != 5 {
		t.Fatalf("Dropped = %d, want 5 (3 in, 2 out)", g.Dropped())
	}
	if f, err := peerGot(peer, gateQuiet); err == nil {
		t.Fatalf("a frame written through a shut gate reached the network: %q", f)
	}
	// The gate's own WriteFrame (the gratuitous ARP) passes while shut.
	if err := g.WriteFrame(testFrame("garp")); err != nil {
		t.Fatal(err)
	}
	if f, err := peerGot(peer, gateWait); err != nil || string(f[14:]) != "garp" || g.Dropped() != 5 {
		t.Fatalf("the gate's WriteFrame: peer got %q, %v, %d dropped", f, err, g.Dropped())
	}

	g.Open()
	g.Open()
	if !g.IsOpen() {
		t.Fatal("IsOpen false after Open")
	}
	send(t, peer, udp, testFrame("fresh"))
	select {
	case res := <-r:
		if res.err != nil || string(res.frame[14:]) != "fresh" {
			t.Fatalf("open gate's loan read %q, %v; want the frame sent after Open", res.frame, res.err)
		}
	case <-time.After(gateWait):
		t.Fatal("the read waiting on the shut gate got nothing after Open")
	}
	if err := loan.WriteFrame(testFrame("out")); err != nil {
		t.Fatal(err)
	}
	if f, err := peerGot(peer, gateWait); err != nil || string(f[14:]) != "out" {
		t.Fatalf("peer got %q, %v; want the loan's frame", f, err)
	}
	if g.Dropped() != 5 {
		t.Fatalf("Dropped = %d after Open, want still 5", g.Dropped())
	}
}

// TestNICGateFence fences an open gate: a frame a VM sends leaves only
// while the fence says so, the gate's own WriteFrame always leaves, and a
// frame arriving from the watched MAC is reported whether the gate is shut
// or open.
func TestNICGateFence(t *testing.T) {
	g, udp, peer := gatePeer(t)
	var seen atomic.Int32
	src := [6]byte{0x02, 0, 0, 0, 0, 9} // testFrame's source
	g.WatchSource(src, func() { seen.Add(1) })
	loan := mustLend(t, g)
	r := startRead(loan)
	send(t, peer, udp, testFrame("while shut"))
	if !waitFor(func() bool { return seen.Load() == 1 }) {
		t.Fatalf("a frame from the watched MAC reached a shut gate: seen %d times, want 1", seen.Load())
	}
	g.Open()
	var allow atomic.Bool
	g.SetFence(allow.Load)
	if err := loan.WriteFrame(testFrame("fenced")); err != nil {
		t.Fatalf("a fenced WriteFrame: %v; want the frame dropped without error", err)
	}
	if f, err := peerGot(peer, gateQuiet); err == nil {
		t.Fatalf("a frame the fence refused reached the network: %q", f)
	}
	if g.Fenced() != 1 {
		t.Fatalf("Fenced = %d, want 1", g.Fenced())
	}
	if err := g.WriteFrame(testFrame("garp")); err != nil {
		t.Fatal(err)
	}
	if f, err := peerGot(peer, gateWait); err != nil || string(f[14:]) != "garp" {
		t.Fatalf("the gate's own WriteFrame while fenced: peer got %q, %v", f, err)
	}
	allow.Store(true)
	if err := loan.WriteFrame(testFrame("allowed")); err != nil {
		t.Fatal(err)
	}
	if f, err := peerGot(peer, gateWait); err != nil || string(f[14:]) != "allowed" {
		t.Fatalf("peer got %q, %v; want the frame the fence let through", f, err)
	}
	send(t, peer, udp, testFrame("while open"))
	if res := <-r; res.err != nil || string(res.frame[14:]) != "while open" || seen.Load() != 2 {
		t.Fatalf("open gate read %q, %v, seen %d; want the frame, reported", res.frame, res.err, seen.Load())
	}
	g.SetFence(nil)
	allow.Store(false)
	if err := loan.WriteFrame(testFrame("unfenced")); err != nil {
		t.Fatal(err)
	}
	if f, err := peerGot(peer, gateWait); err != nil || string(f[14:]) != "unfenced" || g.Fenced() != 1 {
		t.Fatalf("after SetFence(nil) peer got %q, %v, fenced %d", f, err, g.Fenced())
	}
}

// TestNICGateLoans lends the backend to one loan after another: Lend is
// refused while a loan is in use, a loan's Close ends its blocked read at
// once without closing the backend, and the next loan gets the frames
// sent after it was lent.
func TestNICGateLoans(t *testing.T) {
	g, udp, peer := gatePeer(t)
	first := mustLend(t, g)
	r := startRead(first)
	time.Sleep(gateQuiet) // let the read block in the backend
	if _, err := g.Lend(); err == nil || !strings.Contains(err.Error(), "still in use") {
		t.Fatalf("Lend while a loan's reader runs: %v; want a refusal", err)
	}
	start := time.Now()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-r:
		if !isClosed(res.err) {
			t.Fatalf("the read ended by the loan's Close: %q, %v; want an error isClosed accepts", res.frame, res.err)
		}
	case <-time.After(gateWait):
		t.Fatal("a loan's Close did not end its read")
	}
	t.Logf("a loan's Close ended its blocked read in %v", time.Since(start))
	if err := first.Close(); err != nil {
		t.Fatalf("second Close of a loan: %v", err)
	}
	if _, err := first.ReadFrame(make([]byte, 2048)); !isClosed(err) {
		t.Fatalf("read of a closed loan: %v", err)
	}
	if err := first.WriteFrame(testFrame("x")); !isClosed(err) {
		t.Fatalf("write to a closed loan: %v", err)
	}

	// The backend is still open, its deadline cleared: the next loan's
	// read blocks, and returns the frame sent after the gate opened.
	second := mustLend(t, g)
	if _, err := g.Lend(); err == nil {
		t.Fatal("Lend while the previous loan is open (no reader yet) accepted")
	}
	g.Open()
	r = startRead(second)
	select {
	case res := <-r:
		t.Fatalf("the next loan's read returned %q, %v with nothing sent", res.frame, res.err)
	case <-time.After(gateQuiet):
	}
	send(t, peer, udp, testFrame("to the second VM"))
	select {
	case res := <-r:
		if res.err != nil || string(res.frame[14:]) != "to the second VM" {
			t.Fatalf("the next loan read %q, %v", res.frame, res.err)
		}
	case <-time.After(gateWait):
		t.Fatal("the next loan got no frame: the first loan's Close broke the backend")
	}
	if err := second.WriteFrame(testFrame("from the second VM")); err != nil {
		t.Fatal(err)
	}
	if f, err := peerGot(peer, gateWait); err != nil || string(f[14:]) != "from the second VM" {
		t.Fatalf("peer got %q, %v", f, err)
	}
	// A loan closed with no read in progress is closed at once too.
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	third := mustLend(t, g)
	defer third.Close()
	if err := udp.WriteFrame(testFrame("still open")); err != nil {
		t.Fatalf("the backend after two loans: %v", err)
	}
}

// TestNICGateClose: the gate's Close closes the backend and ends a loan's
// read; nothing more is lent.
func TestNICGateClose(t *testing.T) {
	g, udp, _ := gatePeer(t)
	loan := mustLend(t, g)
	r := startRead(loan)
	time.Sleep(gateQuiet)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-r:
		if !isClosed(res.err) {
			t.Fatalf("read ended by the gate's Close: %v; want a closed error", res.err)
		}
	case <-time.After(gateWait):
		t.Fatal("the gate's Close did not end a loan's read")
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := udp.WriteFrame(testFrame("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the backend after the gate's Close: %v; want it closed", err)
	}
	if _, err := g.Lend(); !isClosed(err) {
		t.Fatalf("Lend after Close: %v; want a closed error", err)
	}
	if err := loan.WriteFrame(testFrame("x")); !isClosed(err) {
		t.Fatalf("a loan's write after the gate's Close: %v", err)
	}
	if err := loan.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNICGateNeedsDeadline(t *testing.T) {
	if _, err := NewNICGate(nil); err == nil {
		t.Fatal("NewNICGate(nil) accepted")
	}
	z := newNullNIC()
	if _, err := NewNICGate(z); err == nil || !strings.Contains(err.Error(), "SetReadDeadline") {
		t.Fatalf("NewNICGate of a backend without SetReadDeadline: %v", err)
	}
	// A regular file is outside Go's poller: it cannot take a deadline.
	f, err := os.CreateTemp(t.TempDir(), "not-a-tap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := NewNICGate(&TAP{f: f, name: "devnull"}); err == nil || !strings.Contains(err.Error(), "cannot set a read deadline") {
		t.Fatalf("NewNICGate of a TAP on a blocking file: %v", err)
	}
}

// TestNICGateUnderTheNIC is a secondary through its VMs' lives: the NIC
// of each VM is a loan; before go-live it sends into the void and hears
// nothing though frames arrive; closing the NIC (as Machine.Close does)
// leaves the backend to the next VM, which talks to the network once the
// gate opens.
func TestNICGateUnderTheNIC(t *testing.T) {
	g, udp, peer := gatePeer(t)
	b := newExitBench(t, benchOpts{nic: mustLend(t, g)})
	out := testFrame("before go-live")
	b.mem.Write(0x4000, out)
	if st, _ := b.mustCall(PortNIC, OpNICTX, 0x4000, uint32(len(out)), 0); st != StatusOK || g.Dropped() != 1 {
		t.Fatalf("TX while shut: status %d, %d dropped; want OK and dropped", st, g.Dropped())
	}
	send(t, peer, udp, testFrame("already answered"))
	if !waitFor(func() bool { return g.Dropped() == 2 }) {
		t.Fatalf("Dropped = %d; want the TX and the frame that arrived", g.Dropped())
	}
	if _, r := b.mustCall(PortNIC, OpNICWait, 0, 0, uint64(gateQuiet)); r != 0 {
		t.Fatal("a NIC behind a shut gate received a frame")
	}
	// The VM is replaced (a checkpoint restored): its NIC closes, and
	// its reader ends, but the backend stays open.
	start := time.Now()
	if err := b.nic.close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("closing the NIC took %v", time.Since(start))
	if err := udp.WriteFrame(out); err != nil {
		t.Fatalf("the backend after the VM closed: %v", err)
	}
	if _, err := peerGot(peer, gateWait); err != nil {
		t.Fatal(err)
	}

	b2 := newExitBench(t, benchOpts{nic: mustLend(t, g)})
	g.Open() // go-live
	in := testFrame("after go-live")
	send(t, peer, udp, in)
	if _, r := b2.mustCall(PortNIC, OpNICWait, 0, 0, uint64(gateWait)); r != 1 {
		t.Fatal("no frame after Open")
	}
	if _, n := b2.mustCall(PortNIC, OpNICRX, 0x3000, 2048, 0); n != uint64(len(in)) {
		t.Fatalf("RX returned %d bytes, want %d", n, len(in))
	}
	if got, _ := b2.mem.Slice(0x3000, uint64(len(in))); !bytes.Equal(got, in) {
		t.Fatalf("RX got %q", got)
	}
	out = testFrame("after go-live, out")
	b2.mem.Write(0x4000, out)
	b2.mustCall(PortNIC, OpNICTX, 0x4000, uint32(len(out)), 0)
	if f, err := peerGot(peer, gateWait); err != nil || !bytes.Equal(f, out) {
		t.Fatalf("peer got %q, %v", f, err)
	}
}

// TestNICGateStress lends and closes many loans, under NICs and bare
// readers, while frames arrive and are written, and opens the gate along
// the way (run it with -race). No loan returns a frame that arrived after
// its Close returned, no two loans return the same frame, no frame is
// returned while the gate is shut, a loan's reader sees no error but the
// closed one, and the last loan still gets frames.
func TestNICGateStress(t *testing.T) {
	g, udp, peer := gatePeer(t)
	const rounds = 300
	openAt := rounds / 3

	// The network: frames numbered 1, 2, ... arrive all the time.
	var sent atomic.Uint64
	stop := make(chan struct{})
	var senders sync.WaitGroup
	senders.Add(1)
	go func() {
		defer senders.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			seq := sent.Add(1)
			f := testFrame("........")
			binary.BigEndian.PutUint64(f[14:], seq)
			if _, err := peer.WriteToUDP(f, udp.LocalAddr()); err != nil {
				t.Error(err)
				return
			}
			if seq%4 == 0 {
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	// The peer drains what the loans write.
	senders.Add(1)
	var reachedPeer atomic.Uint64
	go func() {
		defer senders.Done()
		buf := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			peer.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			if _, _, err := peer.ReadFromUDP(buf); err == nil {
				reachedPeer.Add(1)
			}
		}
	}()
	defer func() {
		close(stop)
		senders.Wait()
	}()

	seqOf := func(f []byte) uint64 { return binary.BigEndian.Uint64(f[14:22]) }
	var last uint64 // the highest frame number any loan returned
	var delivered, written int
	var openCalled atomic.Bool
	for round := range rounds {
		if round == openAt {
			// Open races with a loan at work.
			go func() { openCalled.Store(true); g.Open() }()
		}
		loan, err := g.Lend()
		if err != nil {
			t.Fatalf("round %d: Lend after the previous loan closed: %v", round, err)
		}
		// A writer through the loan, until it closes.
		writerDone := make(chan int)
		go func() {
			n := 0
			for {
				if err := loan.WriteFrame(testFrame("w")); err != nil {
					if !isClosed(err) {
						t.Errorf("a loan's WriteFrame: %v", err)
					}
					writerDone <- n
					return
				}
				n++
				time.Sleep(50 * time.Microsecond)
			}
		}()
		var got []uint64
		var closeLoan func()
		readerDone := make(chan struct{})
		if round%2 == 0 {
			// The real path: a VM's NIC on the loan.
			nic := newNIC(loan, DefaultMAC, make(chan struct{}))
			close(readerDone)
			closeLoan = func() {
				if err := nic.close(); err != nil {
					t.Error(err)
				}
				for len(nic.rx) > 0 {
					got = append(got, seqOf(<-nic.rx))
				}
			}
		} else {
			// A bare reader that checks each error.
			go func() {
				defer close(readerDone)
				buf := make([]byte, 2048)
				for {
					n, err := loan.ReadFrame(buf)
					if err != nil {
						if !isClosed(err) {
							t.Errorf("round %d: a loan's read failed with %v; only a closed error may end it", round, err)
						}
						return
					}
					got = append(got, seqOf(buf[:n]))
				}
			}()
			closeLoan = func() {
				if err := loan.Close(); err != nil {
					t.Error(err)
				}
			}
		}
		switch round % 3 {
		case 0: // close at once, maybe before the reader started
		case 1:
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
		case 2:
			time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		}
		start := time.Now()
		closeLoan()
		if d := time.Since(start); d > gateWait/2 {
			t.Fatalf("round %d: closing a loan took %v", round, d)
		}
		after := sent.Load() // frames numbered above arrived after the Close
		select {
		case <-readerDone:
		case <-time.After(gateWait):
			t.Fatalf("round %d: the reader did not end after its loan closed", round)
		}
		written += <-writerDone
		if _, err := loan.ReadFrame(make([]byte, 2048)); !isClosed(err) {
			t.Fatalf("round %d: read of a closed loan: %v", round, err)
		}
		for _, s := range got {
			if s > after {
				t.Fatalf("round %d: the loan returned frame %d, which arrived after its Close returned (at %d)", round, s, after)
			}
			if s <= last {
				t.Fatalf("round %d: frame %d returned after frame %d: returned twice, or by two loans at once", round, s, last)
			}
			last = s
		}
		if !openCalled.Load() && len(got) > 0 { // the gate was shut all through the round
			t.Fatalf("round %d: %d frames returned while the gate was shut", round, len(got))
		}
		delivered += len(got)
	}
	if !g.IsOpen() {
		t.Fatal("the gate is not open")
	}

	// The last loan, lent and open, gets the frames that arrive now
	// (after those that queued in the backend between loans).
	loan := mustLend(t, g)
	defer loan.Close()
	from := sent.Load()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(gateWait)
	for {
		n, err := loan.ReadFrame(buf)
		if err != nil {
			t.Fatalf("the last loan: %v", err)
		}
		if s := seqOf(buf[:n]); s > from {
			break
		} else if s <= last {
			t.Fatalf("the last loan returned frame %d after frame %d", s, last)
		}
		if time.Now().After(deadline) {
			t.Fatal("the last loan got no frame that arrived after it was lent")
		}
	}
	t.Logf("%d rounds: %d frames arrived, %d returned to loans, %d dropped while shut; %d written by loans, %d reached the peer",
		rounds, sent.Load(), delivered, g.Dropped(), written, reachedPeer.Load())
	if delivered == 0 || g.Dropped() == 0 {
		t.Fatal("the stress test saw no frames returned or none dropped: it tested nothing")
	}
}

// scriptNIC is a backend the test scripts, to stage the races of a loan's
// Close with its read: ReadFrame returns what is pushed into in, and
// SetReadDeadline records the deadline and, for one in the past, runs
// kick (which may push what the kicked read returns).
type scriptNIC struct {
	in        chan readResult
	entered   chan struct{} // a ReadFrame has started
	deadlines chan time.Time
	kick      func()
	closed    chan struct{}
	once      sync.Once
}

func newScriptNIC() *scriptNIC {
	return &scriptNIC{
		in:        make(chan readResult, 16),
		entered:   make(chan struct{}, 16),
		deadlines: make(chan time.Time, 16),
		closed:    make(chan struct{}),
	}
}

func (s *scriptNIC) ReadFrame(buf []byte) (int, error) {
	s.entered <- struct{}{}
	select {
	case r := <-s.in:
		if r.err != nil {
			return 0, r.err
		}
		return copy(buf, r.frame), nil
	case <-s.closed:
		return 0, net.ErrClosed
	}
}

func (s *scriptNIC) WriteFrame([]byte) error { return nil }

func (s *scriptNIC) SetReadDeadline(d time.Time) error {
	s.deadlines <- d
	if !d.IsZero() && !d.After(time.Now()) && s.kick != nil {
		s.kick()
	}
	return nil
}

func (s *scriptNIC) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// nextDeadline is the next deadline the gate set on s.
func nextDeadline(t *testing.T, s *scriptNIC) time.Time {
	t.Helper()
	select {
	case d := <-s.deadlines:
		return d
	case <-time.After(gateWait):
		t.Fatal("the gate set no read deadline")
	}
	return time.Time{}
}

// TestNICGateCloseRaces stages what a real backend does only now and then:
// a frame wins the race with the kick of Close, and a kick meant for an
// earlier loan reaches a new loan's read.
func TestNICGateCloseRaces(t *testing.T) {
	s := newScriptNIC()
	g, err := NewNICGate(s)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if d := nextDeadline(t, s); !d.IsZero() {
		t.Fatalf("NewNICGate set the deadline %v; want it cleared", d)
	}
	g.Open()

	// The read in the backend returns a frame, not the timeout, as the
	// loan closes: the closed loan must not return it.
	first := mustLend(t, g)
	s.kick = func() { s.in <- readResult{frame: testFrame("read as the VM closed")} }
	r := startRead(first)
	<-s.entered
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if d := nextDeadline(t, s); d.IsZero() || d.After(time.Now()) {
		t.Fatalf("Close set the deadline %v; want one in the past, to end the read at once", d)
	}
	if res := <-r; !isClosed(res.err) || len(res.frame) != 0 {
		t.Fatalf("a closed loan's read returned %q, %v; want no frame and a closed error", res.frame, res.err)
	}

	// The next Lend clears the deadline; a timeout the new loan's read
	// still sees (a kick it was not meant for) makes it read again.
	s.kick = nil
	second := mustLend(t, g)
	defer second.Close()
	if d := nextDeadline(t, s); !d.IsZero() {
		t.Fatalf("Lend set the deadline %v; want it cleared", d)
	}
	s.in <- readResult{err: os.ErrDeadlineExceeded}
	s.in <- readResult{frame: testFrame("for the second VM")}
	res := <-startRead(second)
	if res.err != nil || string(res.frame[14:]) != "for the second VM" {
		t.Fatalf("the new loan's read returned %q, %v; want the frame after the stray timeout", res.frame, res.err)
	}
	if d := nextDeadline(t, s); !d.IsZero() {
		t.Fatalf("after a stray timeout the loan set the deadline %v; want it cleared", d)
	}
	// Other errors are the VM's to see (its NIC backs off and reads on).
	s.in <- readResult{err: unix.ECONNREFUSED}
	if res := <-startRead(second); !errors.Is(res.err, unix.ECONNREFUSED) {
		t.Fatalf("a backend error reached the loan's read as %v", res.err)
	}
}

// TestNICGateTAP runs the gate over a real TAP in a network namespace the
// test creates, with the kernel's IP stack as the network: the frames
// the kernel sends into the TAP are read and dropped while the gate is
// shut, a VM's NIC is replaced without closing the TAP, and once the
// gate is open frames flow both ways.
func TestNICGateTAP(t *testing.T) { runTAPScenario(t, gateTAPScenario) }

func gateTAPScenario(t testing.TB) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	tap, err := OpenTAP("ftvmgate0")
	if err != nil {
		return err
	}
	g, err := NewNICGate(tap)
	if err != nil {
		tap.Close()
		return err
	}
	defer g.Close()
	// No IPv6 on the link, so the only frames in the TAP are the test's.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+tap.Name()+"/disable_ipv6", []byte("1"), 0); err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "10.99.0.1/24", "dev", tap.Name()},
		{"link", "set", tap.Name(), "address", "02:00:00:00:00:01", "up"},
		{"neigh", "add", "10.99.0.2", "lladdr", "02:66:74:76:6d:01", "dev", tap.Name()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 5555})
	if err != nil {
		return err
	}
	defer rx.Close()
	rxGot := func(d time.Duration) (string, error) {
		buf := make([]byte, 100)
		rx.SetReadDeadline(time.Now().Add(d))
		n, _, err := rx.ReadFromUDP(buf)
		return string(buf[:n]), err
	}
	tx, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: 7000})
	if err != nil {
		return err
	}
	defer tx.Close()
	toKernel := func(payload string) []byte {
		return udpFrame([6]byte{2, 0, 0, 0, 0, 1}, DefaultMAC, [4]byte{10, 99, 0, 2}, [4]byte{10, 99, 0, 1}, 7000, 5555, []byte(payload))
	}
	// payloadOf is a frame's UDP payload, if it is the test's datagram.
	payloadOf := func(f []byte) string {
		if len(f) > 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17 {
			return string(f[42:])
		}
		return ""
	}

	// Shut: the kernel's frames are read from the TAP and dropped.
	loan, err := g.Lend()
	if err != nil {
		return err
	}
	nic := newNIC(loan, DefaultMAC, make(chan struct{}))
	const stale = 5
	for range stale {
		if _, err := tx.Write([]byte("already answered")); err != nil {
			return err
		}
	}
	if !waitFor(func() bool { return g.Dropped() >= stale }) {
		return fmt.Errorf("Dropped = %d after %d datagrams into a shut gate's TAP", g.Dropped(), stale)
	}
	time.Sleep(gateQuiet) // any frame of the kernel's beyond the test's is dropped too
	if len(nic.rx) != 0 {
		return fmt.Errorf("%d frames reached a VM behind a shut gate", len(nic.rx))
	}
	dropped := g.Dropped()
	if err := nic.deliver(0, 0, toKernel("lost")); err != nil || g.Dropped() != dropped+1 {
		return fmt.Errorf("a VM's frame into a shut gate: %v, %d dropped (was %d)", err, g.Dropped(), dropped)
	}
	if p, err := rxGot(gateQuiet); err == nil {
		return fmt.Errorf("a frame through a shut gate reached the kernel: %q", p)
	}
	// The gate's own WriteFrame (the gratuitous ARP at go-live) passes.
	if err := g.WriteFrame(toKernel("garp")); err != nil {
		return err
	}
	if p, err := rxGot(gateWait); err != nil || p != "garp" {
		return fmt.Errorf("the gate's WriteFrame: the kernel got %q, %v", p, err)
	}

	// The VM is replaced: its NIC's reader, blocked in the TAP, ends at
	// once, and the TAP stays open for the next VM.
	start := time.Now()
	if err := nic.close(); err != nil {
		return err
	}
	t.Logf("closing a VM's NIC on the TAP took %v; %d frames dropped while shut", time.Since(start), g.Dropped())
	nic = newNIC(mustLend(t, g), DefaultMAC, make(chan struct{}))
	defer nic.close()

	// Go-live: frames pass both ways.
	g.Open()
	if _, err := tx.Write([]byte("live")); err != nil {
		return err
	}
	timeout := time.After(gateWait)
	for found := false; !found; {
		select {
		case f := <-nic.rx:
			switch p := payloadOf(f); p {
			case "live":
				found = true
			case "":
			default:
				return fmt.Errorf("the VM got %q after go-live; want only what the kernel sent after it", p)
			}
		case <-timeout:
			return errors.New("no frame reached the VM from the TAP after Open")
		}
	}
	if err := nic.deliver(0, 0, toKernel("pong")); err != nil {
		return err
	}
	if p, err := rxGot(gateWait); err != nil || p != "pong" {
		return fmt.Errorf("the kernel got %q, %v; want the VM's datagram", p, err)
	}
	return nil
}
