package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// callLog is a transport that records each call the agent makes, with
// the frames of it (payloads copied).
type callLog struct {
	mu    sync.Mutex
	calls []sendCall
}

type sendCall struct {
	method string
	frames []transport.OutFrame
}

func (l *callLog) record(method string, fs ...transport.OutFrame) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := sendCall{method: method}
	for _, f := range fs {
		f.Payload = slices.Clone(f.Payload)
		c.frames = append(c.frames, f)
	}
	l.calls = append(l.calls, c)
}

// take returns the calls since the last take.
func (l *callLog) take() []sendCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls
	l.calls = nil
	return c
}

// oneByOne is a transport with Send and TrySend only.
type oneByOne struct{ callLog }

func (t *oneByOne) Send(typ transport.Type, p []byte) error {
	t.record("Send", transport.OutFrame{Type: typ, Payload: p})
	return nil
}

func (t *oneByOne) TrySend(typ transport.Type, p []byte) error {
	t.record("TrySend", transport.OutFrame{Type: typ, Payload: p})
	return nil
}

// batching is a BatchSender too.
type batching struct{ oneByOne }

func (t *batching) SendBatch(fs []transport.OutFrame) (int, error) {
	t.record("SendBatch", fs...)
	return len(fs), nil
}

func (t *batching) TrySendBatch(fs []transport.OutFrame) (int, error) {
	t.record("TrySendBatch", fs...)
	return len(fs), nil
}

func (c sendCall) String() string {
	var types []string
	for _, f := range c.frames {
		types = append(types, f.Type.String())
	}
	return c.method + "(" + strings.Join(types, ",") + ")"
}

// The messages one Ready sends leave in one call of a BatchSender (one
// write), in order, from the loop (SendBatch) and from a transport
// reader (TrySendBatch); a transport without it gets them one by one.
func TestReadysMessagesLeaveInOneBatch(t *testing.T) {
	msgs := func() []encoded {
		return []encoded{{typ: transport.TypeLog, b: []byte("e1")}, {typ: transport.TypeOutput, b: []byte("o2")},
			{typ: transport.TypeCheckpoint, bulk: true, ckpt: 1, chunk: &wire.CheckpointChunk{ID: 1}}, {typ: transport.TypeControl, b: []byte("c3")}}
	}
	for _, c := range []struct {
		name       string
		tr         interface{ take() []sendCall }
		fromReader bool
		want       string
	}{
		{"batching, loop", &batching{}, false, "SendBatch(log,output,control)"},
		{"batching, reader", &batching{}, true, "TrySendBatch(log,output,control)"},
		{"one by one, loop", &oneByOne{}, false, "Send(log) Send(output) Send(control)"},
		{"one by one, reader", &oneByOne{}, true, "TrySend(log) TrySend(output) TrySend(control)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newUnitAgent(t, &opLog{})
			a.tr = c.tr.(Transport)
			w := &work{msgs: msgs(), fromReader: c.fromReader}
			if err := a.perform(context.Background(), w); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, call := range c.tr.take() {
				got = append(got, call.String())
			}
			if s := strings.Join(got, " "); s != c.want {
				t.Fatalf("sent %s, want %s", s, c.want)
			}
		})
	}
}

