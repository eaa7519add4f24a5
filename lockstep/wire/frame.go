package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/ftvm/ftvm/internal/limits"
)

// Version is the frame format version this package writes and accepts.
const Version = 1

// Bounds on what Parse accepts. Every variable-length field is capped by one
// of these, so a hostile frame can make Parse allocate at most
// MaxFrameBytes; Parse itself copies no byte fields (they alias the input).
const (
	HeaderBytes  = 22 // version, type, epoch, fence, body length
	TrailerBytes = 4  // CRC32C
	// The data of an entry and of an output: the largest device request
	// plus the agent's header, from internal/limits (the one place they
	// are set), so that every legal request fits by construction.
	MaxEntryDataBytes  = limits.EntryDataMaxBytes
	MaxOutputDataBytes = limits.OutputDataMaxBytes
	MaxChunkDataBytes  = 256 << 10
	// MaxResyncBaseBytes bounds a resync request's Base: as large as a
	// chunk's data, so that a request fits every transport a chunk does.
	// The VMM's encoding of what it dirtied must fit (vmm.MaxDirtySetBytes
	// <= this); a larger one is not sent, and the resync is a full one.
	MaxResyncBaseBytes = MaxChunkDataBytes
	MaxVMIDBytes       = 128
	MaxCheckpointBytes = 1 << 40 // total size a CheckpointDone may announce (a node's own bound is its Config's)
	MaxBodyBytes       = MaxChunkDataBytes + 64
	MaxFrameBytes      = HeaderBytes + MaxBodyBytes + TrailerBytes
	DigestBytes        = 32 // SHA-256
)

// The largest entry and output bodies (fixed fields, then the data with
// its u32 length) must fit MaxBodyBytes: a negative constant converted to
// uint does not compile.
const (
	entryFixedBytes  = 8 + 8 + 2 + 4 // seq, exit index, kind, data length
	resyncFixedBytes = 1 + 8 + 4     // reason, at seq, base length
	_                = uint(MaxBodyBytes - resyncFixedBytes - MaxResyncBaseBytes)
	outputFixedBytes = 8 + 8 + 2 + 4 + DigestBytes + 1 + 4 // seq, exit index, device, length, digest, has-data, data length
	_                = uint(MaxBodyBytes - entryFixedBytes - MaxEntryDataBytes)
	_                = uint(MaxBodyBytes - outputFixedBytes - MaxOutputDataBytes)
)

// Type names a message type on the wire.
type Type uint8

// Message types. Values are part of the wire format: never renumber.
const (
	TypeHello Type = 1 + iota
	TypeEntry
	TypeOutput
	TypeAck
	TypeHeartbeat
	TypeResyncRequest
	TypeCheckpointChunk
	TypeCheckpointDone
	TypeGoLive
	TypeFence
	TypeCheckpointAck
	typeEnd
)

var typeNames = [...]string{"", "hello", "entry", "output", "ack", "heartbeat", "resync-request",
	"checkpoint-chunk", "checkpoint-done", "go-live", "fence", "checkpoint-ack"}

