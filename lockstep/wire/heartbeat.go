package wire

import "encoding/binary"

// Heartbeat tells the secondary the primary is alive, how far its log goes
// (so a gap is noticed without new traffic) and which outputs it has
// released (so the secondary knows which of its copies the world has seen).
type Heartbeat struct {
	Header
	LastSeq         uint64
	ReleasedThrough uint64
}

func (*Heartbeat) Type() Type { return TypeHeartbeat }

func (m *Heartbeat) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeHeartbeat, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.LastSeq)
	b = binary.LittleEndian.AppendUint64(b, m.ReleasedThrough)
	return endFrame(b, s)
}

func parseHeartbeat(r *reader) Msg {
	return &Heartbeat{LastSeq: r.u64("last seq"), ReleasedThrough: r.u64("released through")}
}
