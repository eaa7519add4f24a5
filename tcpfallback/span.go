package tcpfallback

import (
	"encoding/binary"
	"fmt"
)

// Record layout of the byte ring (package ring), which SendSpan accepts
// without copying: a 4-byte little-endian payload length L, L payload bytes,
// zero padding to the next 8-byte boundary. recordWrapMarker in the length
// position marks the end of the usable ring and never appears in a span.
const (
	recordLenBytes   = 4
	recordAlignBytes = 8
	recordWrapMarker = 0xFFFFFFFF
)

// SpanError says where and why a span handed to SendSpan is malformed.
// Nothing of a malformed span is sent.
type SpanError struct {
	Offset int    // byte offset of the bad record in the span
	Reason string // what is wrong with it
}

func (e *SpanError) Error() string {
	return fmt.Sprintf("tcpfallback: span record at offset %d: %s; nothing of this span was sent (the span must hold whole ring records: 4-byte length, payload, padding to 8 bytes)", e.Offset, e.Reason)
}

// forEachRecord calls fn with the payload of each record in span, in order.
// It stops at the first malformed record. It will be replaced by
// ring.ForEachRecord once that package lands; the checks must stay the same.
func forEachRecord(span []byte, maxPayload uint32, fn func(payload []byte)) error {
	off := 0
	for off < len(span) {
		if len(span)-off < recordLenBytes {
			return &SpanError{Offset: off, Reason: fmt.Sprintf("%d trailing bytes are too few for a length field", len(span)-off)}
		}
		l := binary.LittleEndian.Uint32(span[off:])
		if l == recordWrapMarker {
			return &SpanError{Offset: off, Reason: "wrap marker inside a span (the ring must split spans at the wrap)"}
		}
		if l > maxPayload {
			return &SpanError{Offset: off, Reason: fmt.Sprintf("length %d exceeds the peer's maximum frame payload %d", l, maxPayload)}
		}
		end := off + recordLenBytes + int(l)
		if end > len(span) {
			return &SpanError{Offset: off, Reason: fmt.Sprintf("length %d runs past the end of the span (%d bytes remain)", l, len(span)-off-recordLenBytes)}
		}
		fn(span[off+recordLenBytes : end])
		// The last record's padding may be cut off by the span's end.
		off = min((end+recordAlignBytes-1)&^(recordAlignBytes-1), len(span))
	}
	return nil
}

// AppendRecord appends one record in the byte ring's layout to dst. It is
// for tests and benchmarks that need spans before the ring exists.
func AppendRecord(dst, payload []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	for len(dst)%recordAlignBytes != 0 {
		dst = append(dst, 0)
	}
	return dst
}
