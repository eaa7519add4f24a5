package kvclient

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/linearize"
)

// fastRetry keeps tests short; the fake answers in microseconds.
var fastRetry = Retry{AttemptTimeout: 30 * time.Millisecond, AttemptsMax: 3}

func dialFake(t *testing.T, f *fakeKV) *Client {
	t.Helper()
	c, err := Dial(f.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func do(t *testing.T, c *Client, r Request, retry Retry) linearize.Op {
	t.Helper()
	op, err := c.Do(context.Background(), r, retry)
	if err != nil {
		t.Fatalf("Do(%+v): %v", r, err)
	}
	return op
}

func TestDoRecordsEachKindOfAnswer(t *testing.T) {
	c := dialFake(t, startFakeKV(t))
	var h []linearize.Op
	check := func(op linearize.Op, outcome linearize.Outcome, found bool, version uint64, value string) {
		t.Helper()
		h = append(h, op)
		if op.Outcome != outcome || op.Found != found || op.Version != version || op.Value != value || op.Attempts != 1 {
			t.Fatalf("got %v, want outcome %v found %v version %d value %q in 1 attempt", op.String(), outcome, found, version, value)
		}
		if op.Complete < op.Invoke {
			t.Fatalf("%v completes before it was invoked", op.String())
		}
	}
	check(do(t, c, Request{Kind: linearize.Get, Key: "k"}, fastRetry), linearize.OK, false, 0, "")
	check(do(t, c, Request{Kind: linearize.Put, Key: "k", Value: "a b"}, fastRetry), linearize.OK, false, 1, "a b")
	check(do(t, c, Request{Kind: linearize.Get, Key: "k"}, fastRetry), linearize.OK, true, 1, "a b")
	check(do(t, c, Request{Kind: linearize.Inc, Key: "c"}, fastRetry), linearize.OK, false, 1, "")
	check(do(t, c, Request{Kind: linearize.Inc, Key: "c"}, fastRetry), linearize.OK, false, 2, "")
	op := do(t, c, Request{Kind: linearize.Inc, Key: "k"}, fastRetry)
	if op.Outcome != linearize.Failed || !strings.HasSuffix(op.Reply, "ERR notnum\n") {
		t.Fatalf("INC of a non-number: got %v, want an ERR notnum failure", op.String())
	}
	if err := linearize.Check(h); err != nil {
		t.Fatalf("sequential history rejected: %v", err)
	}
}

func TestRetryReusesTheIDAndServerMayApplyTwice(t *testing.T) {
	f := startFakeKV(t)
	f.set(func(f *fakeKV) { f.dropFirstReplies = 1 })
	c := dialFake(t, f)
	put := do(t, c, Request{Kind: linearize.Put, Key: "k", Value: "v"}, fastRetry)
	get := do(t, c, Request{Kind: linearize.Get, Key: "k"}, fastRetry)
	if put.Outcome != linearize.OK || put.Attempts != 2 {
		t.Fatalf("got %v, want an OK after 2 attempts", put.String())
	}
	f.mu.Lock()
	received := append([]string(nil), f.received...)
	applied := f.applied
	f.mu.Unlock()
	if len(received) < 2 || received[0] != received[1] {
		t.Fatalf("the retry was not the same datagram (same id): %q", received)
	}
	// The fake, like the kvstore, does not deduplicate: both sends applied.
	if applied != 2 || put.Version != 2 {
		t.Fatalf("applied %d times, acknowledged version %d; want 2 and 2", applied, put.Version)
	}
	if err := linearize.Check([]linearize.Op{put, get}); err != nil {
		t.Fatalf("a retried write applied twice must be accepted: %v", err)
	}
}

func TestNoReplyIsAnUnknownOutcome(t *testing.T) {
	f := startFakeKV(t)
	f.set(func(f *fakeKV) { f.down = true })
	c := dialFake(t, f)
	op := do(t, c, Request{Kind: linearize.Put, Key: "k", Value: "v"}, fastRetry)
	if op.Outcome != linearize.Unknown || op.Attempts != fastRetry.AttemptsMax {
		t.Fatalf("got %v, want unknown after %d attempts", op.String(), fastRetry.AttemptsMax)
	}
}

func TestCancelEndsAWaitWithUnknownOutcome(t *testing.T) {
	f := startFakeKV(t)
	f.set(func(f *fakeKV) { f.down = true })
	c := dialFake(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	op, err := c.Do(ctx, Request{Kind: linearize.Get, Key: "k"}, Retry{AttemptTimeout: time.Hour, AttemptsMax: 5})
	if err != nil || op.Outcome != linearize.Unknown || op.Attempts != 1 {
		t.Fatalf("got %v, %v; want unknown after 1 attempt", op.String(), err)
	}
}

// A server that is away makes the kernel answer with ICMP port unreachable,
// which a connected UDP socket reports as a read error; the client must keep
// reading so that it sees the server when it is back.
func TestClientSurvivesAnAbsentServer(t *testing.T) {
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().(*net.UDPAddr)
	probe.Close()
	c, err := Dial(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if op := do(t, c, Request{Kind: linearize.Get, Key: "k"}, fastRetry); op.Outcome != linearize.Unknown {
		t.Fatalf("nothing listens, got %v", op.String())
	}
	startFakeKVAt(t, addr)
	if op := do(t, c, Request{Kind: linearize.Get, Key: "k"}, fastRetry); op.Outcome != linearize.OK {
		t.Fatalf("server is back at %v, got %v", addr, op.String())
	}
}

func TestDoRefusesBadInput(t *testing.T) {
	c := dialFake(t, startFakeKV(t))
	if _, err := c.Do(context.Background(), Request{Kind: linearize.Get, Key: "a b"}, fastRetry); err == nil {
		t.Error("a key with a space was sent")
	}
	if _, err := c.Do(context.Background(), Request{Kind: linearize.Get, Key: "k"}, Retry{AttemptsMax: attemptsMaxLimit + 1}); err == nil || !strings.Contains(err.Error(), "AttemptsMax") {
		t.Errorf("AttemptsMax beyond the limit: got %v", err)
	}
	if _, err := Dial("no-port"); err == nil {
		t.Error("Dial of an address without a port succeeded")
	}
}
