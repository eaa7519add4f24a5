package lockstep

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// joinUntilCheckpoint brings a primary and a joining secondary (default
// chunk, window and Ready bounds; no pre-copy) to the primary's
// CmdTakeCheckpoint and returns the checkpoint's ID.
func joinUntilCheckpoint(t testing.TB) (p, s *Node, id uint64) {
	return joinUntilCheckpointRounds(t, 0)
}

// joinUntilCheckpointRounds is joinUntilCheckpoint with PrecopyRounds.
func joinUntilCheckpointRounds(t testing.TB, rounds int) (p, s *Node, id uint64) {
	t.Helper()
	var err error
	if p, err = NewNode(Config{VMID: "vm", Role: wire.RolePrimary, Mode: AckOnCompare, PrecopyRounds: rounds}); err != nil {
		t.Fatal(err)
	}
	if s, err = NewNode(Config{VMID: "vm", Role: wire.RoleSecondary, Mode: AckOnCompare, PrecopyRounds: rounds}); err != nil {
		t.Fatal(err)
	}
	take(p)
	p.ArbiterResult(1, true, 7, nil)
	for range 100 {
		for _, n := range []*Node{p, s} {
			other := s
			if n == s {
				other = p
			}
			rd := take(n)
			for _, c := range rd.Commands {
				if c.Kind == CmdTakeCheckpoint {
					id = c.Checkpoint.ID
				}
			}
			for _, m := range rd.Messages {
				pm, _, err := wire.Parse(m.Append(nil))
				if err != nil {
					t.Fatal(err)
				}
				_ = other.Step(pm)
			}
			if id != 0 {
				return p, s, id
			}
		}
	}
	t.Fatal("the primary never asked for a checkpoint")
	return nil, nil, 0
}

// chunkBytes is the checkpoint data the chunks in ms carry.
func chunkBytes(ms []wire.Msg) int {
	b := 0
	for _, m := range ms {
		if c, ok := m.(*wire.CheckpointChunk); ok {
			b += len(c.Data)
		}
	}
	return b
}

// TestCheckpointTakenDoesNotCopyData: CheckpointTaken runs under the lock
// every vCPU exit takes, so what it costs must not grow with the VM. It
// used to copy the whole part behind the node's header (and hash it): the
// bytes it allocates for an 8 MiB part were 8 times those for a 1 MiB one.
// Now it keeps the data as lent, and its allocations are the same for both.
func TestCheckpointTakenDoesNotCopyData(t *testing.T) {
	alloc := func(size int) uint64 {
		best := ^uint64(0)
		for range 3 {
			p, _, id := joinUntilCheckpoint(t)
			data := bytes.Repeat([]byte{0x5a}, size)
			d := DataDigest(data)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err := p.CheckpointTaken(id, data, d)
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			best = min(best, after.TotalAlloc-before.TotalAlloc)
		}
		return best
	}
	small, large := alloc(1<<20), alloc(8<<20)
	t.Logf("CheckpointTaken allocates %d bytes for a 1 MiB part, %d for an 8 MiB part", small, large)
	if large > 2*small+(64<<10) || large > (8<<20)/8 {
		t.Fatalf("CheckpointTaken allocates %d bytes for an 8 MiB part and %d for a 1 MiB one: it copies the part (want the same for both, far below the part)", large, small)
	}
}

