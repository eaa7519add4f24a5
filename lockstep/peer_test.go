package lockstep

import (
	"encoding/binary"
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// peerCheckpoint builds what a primary sends for one checkpoint: the
// node's section (released through 0, no held outputs) and vmm, in chunks
// of chunk bytes, then the CheckpointDone with the right total and digest,
// so that a test (or the fuzzer) gets past the digest check.
func peerCheckpoint(h wire.Header, id, seq uint64, vmm []byte, chunk int, done wire.CheckpointDone) []wire.Msg {
	payload := binary.LittleEndian.AppendUint64(nil, 0)
	payload = binary.LittleEndian.AppendUint32(payload, 0)
	payload = append(payload, vmm...)
	var ms []wire.Msg
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		ms = append(ms, &wire.CheckpointChunk{Header: h, ID: id, Seq: seq, Offset: uint64(off), Data: payload[off:end]})
	}
	done.Header, done.ID, done.Seq, done.Total, done.Digest = h, id, seq, uint64(len(payload)), digest(payload)
	return append(ms, &done)
}

// stepAll steps every message through the codec into n and returns the
// errors it gave and the commands it asked for.
func stepAll(t *testing.T, n *Node, ms []wire.Msg) (errs []error, cmds []Command) {
	t.Helper()
	for _, m := range ms {
		if err := n.Step(wireTrip(t, m)); err != nil {
			errs = append(errs, err)
		}
		cmds = append(cmds, take(n).Commands...)
	}
	return errs, cmds
}

// TestPeerChainEndFarFromBaseRefused: a chain's end whose ID lies 1<<62
// past its base, with a valid digest, used to make the secondary allocate
// a slot per ID in between (a panic). A chain has at most PrecopyRounds
// live parts before its end, so anything longer is refused with an error.
func TestPeerChainEndFarFromBaseRefused(t *testing.T) {
	s := newTestNode(t, wire.RoleSecondary, AckOnCompare)
	take(s)
	h := wire.Header{Epoch: 1, Fence: 7}
	ms := peerCheckpoint(h, 1<<62, 3, []byte("state"), 8, wire.CheckpointDone{Full: true, Base: 1})
	errs, cmds := stepAll(t, s, ms)
	for _, c := range cmds {
		if c.Kind == CmdRestoreCheckpoint {
			t.Fatalf("restored a chain whose end is %d IDs past its base", uint64(1<<62)-1)
		}
	}
	if len(errs) == 0 {
		t.Fatal("a chain longer than PrecopyRounds+1 checkpoints was accepted without an error")
	}
	t.Log(errs[0])
}

// TestPeerPartsBoundedByPrecopyRounds: pre-copy parts a secondary keeps
// are bounded in number by its PrecopyRounds, however small each is.
func TestPeerPartsBoundedByPrecopyRounds(t *testing.T) {
	s, err := NewNode(Config{VMID: "vm", Role: wire.RoleSecondary, Mode: AckOnCompare, CheckpointChunkBytes: 8, PrecopyRounds: 2})
	if err != nil {
		t.Fatal(err)
	}
	take(s)
	h := wire.Header{Epoch: 1, Fence: 7}
	ms := peerCheckpoint(h, 10, 3, nil, 8, wire.CheckpointDone{Full: true, Part: true})
	for id := uint64(11); id < 200; id++ {
		ms = append(ms, peerCheckpoint(h, id, 3, nil, 8, wire.CheckpointDone{Part: true})...)
	}
	stepAll(t, s, ms)
	if len(s.parts) > s.cfg.PrecopyRounds {
		t.Fatalf("secondary keeps %d pre-copy parts, PrecopyRounds is %d", len(s.parts), s.cfg.PrecopyRounds)
	}
}
