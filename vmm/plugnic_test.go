package vmm

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// chanNIC is a NIC backend the test plays the network of: frames pushed
// into in are read, frames written land in out.
type chanNIC struct {
	in     chan []byte
	out    chan []byte
	closed chan struct{}
	once   sync.Once
	closes atomic.Int32
}

func newChanNIC() *chanNIC {
	return &chanNIC{in: make(chan []byte, 64), out: make(chan []byte, 1024), closed: make(chan struct{})}
}

func (c *chanNIC) WriteFrame(f []byte) error {
	select {
	case <-c.closed:
		return net.ErrClosed
	case c.out <- bytes.Clone(f):
		return nil
	}
}

func (c *chanNIC) ReadFrame(buf []byte) (int, error) {
	select {
	case f := <-c.in:
		return copy(buf, f), nil
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *chanNIC) Close() error {
	c.closes.Add(1)
	c.once.Do(func() { close(c.closed) })
	return nil
}

// plugWait bounds how long a test waits for what must happen; how long
// it waits to see that nothing happens is plugQuiet.
const (
	plugWait  = 10 * time.Second
	plugQuiet = 50 * time.Millisecond
)

type readResult struct {
	frame []byte
	err   error
}

func startRead(p *PlugNIC) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 2048)
		n, err := p.ReadFrame(buf)
		ch <- readResult{buf[:n], err}
	}()
	return ch
}

func TestPlugNICUnpluggedThenPlugged(t *testing.T) {
	p := NewPlugNIC()
	if p.Plugged() {
		t.Fatal("a new PlugNIC says it is plugged")
	}
	for range 3 {
		if err := p.WriteFrame(testFrame("lost")); err != nil {
			t.Fatalf("WriteFrame unplugged: %v; want the frame dropped without error", err)
		}
	}
	if p.Dropped() != 3 {
		t.Fatalf("Dropped = %d, want 3", p.Dropped())
	}
	// Reads wait while unplugged...
	reads := []<-chan readResult{startRead(p), startRead(p)}
	select {
	case r := <-reads[0]:
		t.Fatalf("ReadFrame returned %q, %v while unplugged", r.frame, r.err)
	case <-time.After(plugQuiet):
	}
	// ...and go on from the backend once it is plugged.
	b := newChanNIC()
	if err := p.Plug(b); err != nil {
		t.Fatal(err)
	}
	b.in <- testFrame("one")
	b.in <- testFrame("two")
	var got []string
	for _, r := range reads {
		select {
		case res := <-r:
			if res.err != nil {
				t.Fatal(res.err)
			}
			got = append(got, string(res.frame[14:]))
		case <-time.After(plugWait):
			t.Fatal("a read waiting on the unplugged NIC did not go on after Plug")
		}
	}
	if strings.Join(got, ",") != "one,two" && strings.Join(got, ",") != "two,one" {
		t.Fatalf("reads got %q", got)
	}
	if err := p.WriteFrame(testFrame("out")); err != nil {
		t.Fatal(err)
	}
	if f := <-b.out; string(f[14:]) != "out" || p.Dropped() != 3 {
		t.Fatalf("plugged write reached the backend as %q, %d dropped", f, p.Dropped())
	}
	// Plugging twice, or nothing, is refused; the first backend stays.
	other := newChanNIC()
	if err := p.Plug(other); err == nil || !strings.Contains(err.Error(), "already plugged") {
		t.Fatalf("second Plug: %v", err)
	}
	if err := NewPlugNIC().Plug(nil); err == nil {
		t.Fatal("Plug(nil) accepted")
	}
	// Close closes the plugged backend and ends its reads.
	r := startRead(p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-r:
		if !isClosed(res.err) {
			t.Fatalf("read after Close: %v; want a closed error", res.err)
		}
	case <-time.After(plugWait):
		t.Fatal("Close did not end a read on the plugged backend")
	}
	p.Close()
	if b.closes.Load() != 1 || other.closes.Load() != 0 {
		t.Fatalf("backend closed %d times, the refused one %d; want 1 and 0", b.closes.Load(), other.closes.Load())
	}
}

func TestPlugNICCloseUnplugged(t *testing.T) {
	p := NewPlugNIC()
	r := startRead(p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-r:
		if !isClosed(res.err) {
			t.Fatalf("read woken by Close: %v; want an error isClosed accepts", res.err)
		}
	case <-time.After(plugWait):
		t.Fatal("Close did not wake a read waiting for Plug")
	}
	if _, err := p.ReadFrame(make([]byte, 64)); !isClosed(err) {
		t.Fatalf("read after Close: %v", err)
	}
	if err := p.WriteFrame(testFrame("x")); !isClosed(err) {
		t.Fatalf("write after Close: %v", err)
	}
	b := newChanNIC()
	if err := p.Plug(b); err == nil || !strings.Contains(err.Error(), "after Close") {
		t.Fatalf("Plug after Close: %v", err)
	}
	if b.closes.Load() != 0 {
		t.Fatal("a refused Plug closed the caller's backend")
	}
}

