package lockstep

import (
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// BenchmarkPrimaryEntry measures the core's cost per log item on a protected
// primary: RecordInput (every fourth exit an output instead), encoding the
// item, Ready/Advance, and a cumulative ack every 16 items. The baseline, run
// in the same benchmark, is a Go buffered-channel hand-off of the same count;
// x-chan is the ratio.
func BenchmarkPrimaryEntry(b *testing.B) {
	n, err := NewNode(Config{VMID: "vm", Role: wire.RolePrimary, Mode: AckOnReceipt, LogWindowEntries: 1024})
	if err != nil {
		b.Fatal(err)
	}
	take(n)
	n.ArbiterResult(1, true, 1, nil)
	n.Step(&wire.Hello{Header: wire.Header{}, ProtocolVersion: wire.ProtocolVersion, VMID: "vm", Role: wire.RoleSecondary})
	rd := n.Ready()
	for _, c := range rd.Commands {
		if c.Kind == CmdTakeCheckpoint {
			n.CheckpointTaken(c.Checkpoint.ID, nil, DataDigest(nil))
		}
	}
	n.Advance(rd)
	take(n)
	n.Step(&wire.CheckpointDone{Header: wire.Header{Epoch: 1, Fence: 1}, ID: 1, Seq: n.Status().LastSeq, Restored: true})
	take(n)
	if !n.Status().Protected {
		b.Fatal("primary not protected")
	}
	data := []byte("12345678")
	var buf []byte
	ack := &wire.Ack{Header: wire.Header{Epoch: 1, Fence: 1}}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if i%4 == 3 {
			n.HoldOutput(uint64(i), 0, data)
		} else {
			n.RecordInput(uint64(i), 1, data)
		}
		rd := n.Ready()
		for _, m := range rd.Messages {
			buf = m.Append(buf[:0])
		}
		n.Advance(rd)
		if i%16 == 15 {
			ack.Received = n.Status().LastSeq
			n.Step(ack)
			n.Advance(n.Ready())
		}
	}
	node := time.Since(start)
	b.StopTimer()
	ch := make(chan uint64, 1024)
	start = time.Now()
	go func() {
		for i := range b.N {
			ch <- uint64(i)
		}
		close(ch)
	}()
	for range ch {
	}
	base := time.Since(start)
	b.ReportMetric(float64(node)/float64(max(base, 1)), "x-chan")
}