// TestCheckpointChunksPerReadyBounded: a Ready carries at most
// CheckpointReadyBytes of chunks (the agent encodes them under its lock),
// yet the window still fills over consecutive Readies without any ack, and
// the secondary restores exactly the primary's data, its first chunk
// spanning the node's header and the data.
func TestCheckpointChunksPerReadyBounded(t *testing.T) {
	p, s, id := joinUntilCheckpoint(t)
	data := make([]byte, 9<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := p.CheckpointTaken(id, data, DataDigest(data)); err != nil {
		t.Fatal(err)
	}
	limit := p.cfg.CheckpointReadyBytes
	var queued []wire.Msg
	readies := 0
	for p.HasReady() && readies < 1000 {
		rd := take(p)
		readies++
		if b := chunkBytes(rd.Messages); b > limit {
			t.Fatalf("one Ready carries %d bytes of chunks, CheckpointReadyBytes %d", b, limit)
		}
		queued = append(queued, rd.Messages...)
	}
	if sent, window := chunkBytes(queued), p.cfg.CheckpointWindowBytes; sent != window {
		t.Fatalf("without acks the primary sent %d bytes over %d Readies, want its window of %d", sent, readies, window)
	}
	// Now the secondary acknowledges as chunks come.
	restored := false
	for range 10000 {
		for _, m := range queued {
			_ = s.Step(wireTrip(t, m))
		}
		queued = nil
		rd := take(s)
		for _, c := range rd.Commands {
			if c.Kind == CmdRestoreCheckpoint {
				if !bytes.Equal(c.Checkpoint.Data, data) {
					t.Fatalf("the secondary restores %d bytes that differ from the primary's %d", len(c.Checkpoint.Data), len(data))
				}
				restored = true
			}
		}
		if restored {
			return
		}
		for _, m := range rd.Messages {
			_ = p.Step(wireTrip(t, m))
		}
		for p.HasReady() {
			prd := take(p)
			if b := chunkBytes(prd.Messages); b > limit {
				t.Fatalf("one Ready carries %d bytes of chunks, CheckpointReadyBytes %d", b, limit)
			}
			queued = append(queued, prd.Messages...)
		}
		if len(queued) == 0 {
			p.Tick()
			s.Tick()
		}
	}
	t.Fatal("the secondary never restored the checkpoint")
}

// TestCheckpointDigestCoversHeaderAndData: a checkpoint-done's digest is
// SHA-256(SHA-256(node section) || DataDigest(data)), and a secondary
// refuses a checkpoint whose data does not match it.
func TestCheckpointDigestCoversHeaderAndData(t *testing.T) {
	h := wire.Header{Epoch: 1, Fence: 7}
	for _, tamper := range []bool{false, true} {
		s, err := NewNode(Config{VMID: "vm", Role: wire.RoleSecondary, Mode: AckOnCompare, CheckpointChunkBytes: 8})
		if err != nil {
			t.Fatal(err)
		}
		take(s)
		ms := peerCheckpoint(h, 1, 0, []byte("the vmm's data"), 8, wire.CheckpointDone{Full: true})
		if tamper {
			last := ms[len(ms)-2].(*wire.CheckpointChunk)
			last.Data = append([]byte(nil), last.Data...)
			last.Data[len(last.Data)-1] ^= 1
		}
		errs, cmds := stepAll(t, s, ms)
		restored := false
		for _, c := range cmds {
			restored = restored || c.Kind == CmdRestoreCheckpoint && string(c.Checkpoint.Data) == "the vmm's data"
		}
		if restored == tamper {
			t.Fatalf("tampered %v: restored %v (errors %v)", tamper, restored, errs)
		}
	}
}

// BenchmarkCheckpointTaken is the time CheckpointTaken takes for a 3 MiB
// part (the agent holds its lock around it), with the encoding of the
// first Ready's messages as the agent's takeReady does it.
func BenchmarkCheckpointTaken(b *testing.B) {
	data := bytes.Repeat([]byte{0x5a}, 3<<20)
	d := DataDigest(data)
	var enc []byte
	for b.Loop() {
		b.StopTimer()
		p, _, id := joinUntilCheckpoint(b)
		b.StartTimer()
		if err := p.CheckpointTaken(id, data, d); err != nil {
			b.Fatal(err)
		}
		for _, m := range p.Ready().Messages {
			enc = m.Append(enc[:0])
			_ = append([]byte(nil), enc...)
		}
	}
}

// TestPausedEndWaitsForLiveParts: a joiner by pre-copy gets the live parts
// while the VM runs; the pause for the last increment lasts until the
// secondary restored the chain. Asked for at once after the last live
// part, as it was, the pause also waited for the live parts still on
// their way (a window of megabytes). It is asked for once the secondary
// keeps them all.
func TestPausedEndWaitsForLiveParts(t *testing.T) {
	p, s, id := joinUntilCheckpointRounds(t, 2)
	part := bytes.Repeat([]byte{1}, 2<<20) // above PrecopyDoneBytes: a second round follows
	var queued []wire.Msg
	paused := func(rd Ready) bool {
		for _, c := range rd.Commands {
			if c.Kind == CmdPause {
				return true
			}
		}
		return false
	}
	// Both live parts taken, nothing acknowledged yet.
	for round := range 2 {
		if err := p.CheckpointTaken(id, part, DataDigest(part)); err != nil {
			t.Fatal(err)
		}
		id = 0
		for p.HasReady() {
			rd := take(p)
			if paused(rd) {
				t.Fatalf("the primary pauses after live part %d while the secondary holds none of it", round+1)
			}
			for _, c := range rd.Commands {
				if c.Kind == CmdTakeCheckpoint {
					id = c.Checkpoint.ID
				}
			}
			queued = append(queued, rd.Messages...)
		}
		if round == 0 && id == 0 {
			t.Fatal("no second live part asked for")
		}
	}
	// The secondary takes what was sent and acknowledges; the primary
	// sends the rest; once both parts are kept it pauses.
	for range 1000 {
		for _, m := range queued {
			_ = s.Step(wireTrip(t, m))
		}
		queued = nil
		for _, m := range take(s).Messages {
			_ = p.Step(wireTrip(t, m))
		}
		for p.HasReady() {
			rd := take(p)
			if paused(rd) {
				if !p.shipping.allKept() {
					t.Fatal("the primary paused before the secondary kept both live parts")
				}
				return
			}
			queued = append(queued, rd.Messages...)
		}
		if len(queued) == 0 {
			p.Tick()
			s.Tick()
		}
	}
	t.Fatal("the primary never paused for the chain's end")
}
