package agent

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// gatedTransport blocks every Send on the bulk lane until open is closed,
// as a full socket does while the secondary reads a pre-copy part.
type gatedTransport struct {
	open chan struct{}
	mu   sync.Mutex
	sent []transport.Type
}

func (t *gatedTransport) Send(typ transport.Type, _ []byte) error {
	if transport.LaneOf(typ) == transport.LaneBulk {
		<-t.open
	}
	t.mu.Lock()
	t.sent = append(t.sent, typ)
	t.mu.Unlock()
	return nil
}

func (t *gatedTransport) types() []transport.Type {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.sent)
}

// A perform whose Ready carries checkpoint chunks returns while the bulk
// lane cannot take them (so whoever performs lets go of readyMu, and the
// next Ready's releases and log records need not wait for the secondary
// to read the checkpoint), the log record behind the chunks leaves at
// once, and the CheckpointDone (control lane) still follows its chunks.
func TestCheckpointChunksSentOffReadyMu(t *testing.T) {
	a := newUnitAgent(t, &opLog{})
	tr := &gatedTransport{open: make(chan struct{})}
	a.tr = tr
	done := make(chan struct{})
	go a.runBulk(tr, a.stop, done)
	w := &work{msgs: []encoded{
		{typ: transport.TypeCheckpoint, bulk: true},
		{typ: transport.TypeControl, bulk: true}, // the part's CheckpointDone
		{typ: transport.TypeLog},
	}}
	performed := make(chan error, 1)
	go func() { performed <- a.perform(context.Background(), w) }()
	select {
	case err := <-performed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(tr.open)
		t.Fatal("perform waited for the bulk lane to take a checkpoint chunk")
	}
	if got := tr.types(); !slices.Equal(got, []transport.Type{transport.TypeLog}) {
		t.Fatalf("sent %v while the bulk lane was full; want only the log record", got)
	}
	close(tr.open)
	want := []transport.Type{transport.TypeLog, transport.TypeCheckpoint, transport.TypeControl}
	for !slices.Equal(tr.types(), want) {
		if len(tr.types()) > len(want) {
			t.Fatalf("sent %v, want %v", tr.types(), want)
		}
		time.Sleep(time.Millisecond)
	}
	a.Stop()
	<-done
}

// chunkRecorder records the checkpoint IDs of the chunks and dones sent.
type chunkRecorder struct {
	mu    sync.Mutex
	ids   []uint64
	dones []uint64
}

func (r *chunkRecorder) Send(typ transport.Type, b []byte) error {
	m, _, err := wire.Parse(b)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch m := m.(type) {
	case *wire.CheckpointChunk:
		r.ids = append(r.ids, m.ID)
	case *wire.CheckpointDone:
		r.ids = append(r.ids, m.ID)
		r.dones = append(r.dones, m.ID)
	}
	return nil
}

func (r *chunkRecorder) sent() (ids, dones []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids), slices.Clone(r.dones)
}

// Chunks still queued for a join the node gave up (its secondary was
// lost) are not sent to the next joiner: they are of a checkpoint the
// node no longer ships, and a fresh joiner, which has begun nothing yet,
// would take them up.
func TestQueuedChunksOfAnAbandonedJoinAreDropped(t *testing.T) {
	a, err := New(Config{
		Node:    lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnCompare, CheckpointChunkBytes: 4096},
		NewVM:   func(vmm.ExitHook) (VM, error) { return &loggedVM{log: &opLog{}}, nil },
		Boot:    func(VM) error { return nil },
		Arbiter: arbiter.NewMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.vm, a.booted, a.running = &loggedVM{log: &opLog{}, state: vmm.Running}, true, true
	a.tr = &loggedTransport{log: &opLog{}}
	a.node.ArbiterResult(1, true, 1, nil)
	ctx := context.Background()
	join := func() {
		t.Helper()
		if err := a.node.Step(&wire.Hello{ProtocolVersion: wire.ProtocolVersion, VMID: testVMID, Role: wire.RoleSecondary, Header: wire.Header{Epoch: a.node.Status().Epoch}}); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			w := a.takeReady()
			if err := a.perform(ctx, &w); err != nil {
				t.Fatal(err)
			}
		}
	}
	join()
	first := a.bulk.take()
	if len(first) == 0 {
		t.Fatal("the join queued no chunks")
	}
	a.bulk.q = first // as if the bulk lane had not taken them yet
	// The secondary is lost; the node gives the join up and, granted a
	// new epoch, is alone; a new secondary says hello.
	a.node.PeerLost()
	a.node.ArbiterResult(2, true, 2, nil)
	for a.node.HasReady() {
		w := a.takeReady()
		if err := a.perform(ctx, &w); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.node.Status(); st.Role != lockstep.RolePrimary || st.Syncing || st.Epoch != 2 {
		t.Fatalf("after losing its secondary the node is %+v, want a primary alone in epoch 2", st)
	}
	join()
	rec := &chunkRecorder{}
	done := make(chan struct{})
	go a.runBulk(rec, a.stop, done) // join's queueing woke it
	// The queue is in order: once checkpoint 2's done is sent, whatever
	// was queued before it went or was dropped.
	deadline := time.Now().Add(10 * time.Second)
	for _, dones := rec.sent(); !slices.Contains(dones, 2); _, dones = rec.sent() {
		if time.Now().After(deadline) {
			ids, _ := rec.sent()
			t.Fatalf("checkpoint 2's done was not sent; sent %v", ids)
		}
		time.Sleep(time.Millisecond)
	}
	a.Stop()
	<-done
	ids, _ := rec.sent()
	if slices.Contains(ids, 1) {
		t.Fatalf("sent chunks of checkpoints %v: those of checkpoint 1, which the node gave up, went to the new joiner", ids)
	}
	if n := a.Stats().StaleCheckpointFrames; n != uint64(len(first)) {
		t.Fatalf("StaleCheckpointFrames %d, want the %d queued of checkpoint 1", n, len(first))
	}
}