// TestPlugNICConcurrent writes and reads from many goroutines across the
// Plug and the Close (run it with -race): every frame written is either
// counted as dropped or reaches the backend, exactly one of several racing
// Plugs wins, and every reader ends.
func TestPlugNICConcurrent(t *testing.T) {
	p := NewPlugNIC()
	b := newChanNIC()
	const writers, readers, frames = 8, 4, 10
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written atomic.Uint64
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := p.WriteFrame(testFrame("w")); err != nil {
					t.Error(err)
					return
				}
				written.Add(1)
			}
		}()
	}
	var delivered atomic.Uint64
	writersDone, drained := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(drained)
		for {
			select {
			case <-b.out:
				delivered.Add(1)
			case <-writersDone:
				return
			}
		}
	}()
	var readsDone sync.WaitGroup
	var got atomic.Uint64
	for range readers {
		readsDone.Add(1)
		go func() {
			defer readsDone.Done()
			buf := make([]byte, 2048)
			for {
				if _, err := p.ReadFrame(buf); err != nil {
					if !isClosed(err) {
						t.Error(err)
					}
					return
				}
				got.Add(1)
			}
		}()
	}
	time.Sleep(2 * time.Millisecond) // writers and readers at work, unplugged
	var plugs sync.WaitGroup
	var plugged atomic.Int32
	for range 3 {
		plugs.Add(1)
		go func() {
			defer plugs.Done()
			if p.Plug(b) == nil {
				plugged.Add(1)
			}
		}()
	}
	plugs.Wait()
	for range frames {
		b.in <- testFrame("r")
	}
	time.Sleep(2 * time.Millisecond) // writers at work, plugged
	close(stop)
	wg.Wait()
	close(writersDone)
	<-drained
	delivered.Add(uint64(len(b.out)))
	if plugged.Load() != 1 {
		t.Fatalf("%d of 3 concurrent Plugs succeeded; want exactly 1", plugged.Load())
	}
	if p.Dropped()+delivered.Load() != written.Load() {
		t.Fatalf("%d dropped + %d delivered; want the %d written", p.Dropped(), delivered.Load(), written.Load())
	}
	t.Logf("%d frames written: %d dropped unplugged, %d delivered", written.Load(), p.Dropped(), delivered.Load())
	deadline := time.Now().Add(plugWait)
	for got.Load() < frames && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	p.Close()
	readsDone.Wait()
	if got.Load() != frames {
		t.Fatalf("readers got %d frames, want %d", got.Load(), frames)
	}
}

// TestPlugNICUnderTheNIC is a secondary going live: its NIC sends into
// the void and hears nothing until a UDP backend is plugged in; then
// frames flow both ways.
func TestPlugNICUnderTheNIC(t *testing.T) {
	p := NewPlugNIC()
	b := newExitBench(t, benchOpts{nic: p})
	out := testFrame("before go-live")
	b.mem.Write(0x4000, out)
	if st, _ := b.mustCall(PortNIC, OpNICTX, 0x4000, uint32(len(out)), 0); st != StatusOK || p.Dropped() != 1 {
		t.Fatalf("TX unplugged: status %d, %d dropped; want OK and dropped", st, p.Dropped())
	}
	if _, r := b.mustCall(PortNIC, OpNICWait, 0, 0, uint64(plugQuiet)); r != 0 {
		t.Fatal("an unplugged NIC received a frame")
	}
	udp, peer := udpPeer(t)
	if err := p.Plug(udp); err != nil {
		t.Fatal(err)
	}
	in := testFrame("after go-live")
	if _, err := peer.WriteToUDP(in, udp.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, r := b.mustCall(PortNIC, OpNICWait, 0, 0, uint64(plugWait)); r != 1 {
		t.Fatal("no frame after Plug")
	}
	if _, n := b.mustCall(PortNIC, OpNICRX, 0x3000, 2048, 0); n != uint64(len(in)) {
		t.Fatalf("RX returned %d bytes, want %d", n, len(in))
	}
	b.mustCall(PortNIC, OpNICTX, 0x4000, uint32(len(out)), 0)
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(plugWait))
	n, _, err := peer.ReadFromUDP(buf)
	if err != nil || !bytes.Equal(buf[:n], out) {
		t.Fatalf("peer got %q, %v", buf[:n], err)
	}
	// Closing the NIC (as Machine.Close does) closes the plugged socket.
	if err := b.nic.close(); err != nil {
		t.Fatal(err)
	}
	if err := udp.WriteFrame(out); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the plugged backend is still open after the NIC closed: %v", err)
	}
}
