package tcpfallback

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		typ     Type
		flags   Flags
		payload []byte
		lane    Lane
	}{
		{TypeLog, 0, []byte("entry"), LaneControl},
		{TypeAck, 0, nil, LaneControl},
		{TypeHeartbeat, 0, nil, LaneBulk},
		{TypeCheckpoint, FlagFinal, bytes.Repeat([]byte{0xAB}, 4096), LaneBulk},
	} {
		b := appendFrame(nil, tc.typ, tc.flags, 7, tc.payload)
		if len(b) != HeaderBytes+len(tc.payload) {
			t.Fatalf("%s: encoded %d bytes, want %d", tc.typ, len(b), HeaderBytes+len(tc.payload))
		}
		// Every prefix is an incomplete frame, not an error.
		for i := 0; i < len(b); i++ {
			_, _, n, err := parseFrame(b[:i], 1<<20, tc.lane, 7, false)
			if n != 0 || err != nil {
				t.Fatalf("%s: prefix of %d bytes: n=%d err=%v, want incomplete", tc.typ, i, n, err)
			}
		}
		h, p, n, err := parseFrame(append(b, 0xEE), 1<<20, tc.lane, 7, false)
		if err != nil {
			t.Fatalf("%s: %v", tc.typ, err)
		}
		if n != len(b) || h.typ != tc.typ || h.flags != tc.flags || h.seq != 7 || !bytes.Equal(p, tc.payload) {
			t.Fatalf("%s: decoded n=%d typ=%s flags=%d seq=%d payload %d bytes", tc.typ, n, h.typ, h.flags, h.seq, len(p))
		}
	}
}

// corrupt returns a valid frame with one change applied, CRC recomputed
// unless keepCRC.
func corrupt(payload []byte, seq uint32, change func(b []byte), fixCRC bool) []byte {
	b := appendFrame(nil, TypeLog, 0, seq, payload)
	change(b)
	if fixCRC {
		fixFrameCRC(b)
	}
	return b
}

// fixFrameCRC recomputes the header check and the CRC of a frame without
// touching other fields, so that a test reaches the checks after them.
func fixFrameCRC(b []byte) {
	l := binary.LittleEndian.Uint32(b[0:4])
	end := min(HeaderBytes+int(l), len(b))
	binary.LittleEndian.PutUint16(b[6:8], headerCheck(b))
	binary.LittleEndian.PutUint32(b[12:16], crcOf(b[:12], b[HeaderBytes:end]))
}