func (t Type) String() string {
	if t > 0 && t < typeEnd {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Header is carried by every message: the sender's epoch and the fence token
// the arbiter granted for it (0 before any grant).
type Header struct {
	Epoch uint64
	Fence uint64
}

// Head returns the header; it lets every message type satisfy Msg by
// embedding Header.
func (h *Header) Head() *Header { return h }

// Msg is one protocol message. Variable-length fields of a parsed message
// alias the buffer given to Parse: copy them before reusing that buffer.
type Msg interface {
	Type() Type
	Head() *Header
	// Append appends the whole frame (header, body, CRC) to b.
	Append(b []byte) []byte
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by Parse. They wrap into messages naming the field.
var (
	ErrShort     = errors.New("wire: frame truncated")
	ErrVersion   = errors.New("wire: unsupported frame version")
	ErrType      = errors.New("wire: unknown message type")
	ErrChecksum  = errors.New("wire: CRC32C mismatch")
	ErrTooLarge  = errors.New("wire: length exceeds bound")
	ErrMalformed = errors.New("wire: malformed body")
)

// beginFrame appends a header with a zero body length and returns the offset
// of the frame start; endFrame patches the length and appends the CRC.
func beginFrame(b []byte, t Type, h *Header) ([]byte, int) {
	start := len(b)
	b = append(b, Version, byte(t))
	b = binary.LittleEndian.AppendUint64(b, h.Epoch)
	b = binary.LittleEndian.AppendUint64(b, h.Fence)
	b = binary.LittleEndian.AppendUint32(b, 0)
	return b, start
}

func endFrame(b []byte, start int) []byte {
	body := len(b) - start - HeaderBytes
	binary.LittleEndian.PutUint32(b[start+18:], uint32(body))
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// Parse decodes the first frame in b and returns the message and the number
// of bytes it used. It never panics; errors name what was wrong.
func Parse(b []byte) (Msg, int, error) {
	if len(b) < HeaderBytes+TrailerBytes {
		return nil, 0, fmt.Errorf("%w: %d bytes, need at least %d", ErrShort, len(b), HeaderBytes+TrailerBytes)
	}
	if b[0] != Version {
		return nil, 0, fmt.Errorf("%w: got %d, this build speaks %d (upgrade the older host)", ErrVersion, b[0], Version)
	}
	t := Type(b[1])
	if t == 0 || t >= typeEnd {
		return nil, 0, fmt.Errorf("%w: %d", ErrType, b[1])
	}
	bodyLen := binary.LittleEndian.Uint32(b[18:])
	if bodyLen > MaxBodyBytes {
		return nil, 0, fmt.Errorf("%w: body length %d > MaxBodyBytes %d", ErrTooLarge, bodyLen, MaxBodyBytes)
	}
	n := HeaderBytes + int(bodyLen) + TrailerBytes
	if len(b) < n {
		return nil, 0, fmt.Errorf("%w: frame says %d bytes, have %d", ErrShort, n, len(b))
	}
	want := binary.LittleEndian.Uint32(b[n-TrailerBytes:])
	if got := crc32.Checksum(b[:n-TrailerBytes], castagnoli); got != want {
		return nil, 0, fmt.Errorf("%w: computed %#08x, frame carries %#08x", ErrChecksum, got, want)
	}
	h := Header{Epoch: binary.LittleEndian.Uint64(b[2:]), Fence: binary.LittleEndian.Uint64(b[10:])}
	r := reader{b: b[HeaderBytes : n-TrailerBytes]}
	var m Msg
	switch t {
	case TypeHello:
		m = parseHello(&r)
	case TypeEntry:
		m = parseEntry(&r)
	case TypeOutput:
		m = parseOutput(&r)
	case TypeAck:
		m = parseAck(&r)
	case TypeHeartbeat:
		m = parseHeartbeat(&r)
	case TypeResyncRequest:
		m = parseResyncRequest(&r)
	case TypeCheckpointChunk:
		m = parseCheckpointChunk(&r)
	case TypeCheckpointDone:
		m = parseCheckpointDone(&r)
	case TypeGoLive:
		m = parseGoLive(&r)
	case TypeFence:
		m = parseFence(&r)
	case TypeCheckpointAck:
		m = parseCheckpointAck(&r)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes in body", len(r.b))
	}
	if r.err != nil {
		return nil, 0, fmt.Errorf("%s: %w", t, r.err)
	}
	*m.Head() = h
	return m, n, nil
}

// reader consumes a body; the first failure sticks and later reads return
// zero values, so parse functions need no error plumbing per field.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
	r.b = nil
}

func (r *reader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.fail("%s needs %d bytes, %d left", field, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(field string) uint8 {
	if v := r.take(1, field); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16(field string) uint16 {
	if v := r.take(2, field); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32(field string) uint32 {
	if v := r.take(4, field); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64(field string) uint64 {
	if v := r.take(8, field); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (r *reader) bool(field string) bool {
	v := r.u8(field)
	if v > 1 {
		r.fail("%s must be 0 or 1, got %d", field, v)
	}
	return v == 1
}

// bytes reads a u32 length and that many bytes, refusing lengths over max.
func (r *reader) bytes(field string, max int) []byte {
	n := r.u32(field + " length")
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(max) {
		r.fail("%s length %d exceeds bound %d", field, n, max)
		return nil
	}
	return r.take(int(n), field)
}

func (r *reader) digest(field string) (d [DigestBytes]byte) {
	copy(d[:], r.take(DigestBytes, field))
	return d
}

func appendBytes(b, v []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}
