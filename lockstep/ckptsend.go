package lockstep

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// checkpointShipping is a primary's side of bringing a secondary up: the
// checkpoint last asked of the VMM, and the checkpoints being shipped (the
// parts of a pre-copy chain, or one standing alone) with their windows.
type checkpointShipping struct {
	id           uint64     // the checkpoint last asked for (CmdTakeCheckpoint)
	seq          uint64     // its log position (the log's end when it was taken)
	full         bool       // it is for a joiner (full), not a repair (incremental)
	base         []byte     // the secondary's resync base for the repair (nil: none)
	taking       bool       // asked for and not yet taken (CheckpointTaken or CheckpointFailed)
	live         bool       // the checkpoint asked for is a live (pre-copy) part
	chainBase    uint64     // first part of the chain being shipped (0: none)
	precopyRound int        // live parts taken of the chain so far
	checkpoints  []*outCkpt // checkpoints being shipped, in order (every part of a chain)
	retryTicks   int        // retransmit timeout of checkpoints, doubled while no ack comes
	readyBytes   int        // chunk bytes pumpCheckpoint put in the Ready being built
	// awaitParts: the live parts are all taken; the paused end is asked
	// for once the secondary keeps every one of them (stepCheckpointAck).
	awaitParts bool
}

// Ships reports whether checkpoint id is one this primary is shipping
// now, so that its chunks and its CheckpointDone are still wanted. Once
// the node gave the join or the resync up (its secondary was lost), or
// the secondary restored it, it is not: an agent drops what it still has
// of it queued, which would otherwise reach the next joiner.
func (n *Node) Ships(id uint64) bool {
	if n.role != RolePrimary || n.primary.phase != pSyncing && n.primary.phase != pPrecopy {
		return false
	}
	for _, o := range n.shipping.checkpoints {
		if o.id == id {
			return true
		}
	}
	return false
}

// allKept reports whether the secondary has every checkpoint shipped whole.
func (s *checkpointShipping) allKept() bool {
	for _, o := range s.checkpoints {
		if !o.kept {
			return false
		}
	}
	return true
}

// bytes is the checkpoint data held for shipping.
func (s *checkpointShipping) bytes() int {
	b := 0
	for _, o := range s.checkpoints {
		b += int(o.size())
	}
	return b
}

// outCkpt is one checkpoint a primary ships to its secondary: the payload
// (the node's header, then the VMM's data, kept as the two slices they
// came as: chunks are cut over their concatenation without building it),
// how much of it was sent and how much the secondary acknowledged
// (wire.CheckpointAck). The payload stays until the chain is restored, so
// that a secondary that lost a part can have it again.
type outCkpt struct {
	id, seq  uint64
	header   []byte // the node's section (checkpointHeader)
	data     []byte // the VMM's, as CheckpointTaken lent it: never written
	done     *wire.CheckpointDone
	acked    uint64 // the secondary holds [0, acked)
	sent     uint64 // chunks were sent up to here
	doneSent bool
	kept     bool // the secondary has it whole: nothing more to send
	dupAcks  int  // acks repeating acked while later chunks were sent
	// recover is sent when a chunk was resent (0: none): until acked
	// reaches it, each ack that advances shows the next chunk lost too,
	// which is resent at once (as TCP NewReno does).
	recover uint64
}

// resend sends o's chunk at acked again, for a loss.
func (n *Node) resend(o *outCkpt) {
	if o.acked < o.size() {
		n.sendChunk(o, o.acked)
		o.recover = max(o.recover, o.sent)
	}
}

func (o *outCkpt) size() uint64 { return uint64(len(o.header) + len(o.data)) }

// slice returns the payload's bytes [off, end): a slice of the header or
// of the data, and a copy of at most one chunk where it spans both.
func (o *outCkpt) slice(off, end uint64) []byte {
	h := uint64(len(o.header))
	switch {
	case end <= h:
		return o.header[off:end]
	case off >= h:
		return o.data[off-h : end-h]
	}
	return append(append(make([]byte, 0, end-off), o.header[off:]...), o.data[:end-h]...)
}

// ckptInflight is what was sent and not acknowledged, over the chain.
func (s *checkpointShipping) inflight() int {
	f := 0
	for _, o := range s.checkpoints {
		if !o.kept {
			f += int(o.sent - o.acked)
		}
	}
	return f
}

// sendChunk sends the chunk of o at off and returns its length.
func (n *Node) sendChunk(o *outCkpt, off uint64) uint64 {
	end := min(off+uint64(n.cfg.CheckpointChunkBytes), o.size())
	n.send(&wire.CheckpointChunk{ID: o.id, Seq: o.seq, Offset: off, Data: o.slice(off, end)})
	return end - off
}

