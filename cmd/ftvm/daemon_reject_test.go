package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
)

func TestRejectLogRateLimitsPerReason(t *testing.T) {
	r := newRejectLog(5 * time.Second)
	t0 := time.Unix(1000, 0)
	if ok, _ := r.note(t0, "a"); !ok {
		t.Fatal("first refusal of a reason not logged")
	}
	for i := range 3 {
		if ok, _ := r.note(t0.Add(time.Duration(i+1)*time.Second), "a"); ok {
			t.Fatalf("refusal %d within the interval logged", i+2)
		}
	}
	if ok, _ := r.note(t0.Add(time.Second), "b"); !ok {
		t.Fatal("another reason is held back by the first one's limit")
	}
	ok, suppressed := r.note(t0.Add(5*time.Second), "a")
	if !ok || suppressed != 3 {
		t.Fatalf("after the interval: logged %v with %d suppressed, want a line counting 3", ok, suppressed)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test.
type syncBuffer = testutil.Buffer

// Issue 15, item 7: a refused connection is logged at WARN with the
// peer's address and the reason (here the name it presented), once per
// reason per interval however many arrive.
func TestRefusedConnectionsLogged(t *testing.T) {
	var buf syncBuffer
	d := &daemon{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), rejects: newRejectLog(time.Hour)}
	key := []byte("ftvm-test-pre-shared-key-32bytes")
	ln, err := rdma.Listen("127.0.0.1:0", rdma.Config{TCP: tcpfallback.Config{VMID: "v", Name: "a", PSK: key, PeerNames: []string{"b"},
		OnFrame: func(transport.Frame) {}}})
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan struct{})
	go func() {
		d.watch(ln)
		close(watched)
	}()
	const tries = 5
	for range tries {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tr, err := tcpfallback.Dial(ctx, ln.Addr(), tcpfallback.Config{VMID: "v", Name: "intruder", PSK: key, OnFrame: func(transport.Frame) {}})
		cancel()
		if err == nil {
			tr.Close()
			t.Fatal("a peer named intruder was accepted by a listener that allows only b")
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ln.TCP().Stats().HandshakeFailures < tries; {
		if time.Now().After(deadline) {
			t.Fatalf("%d handshake failures counted, want %d", ln.TCP().Stats().HandshakeFailures, tries)
		}
		time.Sleep(time.Millisecond)
	}
	ln.Close()
	<-watched
	out := buf.String()
	lines := strings.Count(out, "refused a connection")
	if lines != 1 {
		t.Fatalf("%d WARN lines for %d refusals of one reason, want 1:\n%s", lines, tries, out)
	}
	for _, want := range []string{"level=WARN", "peer=127.0.0.1:", `reason="peer not accepted"`, "intruder"} {
		if !strings.Contains(out, want) {
			t.Errorf("log line lacks %q:\n%s", want, out)
		}
	}
}
