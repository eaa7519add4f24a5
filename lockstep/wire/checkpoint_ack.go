package wire

import "encoding/binary"

// CheckpointAck is the secondary's cumulative acknowledgement of checkpoint
// ID's chunks: it holds bytes [0, Through) of it, and, with Kept, the whole
// checkpoint, checked against its CheckpointDone (a pre-copy part kept for
// its chain, or a checkpoint being restored). The primary sends a bounded
// window past Through, resends only from Through, and stops sending a
// checkpoint once it is kept.
//
// Missing says the secondary knows it lacks the chunk at Through (the
// checkpoint's CheckpointDone came and bytes are missing, or a chain's end
// came and this part is not kept): the primary resends that chunk, or, if
// it had seen more acknowledged, everything from Through (the secondary
// restarted or gave its copy up). A plain ack with a lower Through than
// before is only a late one, and changes nothing.
type CheckpointAck struct {
	Header
	ID      uint64
	Through uint64
	Kept    bool
	Missing bool
}

func (*CheckpointAck) Type() Type { return TypeCheckpointAck }

func (m *CheckpointAck) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeCheckpointAck, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.ID)
	b = binary.LittleEndian.AppendUint64(b, m.Through)
	b = appendBool(b, m.Kept)
	b = appendBool(b, m.Missing)
	return endFrame(b, s)
}

func parseCheckpointAck(r *reader) Msg {
	m := &CheckpointAck{ID: r.u64("id"), Through: r.u64("through")}
	if r.err == nil && m.Through > MaxCheckpointBytes {
		r.fail("through %d exceeds MaxCheckpointBytes %d", m.Through, uint64(MaxCheckpointBytes))
	}
	m.Kept = r.bool("kept flag")
	m.Missing = r.bool("missing flag")
	if r.err == nil && m.Kept && m.Missing {
		r.fail("kept and missing at once")
	}
	return m
}
