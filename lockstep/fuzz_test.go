package lockstep

import (
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// FuzzStep feeds a hostile peer's frames to nodes in each role: whatever
// parses must never panic a node, nor make it hold more than its bounds.
func FuzzStep(f *testing.F) {
	h := wire.Header{Epoch: 1, Fence: 7}
	var seed []byte
	for _, m := range []wire.Msg{
		&wire.Entry{Header: h, Seq: 3, ExitIndex: 1, Kind: 1, Data: []byte("x")},
		&wire.Output{Header: h, Seq: 2, Length: 1},
		&wire.Ack{Header: h, Received: 1 << 40, Compared: 5, Replayed: 1},
		&wire.Heartbeat{Header: h, LastSeq: 99, ReleasedThrough: 50},
		&wire.ResyncRequest{Header: h, Reason: wire.ResyncInputMismatch, AtSeq: 1 << 50},
		&wire.CheckpointChunk{Header: h, ID: 9, Seq: 4, Offset: 1 << 29, Data: []byte("zz")},
		&wire.CheckpointDone{Header: h, ID: 9, Seq: 4, Total: 1 << 29},
		&wire.GoLive{Header: wire.Header{Epoch: 2}},
		&wire.Fence{Header: wire.Header{Epoch: 3}},
		&wire.Hello{Header: h, ProtocolVersion: wire.ProtocolVersion, VMID: "vm", Role: wire.RoleSecondary},
	} {
		seed = m.Append(seed)
		f.Add(m.Append(nil))
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, s := pair(t, AckOnCompare)
		p.HoldOutput(1, 0, []byte("held"))
		fresh := newTestNode(t, wire.RoleSecondary, AckOnReceipt)
		for len(b) > 0 {
			m, n, err := wire.Parse(b)
			if err != nil {
				b = b[1:]
				continue
			}
			b = b[n:]
			for _, node := range []*Node{p, s, fresh} {
				_ = node.Step(m)
				node.Tick()
				for _, c := range take(node).Commands {
					if c.Kind == CmdRestoreCheckpoint {
						_ = node.CheckpointRestored(c.Checkpoint.ID)
					}
				}
				st := node.Status()
				if st.LogItems > 4*node.cfg.LogWindowEntries || len(node.ooo) > 2*node.cfg.LogWindowEntries {
					t.Fatalf("node holds %d log items, %d out of order: past its window", st.LogItems, len(node.ooo))
				}
			}
		}
	})
}
