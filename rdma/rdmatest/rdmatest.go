// Package rdmatest is the conformance suite every rdma.Provider passes:
// rdma/shm's tests and rdma/verbs' call Run with their provider, so that
// the ring protocol is checked alike over each kind of memory. RunTransport
// runs the transport-level part (rdma.Transport over loopback TCP with the
// provider, or over TCP alone with a nil provider).
//
// Run checks the Link contract (order of placement before signals, Wait,
// Params checking, Revoke) and the ring protocol over it: order, wrap-
// around at every offset, a full ring, a peer that dies in the middle of
// a write, a peer that writes a wild cursor or a malformed record, a
// stale writer after fencing, and reconnection with fresh endpoints.
//
//	func TestConformance(t *testing.T) { rdmatest.Run(t, shm.Provider{Dir: t.TempDir()}) }
package rdmatest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/ring"
	"github.com/ftvm/ftvm/transport"
)

// smallRing is the ring the tests use: small, so that they wrap often.
const smallRing = rdma.MinRingBytes

// Run runs the conformance suite against p.
func Run(t *testing.T, p rdma.Provider) {
	t.Run("ParamsChecked", func(t *testing.T) { testParamsChecked(t, p) })
	t.Run("LinkPlacesBeforeSignal", func(t *testing.T) { testLinkOrder(t, p) })
	t.Run("LinkWait", func(t *testing.T) { testLinkWait(t, p) })
	t.Run("LinkRevoke", func(t *testing.T) { testLinkRevoke(t, p) })
	t.Run("RingOrder", func(t *testing.T) { testRingOrder(t, p) })
	t.Run("RingBothWaysAtOnce", func(t *testing.T) { testBothWays(t, p) })
	t.Run("RingWrapAtEveryOffset", func(t *testing.T) { testWrapEveryOffset(t, p) })
	t.Run("RingFull", func(t *testing.T) { testRingFull(t, p) })
	t.Run("PeerDiesMidWrite", func(t *testing.T) { testPeerDiesMidWrite(t, p) })
	t.Run("WildPeer", func(t *testing.T) { testWildPeer(t, p) })
	t.Run("StaleWriterAfterFence", func(t *testing.T) { testFence(t, p) })
	t.Run("Reconnect", func(t *testing.T) { testReconnect(t, p) })
}

// Pair opens two endpoints of p with rings of ringBytes and connects them
// to each other; both are closed when the test ends.
func Pair(t testing.TB, p rdma.Provider, ringBytes int) (a, b rdma.Link) {
	t.Helper()
	ea, err := p.Open(rdma.RegionBytes(ringBytes))
	if err != nil {
		t.Fatalf("%s: Open: %v", p.Name(), err)
	}
	eb, err := p.Open(rdma.RegionBytes(ringBytes))
	if err != nil {
		ea.Close()
		t.Fatalf("%s: Open: %v", p.Name(), err)
	}
	pa, pb := ea.Params(), eb.Params()
	if a, err = ea.Connect(pb); err != nil {
		t.Fatalf("%s: Connect: %v", p.Name(), err)
	}
	if b, err = eb.Connect(pa); err != nil {
		t.Fatalf("%s: Connect: %v", p.Name(), err)
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
		ea.Close()
		eb.Close()
	})
	return a, b
}

// RingPair is Pair with the ring protocol on both links (generations 1
// and 2), delivery enabled.
func RingPair(t testing.TB, p rdma.Provider, ringBytes int) (a, b *rdma.RingConn) {
	t.Helper()
	la, lb := Pair(t, p, ringBytes)
	return ringsOver(t, la, lb)
}

func ringsOver(t testing.TB, la, lb rdma.Link) (a, b *rdma.RingConn) {
	t.Helper()
	var err error
	if a, err = rdma.NewRingConn(la, 1, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if b, err = rdma.NewRingConn(lb, 2, 1, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	a.EnableDelivery()
	b.EnableDelivery()
	return a, b
}

func pollUntil(t testing.TB, l rdma.Link, want int, buf []uint32) []uint32 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(buf) < want {
		n, err := l.Poll(buf[len(buf):cap(buf)][:0])
		if err != nil {
			t.Fatalf("Poll: %v", err)
		}
		buf = buf[:len(buf)+n]
		if n == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("Poll: %d signals after 5s, want %d", len(buf), want)
			}
			l.Wait(time.Millisecond)
		}
	}
	return buf
}

