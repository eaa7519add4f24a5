package tcpfallback

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/ring"
)

func payloadFor(i int) []byte {
	return fmt.Appendf(nil, "entry-%05d-%s", i, strings.Repeat("x", i%17))
}

func TestFramesArriveInOrderOnBothLanes(t *testing.T) {
	d, l, ds, ls := pair(t, nil)
	const logs = 200
	for i := range logs {
		if err := d.Send(TypeLog, payloadFor(i)); err != nil {
			t.Fatal(err)
		}
	}
	var span []byte
	for i := logs; i < logs+100; i++ {
		span = AppendRecord(span, payloadFor(i))
	}
	n, err := d.SendSpan(TypeOutput, span)
	if err != nil || n != 100 {
		t.Fatalf("SendSpan: %d frames, %v", n, err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for i := range 3 {
		flags := Flags(0)
		if i == 2 {
			flags = FlagFinal
		}
		chunk[0] = byte(i)
		if err := d.SendFlags(TypeCheckpoint, flags, chunk); err != nil {
			t.Fatal(err)
		}
	}
	got := ls.waitN(t, logs+100+3)
	var control, bulk []Frame
	for _, f := range got {
		if f.Lane == LaneBulk {
			bulk = append(bulk, f)
		} else {
			control = append(control, f)
		}
	}
	for i, f := range control {
		wantType := TypeLog
		if i >= logs {
			wantType = TypeOutput
		}
		if f.Type != wantType || !bytes.Equal(f.Payload, payloadFor(i)) || f.Seq != uint32(i) {
			t.Fatalf("control frame %d: %s seq %d %q", i, f.Type, f.Seq, f.Payload)
		}
	}
	for i, f := range bulk {
		chunk[0] = byte(i)
		if f.Type != TypeCheckpoint || !bytes.Equal(f.Payload, chunk) || (f.Flags == FlagFinal) != (i == 2) {
			t.Fatalf("bulk frame %d: %s flags %d, %d bytes", i, f.Type, f.Flags, len(f.Payload))
		}
	}
	// And back: the listener side sends as well as the dialer.
	exchange(t, d, l, ds, ls)
	st := d.Stats()
	if st.Lanes[LaneControl].FramesSent < logs+100 || st.Lanes[LaneBulk].FramesSent < 3 {
		t.Errorf("stats: %+v", st.Lanes)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if err := WriteTestCertificates(dir, "primary", "secondary"); err != nil {
		t.Fatal(err)
	}
	d, l, ds, ls := pairTLS(t, dir, nil)
	exchange(t, d, l, ds, ls)
	var span []byte
	for i := range 50 {
		span = AppendRecord(span, payloadFor(i))
	}
	if _, err := d.SendSpan(TypeLog, span); err != nil {
		t.Fatal(err)
	}
	// A chunk larger than the TLS staging buffer goes around it.
	chunk := bytes.Repeat([]byte("checkpoint"), 100_000)
	if err := d.SendFlags(TypeCheckpoint, FlagFinal, chunk); err != nil {
		t.Fatal(err)
	}
	got := ls.waitN(t, 52)
	var control []Frame
	for _, f := range got {
		if f.Lane == LaneBulk {
			if !bytes.Equal(f.Payload, chunk) || f.Flags != FlagFinal {
				t.Fatalf("checkpoint chunk: %d bytes, flags %d", len(f.Payload), f.Flags)
			}
			continue
		}
		control = append(control, f)
	}
	for i, f := range control[1:] {
		if !bytes.Equal(f.Payload, payloadFor(i)) {
			t.Fatalf("frame %d: %q", i, f.Payload)
		}
	}
	if err := WriteTestCertificates(dir, "primary"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwriting certificates: %v, want an error saying they exist", err)
	}
}

// An acknowledgement must get through while the bulk lane is completely
// stuck: the receiver's bulk handler blocks, so checkpoint data piles up in
// both socket buffers and the sender's Send blocks. Over one connection the
// ack would be stuck behind it.
func TestAckDoesNotWaitBehindCheckpoint(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	ls := newSink()
	lc := testConfig(ls)
	lc.OnFrame = func(f Frame) {
		if f.Lane == LaneBulk {
			<-release
		}
		ls.on(f)
	}
	lc.BulkSocketBufferBytes = 64 << 10
	l := listen(t, lc)
	ds := newSink()
	dc := testConfig(ds)
	dc.BulkSocketBufferBytes = 64 << 10
	d := dial(t, l.Addr(), dc)
	waitConnected(t, l)

	bulkDone := make(chan error, 1)
	go func() {
		chunk := make([]byte, 1<<20)
		for range 16 {
			if err := d.Send(TypeCheckpoint, chunk); err != nil {
				bulkDone <- err
				return
			}
		}
		bulkDone <- nil
	}()
	// Wait until the bulk lane is stalled: its stats stop moving while
	// the sender is still inside Send.
	for st := d.Stats(); st.Lanes[LaneBulk].FramesSent < 1; st = d.Stats() {
		time.Sleep(time.Millisecond)
	}
	for i := range 50 {
		if err := d.Send(TypeAck, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	got := ls.waitN(t, 50)
	for i, f := range got[:50] {
		if f.Type != TypeAck || f.Payload[0] != byte(i) {
			t.Fatalf("frame %d is %s, want ack %d", i, f.Type, i)
		}
	}
	select {
	case err := <-bulkDone:
		t.Fatalf("bulk sender finished (%v) although its receiver was blocked: the test did not stall the bulk lane", err)
	default:
	}
	once.Do(func() { close(release) })
	if err := <-bulkDone; err != nil {
		t.Fatal(err)
	}
	ls.waitN(t, 50+16)
}

func TestSendRefusesWhatCannotBeSent(t *testing.T) {
	d, _, _, _ := pair(t, func(c *Config) { c.MaxPayloadBytes = 1024 })
	if err := d.Send(TypeHeartbeat, nil); err == nil {
		t.Error("sending a transport-internal type succeeded")
	}
	if err := d.SendFlags(TypeLog, 0x40, nil); err == nil {
		t.Error("sending unknown flags succeeded")
	}
	mustContain(t, d.Send(TypeCheckpoint, make([]byte, 1025)), "1025", "maximum of 1024")
	bad := binary.LittleEndian.AppendUint32(AppendRecord(nil, []byte("ok")), ring.WrapMarker)
	bad = append(bad, 0, 0, 0, 0)
	n, err := d.SendSpan(TypeLog, bad)
	if !errors.Is(err, ring.ErrMalformed) || n != 0 {
		t.Fatalf("SendSpan of a span with a wrap marker: %d, %v", n, err)
	}
	if st := d.Stats(); st.Lanes[LaneControl].FramesSent != 0 {
		t.Fatalf("a refused span sent %d frames", st.Lanes[LaneControl].FramesSent)
	}
}

func TestSendOnClosedTransport(t *testing.T) {
	d, _, _, _ := pair(t, nil)
	d.Close()
	if err := d.Send(TypeLog, []byte("x")); err == nil {
		t.Fatal("send after Close succeeded")
	}
	if _, ok := <-d.Events(); ok {
		// Draining: Events must be closed eventually.
		for range d.Events() {
		}
	}
	d.Close() // idempotent
}

func TestConfigErrorsNameTheField(t *testing.T) {
	base := testConfig(newSink())
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no VM id", func(c *Config) { c.VMID = "" }, "VMID"},
		{"long VM id", func(c *Config) { c.VMID = strings.Repeat("v", MaxVMIDBytes+1) }, "VMID"},
		{"no auth", func(c *Config) { c.PSK = nil }, "Config.TLS"},
		{"short PSK", func(c *Config) { c.PSK = []byte("short") }, "at least 16"},
		{"no handler", func(c *Config) { c.OnFrame = nil }, "OnFrame"},
		{"timeout below two intervals", func(c *Config) { c.HeartbeatTimeout = c.HeartbeatInterval }, "HeartbeatTimeout"},
		{"backoff upside down", func(c *Config) { c.ReconnectMaxDelay = c.ReconnectMinDelay / 2 }, "ReconnectMaxDelay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mutate(&c)
			_, err := Listen("127.0.0.1:0", c)
			mustContain(t, err, tc.want)
			_, err = Dial(context.Background(), "127.0.0.1:1", c)
			mustContain(t, err, tc.want)
		})
	}
}

// Steady state allocates nothing per frame on either side: Send's header
// arena and iovec array, the reader's buffer and the Frame value are reused.
func TestNoAllocationPerFrame(t *testing.T) {
	var received int64
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	lc := testConfig(newSink())
	lc.OnFrame = func(f Frame) {
		mu.Lock()
		received++
		cond.Broadcast()
		mu.Unlock()
	}
	l := listen(t, lc)
	d := dial(t, l.Addr(), testConfig(newSink()))
	waitConnected(t, l)
	payload := make([]byte, 64)
	var span []byte
	for range 64 {
		span = AppendRecord(span, payload)
	}
	const sends = 10
	const perRun = sends + 64
	var sent int64
	run := func() {
		for range sends {
			if err := d.Send(TypeLog, payload); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.SendSpan(TypeLog, span); err != nil {
			t.Fatal(err)
		}
		sent += perRun
		mu.Lock()
		for received < sent {
			cond.Wait()
		}
		mu.Unlock()
	}
	run() // warm up buffers
	allocs := testing.AllocsPerRun(200, run)
	// An allocation per Send would make 10 a run, per received frame 74.
	// Below one per run leaves room for the runtime's own (timers, the
	// poller) that land in the window.
	if allocs >= 1 {
		t.Fatalf("%.2f allocations per run of %d frames", allocs, perRun)
	}
}

// The socket buffer sizes chosen per lane are the ones the kernel grants.
// Root lifts net.core.*mem_max (SO_*BUFFORCE), so only then is every size
// guaranteed.
func TestSocketBuffersAreApplied(t *testing.T) {
	testutil.Require(t, testutil.Root)
	d, l, _, _ := pair(t, func(c *Config) {
		c.ControlSocketBufferBytes = 512 << 10
		c.BulkSocketBufferBytes = 6 << 20 // above the usual net.core.rmem_max
	})
	for _, tr := range []*Transport{d, l} {
		st := tr.Stats()
		for lane, want := range map[Lane]int{LaneControl: 512 << 10, LaneBulk: 6 << 20} {
			ls := st.Lanes[lane]
			// The kernel doubles what it is given, for its bookkeeping.
			if ls.SocketSendBufferBytes != 2*want || ls.SocketRecvBufferBytes != 2*want {
				t.Errorf("%s lane: SO_SNDBUF %d, SO_RCVBUF %d, want %d each", lane, ls.SocketSendBufferBytes, ls.SocketRecvBufferBytes, 2*want)
			}
		}
	}
}
