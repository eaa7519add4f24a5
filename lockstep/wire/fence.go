package wire

import "encoding/binary"

// Fence answers a message whose epoch is older than the receiver's: the
// header carries the current epoch and fence, RefusedEpoch the stale one.
type Fence struct {
	Header
	RefusedEpoch uint64
}

func (*Fence) Type() Type { return TypeFence }

func (m *Fence) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeFence, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.RefusedEpoch)
	return endFrame(b, s)
}

func parseFence(r *reader) Msg { return &Fence{RefusedEpoch: r.u64("refused epoch")} }