func testParamsChecked(t *testing.T, p rdma.Provider) {
	ea, err := p.Open(rdma.RegionBytes(smallRing))
	if err != nil {
		t.Fatal(err)
	}
	defer ea.Close()
	eb, err := p.Open(rdma.RegionBytes(smallRing))
	if err != nil {
		t.Fatal(err)
	}
	defer eb.Close()
	good := eb.Params()
	bad := map[string][]byte{
		"empty":      nil,
		"short":      good[:len(good)/2],
		"one byte":   good[:1],
		"longer":     append(append([]byte{}, good...), 0xff),
		"random":     randomBytes(len(good)),
		"all ones":   bytes.Repeat([]byte{0xff}, len(good)),
		"first byte": flipped(good, 0),
		"last byte":  flipped(good, len(good)-1),
	}
	for name, b := range bad {
		l, err := ea.Connect(b)
		if err == nil {
			l.Close()
			t.Errorf("Connect(%s params) succeeded; want an error", name)
		}
	}
	if _, err := p.Open(4095); err == nil {
		t.Error("Open(4095) succeeded; a size is a multiple of 4096")
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.N(256))
	}
	return b
}

func flipped(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 0x5a
	return c
}

// testLinkOrder: when a signal is polled, the bytes of its write and of
// every earlier one are in place.
func testLinkOrder(t *testing.T, p rdma.Provider) {
	a, b := Pair(t, p, smallRing)
	st := a.Staging()
	const batch, batches = 64, 40
	imms := make([]uint32, 0, rdma.MaxUnpolledSignals)
	slots := (len(st) - rdma.RingOffset) / 8
	for k := 0; k < batches; k++ {
		for i := 0; i < batch; i++ {
			v := uint32(k*batch + i)
			off := rdma.RingOffset + int(v)%slots*8
			binary.LittleEndian.PutUint64(st[off:], uint64(v)<<8|0xa5)
			var err error
			if i%2 == 0 {
				err = a.WriteImm(off, 8, v)
			} else {
				// A plain write, ordered before the next signal.
				if err = a.Write(off, 8); err == nil {
					err = a.WriteImm(off, 0, v)
				}
			}
			if err != nil {
				t.Fatalf("write %d: %v", v, err)
			}
		}
		imms = pollUntil(t, b, batch, imms[:0])
		for i, imm := range imms {
			want := uint32(k*batch + i)
			if imm != want {
				t.Fatalf("signal %d is %d, want %d (out of order)", want, imm, want)
			}
			off := rdma.RingOffset + int(want)%slots*8
			if got := binary.LittleEndian.Uint64(b.Local()[off:]); got != uint64(want)<<8|0xa5 {
				t.Fatalf("at signal %d the bytes at %d are %#x, want %#x: placed after the signal", want, off, got, uint64(want)<<8|0xa5)
			}
		}
	}
	if err := a.Write(len(st)-4, 8); err == nil {
		t.Error("Write beyond the peer's region succeeded")
	}
	if err := a.WriteImm(-8, 8, 0); err == nil {
		t.Error("WriteImm at a negative offset succeeded")
	}
}

func testLinkWait(t *testing.T, p rdma.Provider) {
	a, b := Pair(t, p, smallRing)
	if err := b.Wait(5 * time.Millisecond); err != nil {
		t.Fatalf("idle Wait: %v", err)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		time.Sleep(20 * time.Millisecond)
		a.WriteImm(rdma.RingOffset, 0, 77)
	}()
	defer func() { <-wrote }()
	imms := make([]uint32, 0, 4)
	deadline := time.Now().Add(5 * time.Second)
	for len(imms) == 0 && time.Now().Before(deadline) {
		if err := b.Wait(time.Second); err != nil {
			t.Fatal(err)
		}
		n, err := b.Poll(imms)
		if err != nil {
			t.Fatal(err)
		}
		imms = imms[:n]
	}
	if len(imms) != 1 || imms[0] != 77 {
		t.Fatalf("after Wait, Poll gave %v, want [77]", imms)
	}
}

