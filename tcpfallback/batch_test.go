package tcpfallback

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dataWrites is the write system calls on lane l other than heartbeats
// (each heartbeat is one write of its own).
func dataWrites(tr *Transport, l Lane) uint64 {
	s := tr.Stats().Lanes[l]
	return s.Writes - s.HeartbeatsSent
}

// batchOf is n control-lane frames of mixed types and sizes.
func batchOf(n int) []OutFrame {
	types := []Type{TypeLog, TypeOutput, TypeAck, TypeControl}
	var fs []OutFrame
	for i := range n {
		p := payloadFor(i)
		if i%7 == 3 {
			p = bytes.Repeat(p, 40) // beyond coalesceMaxBytes
		}
		fs = append(fs, OutFrame{Type: types[i%len(types)], Payload: p})
	}
	return fs
}

// withCerts runs f under PSK and under mutual TLS.
func withCerts(t *testing.T, f func(t *testing.T, pairOf func(func(*Config)) (d, l *Transport, ds, ls *sink))) {
	t.Run("psk", func(t *testing.T) {
		f(t, func(m func(*Config)) (d, l *Transport, ds, ls *sink) { return pair(t, m) })
	})
	t.Run("tls", func(t *testing.T) {
		dir := t.TempDir()
		if err := WriteTestCertificates(dir, "primary", "secondary"); err != nil {
			t.Fatal(err)
		}
		f(t, func(m func(*Config)) (d, l *Transport, ds, ls *sink) { return pairTLS(t, dir, m) })
	})
}

// The frames of a SendBatch arrive whole and in order and leave in one
// write, where Send makes one write a frame (which shows that the
// counter counts writes).
func TestSendBatchIsOneWrite(t *testing.T) {
	withCerts(t, func(t *testing.T, pairOf func(func(*Config)) (d, l *Transport, ds, ls *sink)) {
		d, _, _, ls := pairOf(nil)
		const n = 12
		fs := batchOf(n)
		w0 := dataWrites(d, LaneControl)
		if sent, err := d.SendBatch(fs); err != nil || sent != n {
			t.Fatalf("SendBatch: %d sent, %v", sent, err)
		}
		if w := dataWrites(d, LaneControl) - w0; w != 1 {
			t.Fatalf("a batch of %d frames took %d writes, want 1", n, w)
		}
		got := ls.waitN(t, n)
		for i, f := range got {
			if f.Type != fs[i].Type || !bytes.Equal(f.Payload, fs[i].Payload) || f.Seq != uint32(i) {
				t.Fatalf("frame %d: %s seq %d %q, want %s seq %d %q", i, f.Type, f.Seq, f.Payload, fs[i].Type, i, fs[i].Payload)
			}
		}
		w0 = dataWrites(d, LaneControl)
		for _, f := range fs {
			if err := d.Send(f.Type, f.Payload); err != nil {
				t.Fatal(err)
			}
		}
		if w := dataWrites(d, LaneControl) - w0; w != n {
			t.Fatalf("%d Sends took %d writes, want one each", n, w)
		}
		ls.waitN(t, 2*n)
		if s := d.Stats().Lanes[LaneControl]; s.FramesSent-s.HeartbeatsSent != 2*n {
			t.Fatalf("frames sent %d (heartbeats %d), want %d", s.FramesSent, s.HeartbeatsSent, 2*n)
		}
	})
}

// A batch larger than a write's copy (and, under TLS, than a record)
// arrives whole and in order; a batch of two lanes, a transport type or
// a payload the peer does not take is refused with nothing sent; and
// TrySendBatch sends nothing while the writer is busy.
func TestSendBatchLargeAndRefused(t *testing.T) {
	withCerts(t, func(t *testing.T, pairOf func(func(*Config)) (d, l *Transport, ds, ls *sink)) {
		d, _, _, ls := pairOf(nil)
		fs := batchOf(600) // more frames than one writev takes, and over 16 KiB
		if sent, err := d.SendBatch(fs); err != nil || sent != len(fs) {
			t.Fatalf("SendBatch: %d sent, %v", sent, err)
		}
		got := ls.waitN(t, len(fs))
		for i, f := range got {
			if f.Type != fs[i].Type || !bytes.Equal(f.Payload, fs[i].Payload) {
				t.Fatalf("frame %d: %s %q, want %s %q", i, f.Type, f.Payload, fs[i].Type, fs[i].Payload)
			}
		}
		before := d.Stats().Lanes[LaneControl].FramesSent
		for name, bad := range map[string][]OutFrame{
			"two lanes":      {{Type: TypeLog}, {Type: TypeCheckpoint}},
			"transport type": {{Type: TypeLog}, {Type: TypeHeartbeat}},
			"too large":      {{Type: TypeLog}, {Type: TypeLog, Payload: make([]byte, DefaultMaxPayloadBytes+1)}},
		} {
			if sent, err := d.SendBatch(bad); err == nil || sent != 0 {
				t.Errorf("%s: %d sent, err %v; want a refusal", name, sent, err)
			}
		}
		l := d.lanes[LaneControl]
		l.wmu.Lock()
		sent, err := d.TrySendBatch(batchOf(3))
		l.wmu.Unlock()
		if !errors.Is(err, ErrWouldBlock) || sent != 0 {
			t.Fatalf("TrySendBatch with the writer busy: %d sent, %v; want ErrWouldBlock", sent, err)
		}
		if sent, err := d.TrySendBatch(batchOf(3)); err != nil || sent != 3 {
			t.Fatalf("TrySendBatch: %d sent, %v", sent, err)
		}
		ls.waitN(t, len(fs)+3)
		if s := d.Stats().Lanes[LaneControl]; s.FramesSent < before+3 {
			t.Fatalf("frames sent went from %d to %d, want 3 more", before, s.FramesSent)
		}
	})
}

