package ring

import (
	"encoding/binary"
	"fmt"
)

// ForEachRecord calls fn with the payload of each record in span, in order,
// and stops at the first error fn returns, returning it. span must hold whole
// records in the layout of the package documentation and no wrap marker (a
// span from Records.Peek always does); anything else is rejected with a
// *MalformedError before fn sees the offending record. Payloads alias span
// and have capacity equal to their length. ForEachRecord allocates nothing
// unless it returns a MalformedError.
func ForEachRecord(span []byte, fn func(payload []byte) error) error {
	for off := 0; off < len(span); {
		left := len(span) - off
		if left < RecordAlignBytes {
			return &MalformedError{OffsetBytes: off, Reason: fmt.Sprintf(
				"only %d bytes left, fewer than the %d of the smallest record", left, RecordAlignBytes)}
		}
		length := binary.LittleEndian.Uint32(span[off:])
		if length == WrapMarker {
			return &MalformedError{OffsetBytes: off, Reason: "a wrap marker (length 0xFFFFFFFF) cannot appear inside a span"}
		}
		// Computed in uint64: a length near 4 GiB overflows int on 32-bit.
		size := (uint64(RecordHeaderBytes) + uint64(length) + RecordAlignBytes - 1) &^ (RecordAlignBytes - 1)
		if size > uint64(left) {
			return &MalformedError{OffsetBytes: off, Reason: fmt.Sprintf(
				"header gives a payload of %d bytes (a %d-byte record) but only %d bytes are left", length, size, left)}
		}
		payloadEnd := off + RecordHeaderBytes + int(length)
		// The padding is the top bytes of the record's last 8-byte word:
		// one load checks all of it.
		if padBytes := off + int(size) - payloadEnd; padBytes > 0 {
			last := binary.LittleEndian.Uint64(span[off+int(size)-8:])
			if last>>(64-8*padBytes) != 0 {
				return paddingError(span, off, payloadEnd, off+int(size))
			}
		}
		if err := fn(span[off+RecordHeaderBytes : payloadEnd : payloadEnd]); err != nil {
			return err
		}
		off += int(size)
	}
	return nil
}

// paddingError names the first non-zero padding byte of a record.
func paddingError(span []byte, off, from, to int) error {
	for i := from; i < to; i++ {
		if span[i] != 0 {
			return &MalformedError{OffsetBytes: off, Reason: fmt.Sprintf(
				"padding byte at span offset %d is %#x, not zero", i, span[i])}
		}
	}
	return nil
}