// testLinkRevoke: after Revoke, the peer's writes fail or change nothing.
func testLinkRevoke(t *testing.T, p rdma.Provider) {
	a, b := Pair(t, p, smallRing)
	if err := a.WriteImm(rdma.RingOffset, 0, 1); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, b, 1, make([]uint32, 0, 4))
	if err := b.Revoke(); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if err := b.Revoke(); err != nil {
		t.Fatalf("second Revoke: %v", err)
	}
	before := append([]byte{}, b.Local()...)
	st := a.Staging()
	for i := range st[rdma.RingOffset:] {
		st[rdma.RingOffset+i] = 0xee
	}
	werr := a.Write(rdma.RingOffset, len(st)-rdma.RingOffset)
	ierr := a.WriteImm(rdma.RingOffset, 64, 2)
	time.Sleep(20 * time.Millisecond) // a NIC's error completion, or a late store
	if !bytes.Equal(before, b.Local()) {
		t.Fatal("a write after Revoke changed the revoking side's region")
	}
	n, err := b.Poll(make([]uint32, 0, 4))
	if n != 0 {
		t.Fatalf("a signal after Revoke arrived (%d, err %v)", n, err)
	}
	t.Logf("stale writer: Write: %v; WriteImm: %v", werr, ierr)
}

type frameRec struct {
	typ     transport.Type
	payload []byte
}

func payloadFor(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j)
	}
	return b
}

// drain receives on r until want frames arrived.
func drain(t testing.TB, r *rdma.RingConn, want int, got []frameRec) []frameRec {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < want {
		_, n, err := r.Receive(func(typ transport.Type, _ transport.Flags, p []byte) {
			got = append(got, frameRec{typ, append([]byte{}, p...)})
		})
		if err != nil {
			t.Fatalf("Receive after %d frames: %v", len(got), err)
		}
		if n == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d frames after 10s, want %d", len(got), want)
			}
			r.Wait(time.Millisecond)
		}
	}
	return got
}

