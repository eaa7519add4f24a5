package tcpfallback

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// HeaderBytes is the size of the frame header that precedes every payload.
// Sixteen bytes keep a payload that lands at an 8-aligned offset of a receive
// buffer 8-aligned, which is what the byte ring's records want.
const HeaderBytes = 16

// DefaultMaxPayloadBytes bounds the payload of one frame unless
// Config.MaxPayloadBytes says otherwise. It is four checkpoint chunks of
// 1 MiB: big enough that chunking costs nothing measurable, small enough that
// a corrupt length field cannot make a receiver allocate without bound.
const DefaultMaxPayloadBytes = 4 << 20

// maxPayloadLimitBytes is the largest value Config.MaxPayloadBytes may take:
// the length field is 32 bits and the receive buffer must stay allocatable.
const maxPayloadLimitBytes = 1 << 30

// castagnoli is the CRC32C table; hash/crc32 uses the SSE4.2 instruction for
// it on amd64, so checking a 64-byte entry costs a few nanoseconds.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is a decoded frame header.
type header struct {
	length uint32
	typ    Type
	flags  Flags
	seq    uint32
	crc    uint32
}

// putHeader writes the 16-byte header for payload into dst (len ≥ HeaderBytes)
// and computes both checks. Layout (little-endian):
//
//	0..3   payload length in bytes
//	4      type
//	5      flags
//	6..7   header check: low 16 bits of CRC32C over bytes 0..5 and 8..11
//	8..11  sequence number on this connection, from 0
//	12..15 CRC32C (Castagnoli) of bytes 0..11, then of the payload
//
// The header check exists so that a corrupt length is caught when the
// header arrives: without it, a length bent to a larger value below the
// maximum would leave the receiver waiting for bytes that never come (the
// peer's heartbeats would even keep the lane alive while it waits).
func putHeader(dst []byte, typ Type, flags Flags, seq uint32, payload []byte) {
	_ = dst[HeaderBytes-1]
	binary.LittleEndian.PutUint32(dst[0:4], uint32(len(payload)))
	dst[4] = byte(typ)
	dst[5] = byte(flags)
	binary.LittleEndian.PutUint32(dst[8:12], seq)
	binary.LittleEndian.PutUint16(dst[6:8], headerCheck(dst))
	binary.LittleEndian.PutUint32(dst[12:16], crcOf(dst[0:12], payload))
}

// headerCheck computes the header check of the 16-byte header h.
func headerCheck(h []byte) uint16 {
	c := crc32.Update(0, castagnoli, h[0:6])
	return uint16(crc32.Update(c, castagnoli, h[8:12]))
}

// appendFrame appends a whole frame to dst. Used where a copy is needed
// anyway (handshake, TLS staging, tests); the plain data path never copies.
func appendFrame(dst []byte, typ Type, flags Flags, seq uint32, payload []byte) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, HeaderBytes)...)
	dst = append(dst, payload...)
	putHeader(dst[n:n+HeaderBytes], typ, flags, seq, payload)
	return dst
}

// FrameError says why a frame was refused. Every field that helps find the
// cause is filled in; Error() names them.
type FrameError struct {
	Reason  string // "bad length", "CRC mismatch", "unknown type", ...
	Lane    Lane
	Seq     uint32 // the sequence number the frame should have had
	Type    Type
	Length  uint32
	Limit   uint32 // for bad length: the maximum payload
	GotCRC  uint32 // for CRC mismatch: the CRC in the header
	WantCRC uint32 // for CRC mismatch: the CRC of the bytes received
	Detail  string
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("tcpfallback: %s lane: %s; the connection was closed and nothing after this frame was delivered", e.Lane, e.describe())
}

