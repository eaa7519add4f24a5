package agent

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/transport"
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
