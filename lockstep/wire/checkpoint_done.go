package wire

import "encoding/binary"

// CheckpointDone closes checkpoint ID. From the primary it announces the
// total size and digest (Restored false); from the secondary it confirms the
// checkpoint was restored (Restored true).
//
// A checkpoint may come in parts, for pre-copy: the primary copies its VM
// while it runs (Part: keep it, it cannot be run from), once or more, then
// pauses and sends the last part, whose Base names the first part's ID.
// The parts are checkpoints Base, Base+1, ..., ID, restored in that order.
// Base is 0 for a checkpoint that stands alone.
type CheckpointDone struct {
	Header
	ID       uint64
	Seq      uint64
	Total    uint64
	Digest   [DigestBytes]byte
	Full     bool
	Restored bool
	Part     bool
	Base     uint64
}

func (*CheckpointDone) Type() Type { return TypeCheckpointDone }

func (m *CheckpointDone) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeCheckpointDone, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.ID)
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = binary.LittleEndian.AppendUint64(b, m.Total)
	b = append(b, m.Digest[:]...)
	b = appendBool(b, m.Full)
	b = appendBool(b, m.Restored)
	b = appendBool(b, m.Part)
	b = binary.LittleEndian.AppendUint64(b, m.Base)
	return endFrame(b, s)
}

func parseCheckpointDone(r *reader) Msg {
	m := &CheckpointDone{ID: r.u64("id"), Seq: r.u64("seq"), Total: r.u64("total")}
	if r.err == nil && m.Total > MaxCheckpointBytes {
		r.fail("total %d exceeds MaxCheckpointBytes %d", m.Total, uint64(MaxCheckpointBytes))
	}
	m.Digest = r.digest("digest")
	m.Full = r.bool("full flag")
	m.Restored = r.bool("restored flag")
	m.Part = r.bool("part flag")
	m.Base = r.u64("base")
	if r.err == nil && m.Base > m.ID {
		r.fail("base %d follows id %d: a chain's parts come before its end", m.Base, m.ID)
	}
	return m
}
