package wire

import "encoding/binary"

// Ack is the secondary's cumulative acknowledgement: every log item up to
// Received has been appended to its log, and every output record up to
// Compared has been reproduced with the same digest by its VM. Replayed is
// how far its VM has consumed the log: the primary's flow control counts
// its window from there, so the secondary never holds more than a window of
// unreplayed items.
type Ack struct {
	Header
	Received uint64
	Compared uint64
	Replayed uint64
}

func (*Ack) Type() Type { return TypeAck }

func (m *Ack) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeAck, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.Received)
	b = binary.LittleEndian.AppendUint64(b, m.Compared)
	b = binary.LittleEndian.AppendUint64(b, m.Replayed)
	return endFrame(b, s)
}

func parseAck(r *reader) Msg {
	return &Ack{Received: r.u64("received"), Compared: r.u64("compared"), Replayed: r.u64("replayed")}
}
