package wire

import "encoding/binary"

// Entry is one nondeterministic input in the log: the value the primary's
// VM received at exit ExitIndex. Entries and Output records share one
// sequence space, so the log is a single ordered stream.
type Entry struct {
	Header
	Seq       uint64
	ExitIndex uint64
	Kind      uint16
	Data      []byte
}

func (*Entry) Type() Type { return TypeEntry }

func (m *Entry) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeEntry, &m.Header)
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = binary.LittleEndian.AppendUint64(b, m.ExitIndex)
	b = binary.LittleEndian.AppendUint16(b, m.Kind)
	b = appendBytes(b, m.Data)
	return endFrame(b, s)
}

func parseEntry(r *reader) Msg {
	m := &Entry{Seq: r.u64("seq"), ExitIndex: r.u64("exit index"), Kind: r.u16("kind")}
	m.Data = r.bytes("data", MaxEntryDataBytes)
	return m
}
