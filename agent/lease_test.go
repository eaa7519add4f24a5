package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// testLease is a lease a test takes away (the real one is
// lockstep/arbiter/etcd's, tested against etcd there and in bench/e2e).
type testLease struct {
	lost atomic.Bool
	ch   chan struct{}
	once sync.Once
}

func newTestLease() *testLease { return &testLease{ch: make(chan struct{})} }

func (l *testLease) Check() error {
	if l.lost.Load() {
		return errors.New("test lease lost")
	}
	return nil
}
func (l *testLease) Lost() <-chan struct{} { return l.ch }
func (l *testLease) lose()                 { l.lost.Store(true); l.once.Do(func() { close(l.ch) }) }

// Once the lease is lost the disk writer performs nothing more: neither an
// output released at once nor a block write nor a release queued behind one.
func TestDiskWriterPerformsNothingOnceTheLeaseIsLost(t *testing.T) {
	w := newDiskWriter(slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil)
	defer w.stop()
	l := newTestLease()
	w.gate = l.Check
	var done []string
	var mu sync.Mutex
	note := func(s string) func() error {
		return func() error { mu.Lock(); done = append(done, s); mu.Unlock(); return nil }
	}
	w.release("seq 1", 1, note("reply 1"))
	w.enqueue("seq 2", 2, note("write 2"), nil)
	w.drain()
	l.lose()
	w.release("seq 3", 3, note("reply 3"))
	w.enqueue("seq 4", 4, note("write 4"), nil)
	w.release("seq 5", 5, note("reply 5"))
	w.drain()
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(done, ",") != "reply 1,write 2" || !w.gated.Load() {
		t.Fatalf("performed %v, gated %v; want only what came before the loss, and gated", done, w.gated.Load())
	}
}

// A primary whose lease is lost stops: Run returns ErrHalted naming the
// lease.
func TestAgentHaltsWhenTheLeaseIsLost(t *testing.T) {
	l := newTestLease()
	vmLog := &opLog{}
	a, err := New(Config{
		Node:         lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnReceipt},
		NewVM:        func(vmm.ExitHook) (VM, error) { return &loggedVM{log: vmLog, state: vmm.Paused}, nil },
		Boot:         func(VM) error { return nil },
		Arbiter:      arbiter.NewMemory(),
		Lease:        l,
		TickInterval: time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), &loggedTransport{log: &opLog{}}) }()
	deadline := time.Now().Add(10 * time.Second)
	for a.Status().Epoch == 0 {
		if time.Now().After(deadline) {
			a.Stop()
			t.Fatal("the primary was never granted its epoch")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned before the lease was lost: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	l.lose()
	select {
	case err := <-done:
		if !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), "lease") {
			t.Fatalf("Run: %v; want ErrHalted naming the lease", err)
		}
	case <-time.After(10 * time.Second):
		a.Stop()
		t.Fatal("Run went on after the lease was lost")
	}
}
