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
		&wire.ResyncRequest{Header: h, Reason: wire.ResyncOutputMismatch, AtSeq: 3, Base: []byte("base")},
		&wire.CheckpointChunk{Header: h, ID: 9, Seq: 4, Offset: 1 << 29, Data: []byte("zz")},
		&wire.CheckpointDone{Header: h, ID: 9, Seq: 4, Total: 1 << 29},
		&wire.GoLive{Header: wire.Header{Epoch: 2}},
		&wire.Fence{Header: wire.Header{Epoch: 3}},
		&wire.CheckpointAck{Header: h, ID: 2, Through: 1 << 39, Missing: true},
		&wire.CheckpointAck{Header: h, ID: 1, Through: 3, Kept: true},
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
				if st.LogItems > 4*node.cfg.LogWindowEntries || len(node.replay.outOfOrder) > 2*node.cfg.LogWindowEntries {
					t.Fatalf("node holds %d log items, %d out of order: past its window", st.LogItems, len(node.replay.outOfOrder))
				}
			}
		}
	})
}

// FuzzCheckpointChain feeds a joining secondary well-formed checkpoints
// (chunks whose CheckpointDone has the right total and digest, so the
// fuzzer gets past the digest check) with IDs, bases, flags, sizes, chunk
// order and losses chosen by the input: pre-copy chains, ends far from
// their base, parts out of any chain. Nothing may panic, and what the node
// keeps must stay within its configured bounds.
func FuzzCheckpointChain(f *testing.F) {
	f.Add([]byte{1, 0, 0, 3, 0, 2, 1, 0, 2, 3, 0, 2, 0, 1})
	f.Add([]byte{1, 0, 0, 8, 0, 255, 2, 9, 1, 0, 2, 1, 0xff})
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Fuzz(func(t *testing.T, prog []byte) {
		cfg := Config{VMID: "vm", Role: wire.RoleSecondary, Mode: AckOnCompare, CheckpointChunkBytes: 8,
			PrecopyRounds: 2, MaxCheckpointBytes: 512}
		s, err := NewNode(cfg)
		if err != nil {
			t.Fatal(err)
		}
		take(s)
		h := wire.Header{Epoch: 1, Fence: 7}
		next := func() uint64 {
			if len(prog) == 0 {
				return 0
			}
			v := prog[0]
			prog = prog[1:]
			return uint64(v)
		}
		id := uint64(1)
		for len(prog) > 0 {
			// id: the next ID, or one far off; base: none, the ID itself,
			// a near one or a far one.
			switch d := next(); {
			case d == 0xff:
				id += 1 << 62
			default:
				id += d % 4
			}
			var base uint64
			switch b := next(); b % 4 {
			case 1:
				base = id
			case 2:
				base = id - min(id, b/4)
			case 3:
				base = 1
			}
			flags := next()
			size := int(next()%64) * 8
			order := next()
			done := wire.CheckpointDone{Full: flags&1 != 0, Part: flags&2 != 0, Base: base}
			ms := peerCheckpoint(h, id, 3, make([]byte, size), 1+int(flags>>2)%8, done)
			// Drop one frame, swap two, or send all twice.
			switch order % 4 {
			case 1:
				ms = append(ms[:int(order/4)%len(ms)], ms[int(order/4)%len(ms)+1:]...)
			case 2:
				i := int(order/4) % len(ms)
				ms[0], ms[i] = ms[i], ms[0]
			case 3:
				ms = append(ms, ms...)
			}
			for _, m := range ms {
				pm, _, err := wire.Parse(m.Append(nil))
				if err != nil {
					continue // not well-formed after all (an ID that wrapped)
				}
				_ = s.Step(pm)
				for _, c := range take(s).Commands {
					if c.Kind == CmdRestoreCheckpoint {
						if len(c.Checkpoint.Parts) > cfg.PrecopyRounds {
							t.Fatalf("restore with %d parts, PrecopyRounds %d", len(c.Checkpoint.Parts), cfg.PrecopyRounds)
						}
						_ = s.CheckpointRestored(c.Checkpoint.ID)
					}
				}
				if len(s.incoming.parts) > cfg.PrecopyRounds || len(s.incoming.assemblies) > maxAssemblies {
					t.Fatalf("secondary keeps %d parts and %d assemblies, bounds %d and %d", len(s.incoming.parts), len(s.incoming.assemblies), cfg.PrecopyRounds, maxAssemblies)
				}
				if s.incoming.assemblyBytes+s.incoming.partsBytes > cfg.MaxCheckpointBytes {
					t.Fatalf("secondary holds %d checkpoint bytes, MaxCheckpointBytes %d", s.incoming.assemblyBytes+s.incoming.partsBytes, cfg.MaxCheckpointBytes)
				}
				for _, a := range s.incoming.assemblies {
					if len(a.chunks) > cfg.MaxCheckpointBytes/cfg.CheckpointChunkBytes+1 {
						t.Fatalf("assembly %d holds %d chunks", a.id, len(a.chunks))
					}
				}
			}
		}
	})
}