// pumpCheckpoint sends what the window allows, in order: the chain's
// parts one after the other, each closed by its CheckpointDone. One Ready
// carries at most CheckpointReadyBytes of chunks (the agent encodes them
// under the lock every vCPU exit takes); Advance pumps again, so the
// window still fills, a Ready at a time.
func (n *Node) pumpCheckpoint() {
	inflight := n.shipping.inflight()
	for _, o := range n.shipping.checkpoints {
		if o.kept {
			continue
		}
		for o.sent < o.size() {
			l := min(uint64(n.cfg.CheckpointChunkBytes), o.size()-o.sent)
			if inflight > 0 && inflight+int(l) > n.cfg.CheckpointWindowBytes {
				return
			}
			if n.shipping.readyBytes > 0 && n.shipping.readyBytes+int(l) > n.cfg.CheckpointReadyBytes {
				return
			}
			n.sendChunk(o, o.sent)
			o.sent += l
			inflight += int(l)
			n.shipping.readyBytes += int(l)
		}
		if !o.doneSent {
			o.doneSent = true
			n.send(o.done)
		}
	}
}

// retransmitCheckpoint runs when RetransmitTicks (doubled while no ack
// comes) passed without progress: it resends what the secondary may have
// lost at the head of each part, not the whole chain.
func (n *Node) retransmitCheckpoint() {
	if n.cfg.Bugs.ResendWholeCheckpoint {
		for _, o := range n.shipping.checkpoints {
			for off := uint64(0); off < o.size(); off += n.sendChunk(o, off) {
			}
			n.send(o.done)
		}
		return
	}
	n.shipping.retryTicks = min(2*n.shipping.retryTicks, 8*n.cfg.RetransmitTicks)
	all := true
	for _, o := range n.shipping.checkpoints {
		switch {
		case o.kept:
			continue
		case o.acked < o.sent:
			n.resend(o)
		case o.doneSent:
			n.send(o.done)
		}
		all = false
	}
	if all && n.primary.phase == pSyncing && len(n.shipping.checkpoints) > 0 && !n.shipping.taking {
		// Everything is kept: the secondary is restoring, or its
		// confirmation was lost. Its answer to the done is a new one.
		n.send(n.shipping.checkpoints[len(n.shipping.checkpoints)-1].done)
	}
}

// stepCheckpointAck takes the secondary's acknowledgement of a checkpoint.
func (n *Node) stepCheckpointAck(m *wire.CheckpointAck) error {
	var o *outCkpt
	for _, c := range n.shipping.checkpoints {
		if c.id == m.ID {
			o = c
		}
	}
	if o == nil {
		return nil // of a chain given up
	}
	if m.Through > o.size() {
		return fmt.Errorf("lockstep: checkpoint ack through byte %d of checkpoint %d, which has %d", m.Through, m.ID, o.size())
	}
	progress := func() {
		n.ticks.sinceProgress, n.shipping.retryTicks, o.dupAcks = 0, n.cfg.RetransmitTicks, 0
	}
	switch {
	case m.Kept:
		if !o.kept {
			o.kept, o.acked, o.sent = true, o.size(), o.size()
			progress()
		}
	case m.Missing:
		// The secondary lacks the chunk at Through. Below what it
		// acknowledged before, it lost its copy (it restarted, or gave
		// it up), or this is a late message: either way the chunks from
		// there go again one by one as its acks show them missing, which
		// costs a late message one chunk.
		if m.Through < o.size() {
			o.kept, o.acked = false, m.Through
			o.sent = max(o.sent, o.acked)
			n.resend(o)
		} else if !o.kept {
			n.send(o.done)
		}
	case o.kept || m.Through < o.acked:
		// A late ack.
	case m.Through > o.acked:
		o.acked = m.Through
		o.sent = max(o.sent, o.acked)
		progress()
		if o.acked < o.recover {
			n.resend(o) // a partial ack: the next chunk was lost too
		} else {
			o.recover = 0
		}
	case o.acked < o.sent:
		// Later chunks arrive and this one is still missing.
		o.dupAcks++
		if o.dupAcks == 3 {
			n.resend(o)
		}
	}
	if n.shipping.awaitParts && n.primary.phase == pPrecopy && n.shipping.allKept() {
		n.shipping.awaitParts = false
		n.syncPaused(true)
	}
	n.pumpCheckpoint()
	return nil
}

// ship chunks one checkpoint (the node's header, then the VMM's data,
// whose digest is dataDigest), closed by done, and sends what the window
// allows; the rest goes as the secondary acknowledges (stepCheckpointAck).
// Neither copies nor hashes data: both would take as long as the VM's
// size, under the lock the agent holds around the node.
func (n *Node) ship(id uint64, data []byte, dataDigest [wire.DigestBytes]byte, done *wire.CheckpointDone) error {
	seq := n.log.lastSeq
	header := n.checkpointHeader()
	if total := len(header) + len(data); total > n.cfg.MaxCheckpointBytes {
		return fmt.Errorf("lockstep: checkpoint of %d bytes exceeds MaxCheckpointBytes %d: raise the bound on both hosts (ftvm sizes it from --mem, --disk-size and --precopy-rounds: give both hosts the same)", total, n.cfg.MaxCheckpointBytes)
	}
	done.ID, done.Seq, done.Total, done.Digest = id, seq, uint64(len(header)+len(data)), checkpointDigest(header, dataDigest)
	n.shipping.checkpoints = append(n.shipping.checkpoints, &outCkpt{id: id, seq: seq, header: header, data: data, done: done})
	n.pumpCheckpoint()
	return nil
}

