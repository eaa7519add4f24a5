package wire

import "encoding/binary"

// ResyncReason says why the secondary asks for a checkpoint.
type ResyncReason uint8

// Resync reasons.
const (
	ResyncOutputMismatch ResyncReason = 1 // an output's digest differed
	ResyncInputMismatch  ResyncReason = 2 // the VM asked for an input the log does not have there
)

// ResyncRequest asks the primary for a checkpoint because the replicas
// diverged at log position AtSeq.
type ResyncRequest struct {
	Header
	Reason ResyncReason
	AtSeq  uint64
	// Base (protocol version 5) is the secondary VMM's description of the
	// state it holds (the checkpoint it last restored and what it changed
	// since), opaque to the protocol, at most MaxResyncBaseBytes; empty:
	// none, the primary sends a checkpoint that stands alone.
	Base []byte
}

func (*ResyncRequest) Type() Type { return TypeResyncRequest }

func (m *ResyncRequest) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeResyncRequest, &m.Header)
	b = append(b, byte(m.Reason))
	b = binary.LittleEndian.AppendUint64(b, m.AtSeq)
	b = appendBytes(b, m.Base)
	return endFrame(b, s)
}

func parseResyncRequest(r *reader) Msg {
	m := &ResyncRequest{Reason: ResyncReason(r.u8("reason"))}
	if r.err == nil && m.Reason != ResyncOutputMismatch && m.Reason != ResyncInputMismatch {
		r.fail("unknown resync reason %d", m.Reason)
	}
	m.AtSeq = r.u64("at seq")
	m.Base = r.bytes("base", MaxResyncBaseBytes)
	if len(m.Base) == 0 {
		m.Base = nil // one value for "none", so that Parse(Append(m)) round-trips
	}
	return m
}
