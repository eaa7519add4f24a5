package wire

import "encoding/binary"

// Ack is the secondary's cumulative acknowledgement: every log item up to
// Received has been appended to its log, and every output record up to
// Compared has been reproduced with the same digest by its VM.
type Ack struct {
	Header
	Received uint64
	Compared uint64
}

func (*Ack) Type() Type { return TypeAck }

func (m *Ack) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeAck, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.Received)
	b = binary.LittleEndian.AppendUint64(b, m.Compared)
	return endFrame(b, s)
}

func parseAck(r *reader) Msg {
	return &Ack{Received: r.u64("received"), Compared: r.u64("compared")}
}