// DataDigest is the digest of a checkpoint's VMM data that CheckpointTaken
// takes beside it (lockstep/wire's doc, protocol version 6): the data cut
// into dataDigestLanes pieces, piece i being bytes [i×n/8, (i+1)×n/8) of
// its n, and the CRC32C (Castagnoli) of each piece, little-endian, one
// after the other. The caller computes it where it made the data, off
// whatever lock it holds around the node.
//
// It is a check against corruption and a wrong assembly of the chunks,
// not against an adversary: the transport authenticates every frame (TLS
// or a PSK's HMAC). Both hosts compute it inside a resync's pause, the
// primary over the data it made and the secondary over the data it
// assembled, and SHA-256, which it was until version 6, took 2.7 to 3.8
// ms there for the 4 MB of a 1,000-page increment, on each side; CRC32C
// runs on the CPU's CRC32 instruction at about 20 GB/s. A change within
// one piece is missed with probability 2^-32 (none of up to 32 bits in a
// row is); a mix-up across pieces, such as chunks of another checkpoint,
// has to fool each piece it touches.
func DataDigest(data []byte) [wire.DigestBytes]byte {
	var d [wire.DigestBytes]byte
	n := len(data)
	for i := range dataDigestLanes {
		piece := data[i*n/dataDigestLanes : (i+1)*n/dataDigestLanes]
		binary.LittleEndian.PutUint32(d[4*i:], crc32.Checksum(piece, castagnoli))
	}
	return d
}

// dataDigestLanes is the number of CRC32C lanes in DataDigest: as many as
// wire.DigestBytes holds.
const dataDigestLanes = wire.DigestBytes / 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkpointDigest is a checkpoint-done's digest (lockstep/wire's doc):
// SHA-256(SHA-256(node section) || DataDigest(VMM data)).
func checkpointDigest(header []byte, dataDigest [wire.DigestBytes]byte) [wire.DigestBytes]byte {
	h := sha256.Sum256(header)
	return sha256.Sum256(append(h[:], dataDigest[:]...))
}

// checkpointHeader is the node's part of a checkpoint: the outputs held at
// the checkpoint, which the secondary must be able to release if it takes
// over (the primary will release them once the restore is confirmed).
//
//	u64 released-through, u32 count, count × (u64 seq, u16 device, u32 len, data)
func (n *Node) checkpointHeader() []byte {
	b := binary.LittleEndian.AppendUint64(nil, n.releasedThrough())
	b = binary.LittleEndian.AppendUint32(b, uint32(len(n.log.held)))
	for _, h := range n.log.held {
		b = binary.LittleEndian.AppendUint64(b, h.seq)
		b = binary.LittleEndian.AppendUint16(b, h.device)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(h.data)))
		b = append(b, h.data...)
	}
	return b
}

var errCheckpointHeader = errors.New("lockstep: checkpoint node section malformed")

// heldOutputHeaderBytes is the least one held output takes in a
// checkpoint's node section (seq, device, len).
const heldOutputHeaderBytes = 14

// parseCheckpointHeader undoes checkpointHeader. The count of held outputs
// is bounded by the section's own size (each takes at least
// heldOutputHeaderBytes), which the checkpoint's bound already limits, and
// not by the log window: a primary may hold more outputs than its window
// (those the vCPU made while the loop was pausing it), and a smaller bound
// here refused every checkpoint of such a primary, so that the resync
// never ended.
func parseCheckpointHeader(b []byte) (released uint64, outs []held, rest []byte, err error) {
	if len(b) < 12 {
		return 0, nil, nil, errCheckpointHeader
	}
	released = binary.LittleEndian.Uint64(b)
	count := binary.LittleEndian.Uint32(b[8:])
	b = b[12:]
	if uint64(count) > uint64(len(b)/heldOutputHeaderBytes) {
		return 0, nil, nil, fmt.Errorf("%w: %d held outputs in %d bytes", errCheckpointHeader, count, len(b))
	}
	for range count {
		if len(b) < heldOutputHeaderBytes {
			return 0, nil, nil, errCheckpointHeader
		}
		h := held{seq: binary.LittleEndian.Uint64(b), device: binary.LittleEndian.Uint16(b[8:])}
		l := binary.LittleEndian.Uint32(b[10:])
		b = b[heldOutputHeaderBytes:]
		if uint64(l) > uint64(len(b)) || l > wire.MaxOutputDataBytes {
			return 0, nil, nil, errCheckpointHeader
		}
		h.data = clone(b[:l])
		b = b[l:]
		outs = append(outs, h)
	}
	return released, outs, b, nil
}
