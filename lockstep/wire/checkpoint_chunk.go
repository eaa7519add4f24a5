package wire

import "encoding/binary"

// CheckpointChunk carries bytes [Offset, Offset+len(Data)) of checkpoint ID,
// which captures the primary at log position Seq.
type CheckpointChunk struct {
	Header
	ID     uint64
	Seq    uint64
	Offset uint64
	Data   []byte
}

func (*CheckpointChunk) Type() Type { return TypeCheckpointChunk }

func (m *CheckpointChunk) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeCheckpointChunk, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.ID)
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = binary.LittleEndian.AppendUint64(b, m.Offset)
	b = appendBytes(b, m.Data)
	return endFrame(b, s)
}

func parseCheckpointChunk(r *reader) Msg {
	m := &CheckpointChunk{ID: r.u64("id"), Seq: r.u64("seq"), Offset: r.u64("offset")}
	m.Data = r.bytes("data", MaxChunkDataBytes)
	if r.err == nil && m.Offset+uint64(len(m.Data)) > MaxCheckpointBytes {
		r.fail("chunk ends at %d, past MaxCheckpointBytes %d", m.Offset+uint64(len(m.Data)), uint64(MaxCheckpointBytes))
	}
	return m
}
