package wire

import "encoding/binary"

// Output is the primary's record of one externally visible output: where it
// happened, on which device, and a SHA-256 of its bytes. Data is carried
// only where the mode needs the bytes themselves (HasData); otherwise the
// secondary compares digests.
type Output struct {
	Header
	Seq       uint64
	ExitIndex uint64
	Device    uint16
	Length    uint32
	Digest    [DigestBytes]byte
	HasData   bool
	Data      []byte
}

func (*Output) Type() Type { return TypeOutput }

func (m *Output) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeOutput, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = binary.LittleEndian.AppendUint64(b, m.ExitIndex)
	b = binary.LittleEndian.AppendUint16(b, m.Device)
	b = binary.LittleEndian.AppendUint32(b, m.Length)
	b = append(b, m.Digest[:]...)
	b = appendBool(b, m.HasData)
	if m.HasData {
		b = appendBytes(b, m.Data)
	}
	return endFrame(b, s)
}

func parseOutput(r *reader) Msg {
	m := &Output{Seq: r.u64("seq"), ExitIndex: r.u64("exit index"), Device: r.u16("device"), Length: r.u32("length")}
	m.Digest = r.digest("digest")
	m.HasData = r.bool("has-data flag")
	if r.err == nil && m.Length > MaxOutputDataBytes {
		r.fail("output length %d exceeds MaxOutputDataBytes %d", m.Length, MaxOutputDataBytes)
	}
	if m.HasData {
		m.Data = r.bytes("data", MaxOutputDataBytes)
		if r.err == nil && len(m.Data) != int(m.Length) {
			r.fail("data has %d bytes but length says %d", len(m.Data), m.Length)
		}
	}
	return m
}