// batchEnds records, at each OnBatchEnd of the listener's control lane,
// how many frames its sink had then; frames whose payload is "block"
// wait in OnFrame until released.
type batchEnds struct {
	sink    *sink
	mu      sync.Mutex
	ends    []int
	blocked chan struct{} // a "block" frame is in OnFrame
	release chan struct{}
	notify  chan struct{}
}

func (b *batchEnds) onFrame(f Frame) {
	if !f.Batched {
		panic("a frame with OnBatchEnd set came without Batched")
	}
	b.sink.on(f)
	if string(f.Payload) == "block" {
		b.blocked <- struct{}{}
		<-b.release
	}
}

func (b *batchEnds) onEnd(l Lane) {
	if l != LaneControl {
		return
	}
	n := len(b.sink.snapshot())
	b.mu.Lock()
	b.ends = append(b.ends, n)
	b.mu.Unlock()
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

// waitEnd waits for a batch end after frame n, and returns the batch
// ends so far.
func (b *batchEnds) waitEnd(t *testing.T, n int) []int {
	t.Helper()
	deadline := time.After(hangGuard)
	for {
		b.mu.Lock()
		ends := append([]int(nil), b.ends...)
		b.mu.Unlock()
		if len(ends) > 0 && ends[len(ends)-1] >= n {
			return ends
		}
		select {
		case <-b.notify:
		case <-deadline:
			t.Fatalf("no batch end after frame %d: ends %v", n, ends)
		}
	}
}

// tls13RecordOverhead is what a TLS 1.3 record adds to its data: a
// 5-byte header, the content type byte and a 16-byte AEAD tag.
const tls13RecordOverhead = 5 + 1 + 16

// unread is how many bytes wait in the listener's control socket.
func unread(t *testing.T, tr *Transport) int {
	t.Helper()
	c := tr.lanes[LaneControl].cur.Load()
	n := -1
	if err := c.rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	return n
}

// A reader with OnBatchEnd delivers every frame it can read without
// waiting and then ends the batch: a lone frame's batch ends with it (no
// waiting for more), the frames of one write make one batch, and frames
// that piled up while the reader was busy in OnFrame make one more (not
// one a frame), under PSK and under TLS (whose records the reader takes
// from TLS's buffer and the socket without waiting).
func TestBatchEndsOnceNothingMoreCanBeRead(t *testing.T) {
	withCerts(t, func(t *testing.T, pairOf func(func(*Config)) (d, l *Transport, ds, ls *sink)) {
		be := &batchEnds{blocked: make(chan struct{}), release: make(chan struct{}), notify: make(chan struct{}, 1)}
		var lcfg *Config
		d, l, _, ls := pairOf(func(c *Config) {
			if lcfg == nil {
				lcfg = c // pair mutates the listener's first
				c.OnFrame = be.onFrame
				c.OnBatchEnd = be.onEnd
			}
		})
		be.sink = ls
		_ = l
		if err := d.Send(TypeLog, []byte("lone")); err != nil {
			t.Fatal(err)
		}
		if ends := be.waitEnd(t, 1); len(ends) != 1 || ends[0] != 1 {
			t.Fatalf("after a lone frame: batch ends %v, want [1]", ends)
		}
		const n = 10
		if _, err := d.SendBatch(batchOf(n)); err != nil {
			t.Fatal(err)
		}
		if ends := be.waitEnd(t, 1+n); len(ends) != 2 || ends[1] != 1+n {
			t.Fatalf("after a batch of %d in one write: batch ends %v, want [1 %d]", n, ends, 1+n)
		}
		// The reader is held in OnFrame while k frames, each its own
		// write (and TLS record), pile up in its socket.
		if err := d.Send(TypeLog, []byte("block")); err != nil {
			t.Fatal(err)
		}
		<-be.blocked
		const k = 30
		for i := range k {
			if err := d.Send(TypeLog, payloadFor(i)); err != nil {
				t.Fatal(err)
			}
		}
		perFrame := HeaderBytes + len(payloadFor(0))
		if l.cfg.TLS != nil {
			perFrame += tls13RecordOverhead
		}
		deadline := time.Now().Add(hangGuard)
		for unread(t, l) < k*perFrame {
			if time.Now().After(deadline) {
				t.Fatalf("the %d frames never reached the listener's socket (%d bytes there)", k, unread(t, l))
			}
			time.Sleep(time.Millisecond)
		}
		close(be.release)
		total := 1 + n + 1 + k
		ends := be.waitEnd(t, total)
		if got := ends[2:]; len(got) > 2 {
			t.Fatalf("%d frames that piled up behind a busy reader ended %d batches (%v), want at most 2: the one it was in and one for the rest", k+1, len(got), ends)
		}
		if got := len(ls.snapshot()); got != total {
			t.Fatalf("%d frames delivered, want %d", got, total)
		}
		if s := l.Stats().Lanes[LaneControl]; s.Batches != uint64(len(ends)) {
			t.Fatalf("Stats.Batches %d, OnBatchEnd calls %d", s.Batches, len(ends))
		}
	})
}
