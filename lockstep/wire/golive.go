package wire

import "encoding/binary"

// GoLive announces that the sender won the arbiter for Header.Epoch with
// Header.Fence and is now the primary; its log restarts after LastSeq. A
// receiver on an older epoch must stop releasing outputs.
type GoLive struct {
	Header
	LastSeq uint64
}

func (*GoLive) Type() Type { return TypeGoLive }

func (m *GoLive) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeGoLive, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.LastSeq)
	return endFrame(b, s)
}

func parseGoLive(r *reader) Msg { return &GoLive{LastSeq: r.u64("last seq")} }