// replayingSecondary returns a secondary agent in step with a primary
// node driven by the test (in memory: p's messages go to HandleFrame,
// the agent's to p), in ack-on-receipt mode, sending through tr.
func replayingSecondary(t *testing.T, tr *batching) (a *Agent, p *lockstep.Node) {
	t.Helper()
	ncfg := func(role wire.Role) lockstep.Config {
		return lockstep.Config{VMID: testVMID, Role: role, Mode: lockstep.AckOnReceipt, LogWindowEntries: 256}
	}
	a, err := New(Config{
		Node:    ncfg(wire.RoleSecondary),
		NewVM:   func(vmm.ExitHook) (VM, error) { return &loggedVM{log: &opLog{}, state: vmm.Paused}, nil },
		Arbiter: arbiter.NewMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.tr = tr
	a.started.Store(true)
	if p, err = lockstep.NewNode(ncfg(wire.RolePrimary)); err != nil {
		t.Fatal(err)
	}
	p.Advance(p.Ready()) // the arbiter request: granted below
	p.ArbiterResult(1, true, 7, nil)
	snap := chainPart(t, 0, false)
	for range 100 {
		if err := a.process(context.Background()); err != nil { // hello, restore, confirmation
			t.Fatal(err)
		}
		for _, m := range a.bulk.take() { // the restore's confirmation
			tr.record("bulk", transport.OutFrame{Type: m.typ, Payload: m.b})
		}
		toPrimary(t, p, tr.take())
		if p.Status().Protected && !a.node.HasReady() && !p.HasReady() {
			return a, p
		}
		rd := p.Ready()
		cmds, msgs := slices.Clone(rd.Commands), slices.Clone(rd.Messages)
		p.Advance(rd)
		for _, c := range cmds {
			if c.Kind == lockstep.CmdTakeCheckpoint {
				if err := p.CheckpointTaken(c.Checkpoint.ID, snap, lockstep.DataDigest(snap)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, m := range msgs {
			deliver(t, a, m, false)
		}
	}
	t.Fatal("the pair never got in step")
	return nil, nil
}

// deliver hands m to a as a transport reader would.
func deliver(t *testing.T, a *Agent, m wire.Msg, batched bool) {
	t.Helper()
	a.HandleFrame(transport.Frame{Lane: transport.LaneOf(frameType(m)), Type: frameType(m), Payload: m.Append(nil), Batched: batched})
}

// toPrimary steps p with what the agent sent.
func toPrimary(t *testing.T, p *lockstep.Node, calls []sendCall) {
	t.Helper()
	for _, c := range calls {
		for _, f := range c.frames {
			m, _, err := wire.Parse(f.Payload)
			if err != nil {
				t.Fatal(err)
			}
			_ = p.Step(m)
		}
	}
}

// acksOf decodes the acknowledgements among calls.
func acksOf(t *testing.T, calls []sendCall) []*wire.Ack {
	t.Helper()
	var acks []*wire.Ack
	for _, c := range calls {
		for _, f := range c.frames {
			m, _, err := wire.Parse(f.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if ack, ok := m.(*wire.Ack); ok {
				acks = append(acks, ack)
			}
		}
	}
	return acks
}

// A batch of log entries read at once (Batched frames, then the
// transport's EndBatch) is acknowledged once, cumulatively, for the last
// of them; frames delivered without Batched are acknowledged one by one,
// as a transport that ends no batches needs. Nothing is acknowledged
// before it arrived: the one ack names the last entry, and an entry
// stepped after EndBatch waits for the next.
func TestBatchOfEntriesAcknowledgedOnce(t *testing.T) {
	const n = 8
	for _, batched := range []bool{false, true} {
		t.Run(fmt.Sprintf("batched=%v", batched), func(t *testing.T) {
			tr := &batching{}
			a, p := replayingSecondary(t, tr)
			tr.take()
			first := p.Status().LastSeq + 1
			for i := range n {
				if _, err := p.RecordInput(uint64(100+i), 2, []byte("in")); err != nil {
					t.Fatal(err)
				}
			}
			rd := p.Ready()
			msgs := slices.Clone(rd.Messages)
			p.Advance(rd)
			if len(msgs) != n {
				t.Fatalf("the primary sent %d messages for %d entries", len(msgs), n)
			}
			for i, m := range msgs {
				deliver(t, a, m, batched)
				if batched && len(acksOf(t, tr.take())) > 0 {
					t.Fatalf("entry %d of a batch acknowledged before the batch ended", i+1)
				}
			}
			if batched {
				a.EndBatch()
			}
			acks := acksOf(t, tr.take())
			want := n
			if batched {
				want = 1
			}
			if len(acks) != want {
				t.Fatalf("%d entries drew %d acknowledgements, want %d", n, len(acks), want)
			}
			if last := acks[len(acks)-1]; last.Received != first+n-1 {
				t.Fatalf("last ack %+v, want received %d", last, first+n-1)
			}
			if a.node.HasReady() {
				t.Fatalf("something left unperformed after the batch: %+v", a.node.Ready())
			}
		})
	}
}