// describe says what was wrong without naming the consequence, for callers
// (connection set-up) where the consequence differs.
func (e *FrameError) describe() string {
	s := fmt.Sprintf("frame %d refused: %s", e.Seq, e.Reason)
	switch e.Reason {
	case reasonBadLength:
		s += fmt.Sprintf(": payload length %d exceeds the maximum %d (corrupt stream, or peers configured with different MaxPayloadBytes)", e.Length, e.Limit)
	case reasonCRC:
		s += fmt.Sprintf(": header says %#08x, bytes received give %#08x (type %s, length %d); the stream was corrupted in flight", e.GotCRC, e.WantCRC, e.Type, e.Length)
	case reasonUnknownType, reasonWrongLane:
		s += fmt.Sprintf(": %s", e.Type)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Reasons a FrameError can carry. They are also the keys of Stats.FrameErrors.
const (
	reasonBadLength   = "bad length"
	reasonCRC         = "CRC mismatch"
	reasonUnknownType = "unknown type"
	reasonWrongLane   = "type not allowed on this lane"
	reasonBadFlags    = "unknown flags"
	reasonHeaderCheck = "header check mismatch"
	reasonBadSeq      = "sequence number out of order"
	reasonBadPayload  = "bad payload"
)

// parseFrame decodes the frame at the start of b. It returns the header, the
// payload (aliasing b) and the number of bytes consumed. n == 0 with a nil
// error means b holds only part of a frame; read more. seq is the sequence
// number the frame must carry. lane selects the set of allowed types;
// handshake frames are checked with handshake=true.
//
// Checks run in the order that gives the most useful error: the header
// check and the length before waiting for the payload (a corrupt length must
// not make the receiver wait for bytes that never come), type and flags after
// the CRC (a flipped bit is reported as corruption, not as a protocol error).
func parseFrame(b []byte, maxPayload uint32, lane Lane, seq uint32, handshake bool) (h header, payload []byte, n int, err error) {
	if len(b) < HeaderBytes {
		return h, nil, 0, nil
	}
	h.length = binaryLE32(b[0:4])
	h.typ = Type(b[4])
	h.flags = Flags(b[5])
	h.seq = binaryLE32(b[8:12])
	h.crc = binaryLE32(b[12:16])
	if got, want := binary.LittleEndian.Uint16(b[6:8]), headerCheck(b); got != want {
		return h, nil, 0, &FrameError{Reason: reasonHeaderCheck, Lane: lane, Seq: seq, Type: h.typ, Length: h.length,
			Detail: fmt.Sprintf("header says %#04x, header bytes give %#04x; the stream was corrupted or is out of step", got, want)}
	}
	if h.length > maxPayload {
		return h, nil, 0, &FrameError{Reason: reasonBadLength, Lane: lane, Seq: seq, Type: h.typ, Length: h.length, Limit: maxPayload}
	}
	total := HeaderBytes + int(h.length)
	if len(b) < total {
		return h, nil, 0, nil
	}
	payload = b[HeaderBytes:total]
	if crc := crcOf(b[0:12], payload); crc != h.crc {
		return h, nil, 0, &FrameError{Reason: reasonCRC, Lane: lane, Seq: seq, Type: h.typ, Length: h.length, GotCRC: h.crc, WantCRC: crc}
	}
	if !h.typ.Known() {
		return h, nil, 0, &FrameError{Reason: reasonUnknownType, Lane: lane, Seq: seq, Type: h.typ, Length: h.length,
			Detail: "the peer speaks a protocol this build does not know"}
	}
	if handshake {
		if h.typ != TypeHello && h.typ != TypeHelloDone {
			return h, nil, 0, &FrameError{Reason: reasonWrongLane, Lane: lane, Seq: seq, Type: h.typ, Length: h.length,
				Detail: "only hello frames may arrive during connection set-up"}
		}
	} else if !h.typ.AllowedOn(lane) {
		return h, nil, 0, &FrameError{Reason: reasonWrongLane, Lane: lane, Seq: seq, Type: h.typ, Length: h.length}
	}
	if h.flags&^KnownFlags != 0 {
		return h, nil, 0, &FrameError{Reason: reasonBadFlags, Lane: lane, Seq: seq, Type: h.typ, Length: h.length,
			Detail: fmt.Sprintf("flags %#02x, known %#02x", uint8(h.flags), uint8(KnownFlags))}
	}
	if h.seq != seq {
		return h, nil, 0, &FrameError{Reason: reasonBadSeq, Lane: lane, Seq: seq, Type: h.typ, Length: h.length,
			Detail: fmt.Sprintf("got %d, want %d (a frame was lost or repeated)", h.seq, seq)}
	}
	if h.typ == TypeHeartbeat && h.length != 0 {
		return h, nil, 0, &FrameError{Reason: reasonBadPayload, Lane: lane, Seq: seq, Type: h.typ, Length: h.length,
			Detail: "heartbeats carry no payload"}
	}
	return h, payload, total, nil
}

func binaryLE32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

func crcOf(hdr12, payload []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, hdr12), castagnoli, payload)
}