func TestParseFrameRefusesBadInput(t *testing.T) {
	const maxPayload = 1024
	for _, tc := range []struct {
		name   string
		frame  []byte
		lane   Lane
		reason string
		want   []string // substrings of the error
	}{
		{"header bit flipped", corrupt(nil, 0, func(b []byte) { b[1] ^= 0x04 }, false),
			LaneControl, reasonHeaderCheck, []string{"header says 0x", "header bytes give 0x"}},
		{"length over maximum", corrupt(nil, 0, func(b []byte) { binary.LittleEndian.PutUint32(b, maxPayload+1) }, true),
			LaneControl, reasonBadLength, []string{"1025", "1024"}},
		{"CRC mismatch", corrupt([]byte("payload"), 0, func(b []byte) { b[HeaderBytes] ^= 1 }, false),
			LaneControl, reasonCRC, []string{"header says 0x", "give 0x"}},
		{"unknown type", corrupt(nil, 0, func(b []byte) { b[4] = 99 }, true),
			LaneControl, reasonUnknownType, []string{"type(99)"}},
		{"checkpoint on control lane", corrupt(nil, 0, func(b []byte) { b[4] = byte(TypeCheckpoint) }, true),
			LaneControl, reasonWrongLane, []string{"checkpoint"}},
		{"log on bulk lane", corrupt(nil, 0, func(b []byte) {}, true),
			LaneBulk, reasonWrongLane, []string{"log"}},
		{"hello after set-up", corrupt(nil, 0, func(b []byte) { b[4] = byte(TypeHello) }, true),
			LaneControl, reasonWrongLane, []string{"hello"}},
		{"unknown flag", corrupt(nil, 0, func(b []byte) { b[5] = 0x80 }, true),
			LaneControl, reasonBadFlags, []string{"0x80"}},
		{"sequence gap", corrupt(nil, 5, func(b []byte) {}, true),
			LaneControl, reasonBadSeq, []string{"got 5, want 0"}},
		{"heartbeat with payload", corrupt([]byte("x"), 0, func(b []byte) { b[4] = byte(TypeHeartbeat) }, true),
			LaneControl, reasonBadPayload, []string{"no payload"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, n, err := parseFrame(tc.frame, maxPayload, tc.lane, 0, false)
			var fe *FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("got n=%d err=%v, want a FrameError", n, err)
			}
			if fe.Reason != tc.reason {
				t.Fatalf("reason %q, want %q (%v)", fe.Reason, tc.reason, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// A length bent to a larger value that is still below the maximum is caught
// as soon as the header is in, without waiting for a payload that will never
// come.
func TestCorruptLengthCaughtBeforePayload(t *testing.T) {
	b := appendFrame(nil, TypeLog, 0, 0, []byte("entry"))
	b[1] ^= 0x01 // length 5 becomes 261
	_, _, n, err := parseFrame(b, 1<<20, LaneControl, 0, false)
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Reason != reasonHeaderCheck {
		t.Fatalf("got n=%d err=%v, want a header check mismatch before the payload is complete", n, err)
	}
}

// The error for a CRC mismatch carries both values, and they are the real
// ones: the header's and the one computed over what arrived.
func TestCRCMismatchNamesBothValues(t *testing.T) {
	b := appendFrame(nil, TypeAck, 0, 0, []byte("ack!"))
	sent := binary.LittleEndian.Uint32(b[12:16])
	b[HeaderBytes+1] ^= 0x40
	_, _, _, err := parseFrame(b, 1024, LaneControl, 0, false)
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Reason != reasonCRC {
		t.Fatalf("got %v, want CRC mismatch", err)
	}
	if fe.GotCRC != sent {
		t.Errorf("GotCRC %#x, want the header's %#x", fe.GotCRC, sent)
	}
	if want := crcOf(b[:12], b[HeaderBytes:]); fe.WantCRC != want || want == sent {
		t.Errorf("WantCRC %#x, want %#x (≠ %#x)", fe.WantCRC, want, sent)
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add(appendFrame(nil, TypeLog, 0, 0, []byte("hello, replica")))
	f.Add(appendFrame(nil, TypeHeartbeat, 0, 0, nil))
	f.Add(appendFrame(appendFrame(nil, TypeAck, 0, 0, []byte{1}), TypeAck, 0, 1, []byte{2}))
	f.Add(appendFrame(nil, TypeCheckpoint, FlagFinal, 0, make([]byte, 300)))
	f.Add(corrupt([]byte("x"), 0, func(b []byte) { b[4] = 200 }, true))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, lane := range []Lane{LaneControl, LaneBulk} {
			// Decode a stream the way the reader does: frame after
			// frame until an error or an incomplete tail.
			rest, seq := b, uint32(0)
			for {
				h, p, n, err := parseFrame(rest, 512, lane, seq, false)
				if err != nil {
					var fe *FrameError
					if !errors.As(err, &fe) || fe.Error() == "" {
						t.Fatalf("error %v is not a described FrameError", err)
					}
					break
				}
				if n == 0 {
					break
				}
				if n != HeaderBytes+len(p) || n > len(rest) || uint32(len(p)) > 512 {
					t.Fatalf("n=%d payload %d bytes, input %d", n, len(p), len(rest))
				}
				// A frame that decodes re-encodes to the same bytes.
				if again := appendFrame(nil, h.typ, h.flags, h.seq, p); !bytes.Equal(again, rest[:n]) {
					t.Fatalf("re-encoding differs:\n got % x\nwant % x", again, rest[:n])
				}
				rest, seq = rest[n:], seq+1
			}
		}
	})
}