func testRingOrder(t *testing.T, p rdma.Provider) {
	a, b := RingPair(t, p, smallRing)
	const frames = 3000
	done := make(chan error, 1)
	go func() {
		for i := 0; i < frames; i++ {
			typ := []transport.Type{transport.TypeLog, transport.TypeAck, transport.TypeOutput, transport.TypeControl}[i%4]
			if err := a.Send(typ, 0, payloadFor(i, rand.N(a.MaxPayload()/4))); err != nil {
				done <- fmt.Errorf("Send %d: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	var got []frameRec
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < frames && time.Now().Before(deadline) {
		_, _, err := b.Receive(func(typ transport.Type, _ transport.Flags, pl []byte) {
			got = append(got, frameRec{typ, append([]byte{}, pl...)})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != frames {
		t.Fatalf("received %d frames, want %d", len(got), frames)
	}
	for i, f := range got {
		want := payloadFor(i, len(f.payload))
		if !bytes.Equal(f.payload, want) || f.typ != []transport.Type{transport.TypeLog, transport.TypeAck, transport.TypeOutput, transport.TypeControl}[i%4] {
			t.Fatalf("frame %d: type %s payload of %d bytes differs from what was sent", i, f.typ, len(f.payload))
		}
	}
	// And back the other way, so both directions wrap.
	for i := 0; i < 200; i++ {
		if err := b.Send(transport.TypeAck, 0, payloadFor(i, 100)); err != nil {
			t.Fatal(err)
		}
		if back := drain(t, a, 1, nil); !bytes.Equal(back[0].payload, payloadFor(i, 100)) {
			t.Fatalf("reply %d differs", i)
		}
	}
}

// testBothWays: each side sends and receives at once, on two goroutines,
// as a transport's sender and poller do: a consumer cursor may come back
// before the sender's call that published the record returns.
func testBothWays(t *testing.T, p rdma.Provider) {
	la, lb := Pair(t, p, smallRing)
	// a's signals return late now and then, as a post whose caller is
	// descheduled does: the peer has consumed the record and written its
	// cursor back by then.
	a, b := ringsOver(t, &lateSignals{Link: la, every: 5, delay: 50 * time.Microsecond}, lb)
	const frames = 5000
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, side := range []*rdma.RingConn{a, b} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < frames; i++ {
				if err := side.Send(transport.TypeAck, 0, payloadFor(i, 8+i%64)); err != nil {
					errs <- fmt.Errorf("Send %d: %w", i, err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			got := 0
			deadline := time.Now().Add(30 * time.Second)
			for got < frames {
				_, _, err := side.Receive(func(_ transport.Type, _ transport.Flags, pl []byte) {
					if !bytes.Equal(pl, payloadFor(got, 8+got%64)) {
						errs <- fmt.Errorf("frame %d differs", got)
					}
					got++
				})
				if err != nil {
					errs <- fmt.Errorf("Receive after %d frames: %w", got, err)
					return
				}
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("%d frames in 30s, want %d", got, frames)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// lateSignals is a Link whose WriteImm returns late every few calls.
type lateSignals struct {
	rdma.Link
	every, n int
	delay    time.Duration
}

func (l *lateSignals) WriteImm(off, n int, imm uint32) error {
	err := l.Link.WriteImm(off, n, imm)
	if l.n++; l.n%l.every == 0 {
		for start := time.Now(); time.Since(start) < l.delay; {
		}
	}
	return err
}

// recordPayloadFor is the frame payload that makes a record of size bytes.
func recordPayloadFor(size int) int { return size - ring.RecordHeaderBytes - 4 }

// testWrapEveryOffset puts the producer cursor at every 8-byte offset of
// the ring in turn and sends a record of the largest size from there, so
// that every place a record can wrap is met once.
func testWrapEveryOffset(t *testing.T, p rdma.Provider) {
	a, b := RingPair(t, p, smallRing)
	capacity := uint64(smallRing)
	maxRec := int(capacity / 2)
	pos := uint64(0) // mirror of the producer's cursor
	i := 0
	send := func(size int) {
		t.Helper()
		pl := payloadFor(i, recordPayloadFor(size))
		if err := a.Send(transport.TypeLog, 0, pl); err != nil {
			t.Fatalf("Send at cursor %d: %v", pos, err)
		}
		got := drain(t, b, 1, nil)
		if !bytes.Equal(got[0].payload, pl) {
			t.Fatalf("record of %d bytes sent at cursor %d came back different", size, pos)
		}
		off := pos % capacity
		if uint64(size) > capacity-off {
			pos += capacity - off
		}
		pos += uint64(size)
		i++
	}
	for k := uint64(0); k < capacity; k += 8 {
		// Bring the cursor to offset k with fillers (records of at least 8 bytes).
		for pos%capacity != k {
			d := int((k - pos%capacity) % capacity)
			if d < 8+0 {
				d += int(capacity)
			}
			send(min(d, maxRec))
		}
		send(maxRec)
	}
	t.Logf("%d records sent across %d laps", i, pos/capacity)
}

func testRingFull(t *testing.T, p rdma.Provider) {
	for _, size := range []int{8, 64, 1000} {
		t.Run(fmt.Sprintf("records of %d bytes", size), func(t *testing.T) {
			a, b := RingPair(t, p, smallRing)
			n := 0
			for {
				err := a.TrySend(transport.TypeLog, 0, payloadFor(n, size))
				if errors.Is(err, transport.ErrWouldBlock) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				n++
				if n > smallRing {
					t.Fatal("TrySend never reported a full ring")
				}
			}
			rec := ring.RecordBytes(4 + size)
			if n*rec > smallRing || n > rdma.MaxSignalsInFlight {
				t.Fatalf("%d records of %d bytes went into a %d-byte ring: unconsumed bytes overwritten", n, rec, smallRing)
			}
			got := drain(t, b, n, nil)
			for i, f := range got {
				if !bytes.Equal(f.payload, payloadFor(i, size)) {
					t.Fatalf("record %d of a full ring came back different", i)
				}
			}
			// The consumer's cursor comes back; the producer may send again.
			deadline := time.Now().Add(5 * time.Second)
			for {
				a.Receive(func(transport.Type, transport.Flags, []byte) {})
				err := a.TrySend(transport.TypeLog, 0, payloadFor(0, size))
				if err == nil {
					break
				}
				if !errors.Is(err, transport.ErrWouldBlock) || time.Now().After(deadline) {
					t.Fatalf("TrySend after the ring drained: %v", err)
				}
				// The write-back may be due only after more is consumed.
				b.Receive(func(transport.Type, transport.Flags, []byte) {})
			}
		})
	}
}

// testPeerDiesMidWrite: a record whose bytes are written but never
// signalled is not delivered, and its writer's death leaves the receiver
// well.
func testPeerDiesMidWrite(t *testing.T, p rdma.Provider) {
	la, lb := Pair(t, p, smallRing)
	a, b := ringsOver(t, la, lb)
	if err := a.Send(transport.TypeLog, 0, payloadFor(1, 40)); err != nil {
		t.Fatal(err)
	}
	st := la.Staging()
	// Half a record, no signal: the writer dies here.
	rec := st[rdma.RingOffset+56:]
	binary.LittleEndian.PutUint32(rec, 4+200)
	rec[4] = byte(transport.TypeLog)
	la.Write(rdma.RingOffset+56, 100)
	la.Close()
	got := drain(t, b, 1, nil)
	if !bytes.Equal(got[0].payload, payloadFor(1, 40)) {
		t.Fatal("the record before the death came back different")
	}
	for i := 0; i < 10; i++ {
		_, n, err := b.Receive(func(transport.Type, transport.Flags, []byte) {})
		if n != 0 {
			t.Fatalf("a record never signalled was delivered (err %v)", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// testWildPeer: every value a peer controls, gone wrong, fails the
// connection with rdma.ErrProtocol and no access outside the regions.
func testWildPeer(t *testing.T, p rdma.Provider) {
	capacity := uint64(smallRing)
	cases := []struct {
		name string
		// forge runs on the attacker's link after one good 16-byte record
		// (cursor 16) and returns the signal to post.
		forge func(st []byte) (off, n int, imm uint32)
		// atSender: the signal is a head aimed at the victim's sender.
		atSender bool
	}{
		{"tail beyond the ring", func([]byte) (int, int, uint32) {
			return 0, 0, rdma.EncodeSignal(rdma.SignalTail, 16+capacity+8)
		}, false},
		{"tail not aligned", func([]byte) (int, int, uint32) { return 0, 0, rdma.EncodeSignal(rdma.SignalTail, 20) }, false},
		{"unknown signal kind", func([]byte) (int, int, uint32) { return 0, 0, 3<<30 | 16 }, false},
		{"record longer than the ring allows", func(st []byte) (int, int, uint32) {
			binary.LittleEndian.PutUint32(st[rdma.RingOffset+16:], 0x7fffffff)
			return rdma.RingOffset + 16, 8, rdma.EncodeSignal(rdma.SignalTail, 32)
		}, false},
		{"record past the published cursor", func(st []byte) (int, int, uint32) {
			binary.LittleEndian.PutUint32(st[rdma.RingOffset+16:], 4+100)
			st[rdma.RingOffset+16+4] = byte(transport.TypeLog)
			return rdma.RingOffset + 16, 8, rdma.EncodeSignal(rdma.SignalTail, 24)
		}, false},
		{"record with no frame header", func(st []byte) (int, int, uint32) {
			binary.LittleEndian.PutUint32(st[rdma.RingOffset+16:], 2)
			return rdma.RingOffset + 16, 8, rdma.EncodeSignal(rdma.SignalTail, 24)
		}, false},
		{"record of a bulk-lane type", func(st []byte) (int, int, uint32) {
			binary.LittleEndian.PutUint32(st[rdma.RingOffset+16:], 4)
			st[rdma.RingOffset+20] = byte(transport.TypeCheckpoint)
			return rdma.RingOffset + 16, 8, rdma.EncodeSignal(rdma.SignalTail, 24)
		}, false},
		{"record of a transport-internal type", func(st []byte) (int, int, uint32) {
			binary.LittleEndian.PutUint32(st[rdma.RingOffset+16:], 4)
			st[rdma.RingOffset+20] = byte(transport.TypeHello)
			return rdma.RingOffset + 16, 8, rdma.EncodeSignal(rdma.SignalTail, 24)
		}, false},
		{"wrap marker before the published end", func(st []byte) (int, int, uint32) {
			binary.LittleEndian.PutUint32(st[rdma.RingOffset+16:], ring.WrapMarker)
			return rdma.RingOffset + 16, 8, rdma.EncodeSignal(rdma.SignalTail, 24)
		}, false},
		{"wrong hello", func(st []byte) (int, int, uint32) {
			return 0, 0, 0 // replaced below: the hello is forged before the first record
		}, false},
		{"consumer cursor past the producer's", func([]byte) (int, int, uint32) {
			return 0, 0, rdma.EncodeSignal(rdma.SignalHead, 4096)
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			la, lb := Pair(t, p, smallRing)
			attacker, victim := ringsOver(t, la, lb)
			if tc.name == "wrong hello" {
				st := la.Staging()
				copy(st[0:], "NOTAHELLO")
				if err := la.WriteImm(0, 32, rdma.EncodeSignal(rdma.SignalTail, 0)); err != nil {
					t.Fatal(err)
				}
				expectProtocolError(t, victim)
				return
			}
			if tc.atSender {
				// The victim sends; the attacker, its consumer, claims to
				// have consumed more than was sent.
				if err := victim.Send(transport.TypeLog, 0, payloadFor(0, 8)); err != nil {
					t.Fatal(err)
				}
				drain(t, attacker, 1, nil)
				off, n, imm := tc.forge(la.Staging())
				if err := la.WriteImm(off, n, imm); err != nil {
					t.Fatal(err)
				}
				expectProtocolError(t, victim)
				return
			}
			if err := attacker.Send(transport.TypeLog, 0, payloadFor(0, 8)); err != nil {
				t.Fatal(err)
			}
			drain(t, victim, 1, nil)
			off, n, imm := tc.forge(la.Staging())
			if err := la.WriteImm(off, n, imm); err != nil {
				t.Fatal(err)
			}
			expectProtocolError(t, victim)
		})
	}
}

func expectProtocolError(t *testing.T, r *rdma.RingConn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_, n, err := r.Receive(func(typ transport.Type, _ transport.Flags, pl []byte) {
			t.Errorf("a forged record was delivered: %s, %d bytes", typ, len(pl))
		})
		if err != nil {
			if !errors.Is(err, rdma.ErrProtocol) {
				t.Fatalf("error %v does not wrap rdma.ErrProtocol", err)
			}
			if err2 := r.Send(transport.TypeAck, 0, nil); !errors.Is(err2, transport.ErrLaneDown) {
				t.Fatalf("Send after a protocol error: %v, want ErrLaneDown", err2)
			}
			t.Logf("dropped: %v", err)
			return
		}
		if n == 0 {
			r.Wait(time.Millisecond)
		}
	}
	t.Fatal("no error within 5s for a peer that broke the protocol")
}

// testFence: after the receiver fences (Revoke), a stale producer's send
// fails or delivers nothing, and the receiver's region is unchanged.
func testFence(t *testing.T, p rdma.Provider) {
	la, lb := Pair(t, p, smallRing)
	stale, fenced := ringsOver(t, la, lb)
	if err := stale.Send(transport.TypeLog, 0, payloadFor(1, 32)); err != nil {
		t.Fatal(err)
	}
	drain(t, fenced, 1, nil)
	if err := fenced.Revoke(); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	before := append([]byte{}, lb.Local()...)
	var sendErr error
	for i := 0; i < 20 && sendErr == nil; i++ {
		sendErr = stale.Send(transport.TypeLog, 0, payloadFor(i, 200))
		time.Sleep(time.Millisecond)
	}
	if !bytes.Equal(before, lb.Local()) {
		t.Fatal("the stale primary's write after the fence changed the fenced side's region")
	}
	if _, n, _ := fenced.Receive(func(transport.Type, transport.Flags, []byte) {}); n != 0 {
		t.Fatal("a frame sent after the fence was delivered")
	}
	if _, _, err := fenced.Receive(nil); !errors.Is(err, rdma.ErrRevoked) {
		t.Fatalf("Receive after Revoke: %v, want ErrRevoked", err)
	}
	t.Logf("stale sender's error: %v", sendErr)
}

// testReconnect: a fresh pair of endpoints after a closed one works, and
// the old link's writes reach nothing of the new.
func testReconnect(t *testing.T, p rdma.Provider) {
	la, lb := Pair(t, p, smallRing)
	a, b := ringsOver(t, la, lb)
	if err := a.Send(transport.TypeLog, 0, payloadFor(1, 10)); err != nil {
		t.Fatal(err)
	}
	drain(t, b, 1, nil)
	lb.Revoke()
	lb.Close()
	for gen := 0; gen < 3; gen++ {
		na, nb := RingPair(t, p, smallRing)
		a.Send(transport.TypeLog, 0, payloadFor(99, 10)) // the old generation's, to nowhere
		var got []frameRec
		for i := 0; i < 50; i++ {
			if err := na.Send(transport.TypeAck, 0, payloadFor(i, 300)); err != nil {
				t.Fatal(err)
			}
			got = drain(t, nb, i+1, got)
		}
		for i, f := range got {
			if !bytes.Equal(f.payload, payloadFor(i, 300)) {
				t.Fatalf("generation %d: frame %d differs", gen, i)
			}
		}
	}
}
