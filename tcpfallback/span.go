package tcpfallback

import (
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/ring"
)

// SendSpan takes spans in the byte ring's record layout (package ring): a
// 4-byte little-endian payload length, the payload, zero padding to 8 bytes.
// ring.ForEachRecord walks them, so a span is judged exactly as the ring
// that produced it would judge it.

// SpanError says that a record of a span handed to SendSpan cannot be sent
// (a malformed span is reported by ring.ForEachRecord's *ring.MalformedError
// instead). Nothing of such a span is sent.
type SpanError struct {
	Offset int    // byte offset of the record in the span
	Reason string // what is wrong with it
}

func (e *SpanError) Error() string {
	return fmt.Sprintf("tcpfallback: span record at offset %d: %s; nothing of this span was sent", e.Offset, e.Reason)
}

// checkSpan validates the whole span before any of it is sent, so that
// SendSpan is all or nothing, and counts its records.
func checkSpan(span []byte, maxPayload uint32) (records int, err error) {
	off := 0
	err = ring.ForEachRecord(span, func(payload []byte) error {
		if uint32(len(payload)) > maxPayload {
			return &SpanError{Offset: off, Reason: fmt.Sprintf("payload of %d bytes exceeds the peer's maximum frame payload %d", len(payload), maxPayload)}
		}
		off += ring.RecordBytes(len(payload))
		records++
		return nil
	})
	if err != nil {
		if _, ok := err.(*SpanError); !ok {
			err = fmt.Errorf("tcpfallback: SendSpan: %w; nothing of this span was sent", err)
		}
		return 0, err
	}
	return records, nil
}

// AppendRecord appends one record in the byte ring's layout to dst, whose
// length must be a multiple of 8. It is for tests and benchmarks that need
// spans without a ring.
func AppendRecord(dst, payload []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	for len(dst)%ring.RecordAlignBytes != 0 {
		dst = append(dst, 0)
	}
	return dst
}
