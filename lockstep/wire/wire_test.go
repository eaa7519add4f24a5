package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
)

func sampleMsgs() []Msg {
	h := Header{Epoch: 7, Fence: 42}
	return []Msg{
		&Hello{Header: h, ProtocolVersion: ProtocolVersion, VMID: "vm-1", Role: RoleSecondary},
		&Entry{Header: h, Seq: 10, ExitIndex: 99, Kind: 3, Data: []byte("clock")},
		&Entry{Header: h, Seq: 11, ExitIndex: 100, Kind: 1, Data: []byte{}},
		&Output{Header: h, Seq: 12, ExitIndex: 101, Device: 2, Length: 4, Digest: [32]byte{1, 2, 3}},
		&Output{Header: h, Seq: 13, ExitIndex: 102, Device: 2, Length: 3, HasData: true, Data: []byte("abc")},
		&Ack{Header: h, Received: 13, Compared: 12, Replayed: 11},
		&Heartbeat{Header: h, LastSeq: 13, ReleasedThrough: 12},
		&ResyncRequest{Header: h, Reason: ResyncOutputMismatch, AtSeq: 12},
		&ResyncRequest{Header: h, Reason: ResyncInputMismatch, AtSeq: 14, Base: []byte("dirty pages and chunks")},
		&CheckpointChunk{Header: h, ID: 1, Seq: 13, Offset: 4096, Data: []byte("pages")},
		&CheckpointDone{Header: h, ID: 1, Seq: 13, Total: 8192, Digest: [32]byte{9}, Full: true, Restored: false},
		&CheckpointDone{Header: h, ID: 7, Seq: 40, Total: 512, Digest: [32]byte{3}, Part: false, Base: 5},
		&CheckpointDone{Header: h, ID: 5, Seq: 20, Total: 4096, Full: true, Part: true},
		&GoLive{Header: h, LastSeq: 13},
		&Fence{Header: h, RefusedEpoch: 6},
		&CheckpointAck{Header: h, ID: 5, Through: 4096, Kept: true},
		&CheckpointAck{Header: h, ID: 6, Through: 0, Missing: true},
	}
}

func TestRoundTrip(t *testing.T) {
	var stream []byte
	for _, m := range sampleMsgs() {
		stream = m.Append(stream)
	}
	for i, want := range sampleMsgs() {
		got, n, err := Parse(stream)
		if err != nil {
			t.Fatalf("message %d (%s): %v", i, want.Type(), err)
		}
		normalize(want)
		normalize(got)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("message %d: got %+v, want %+v", i, got, want)
		}
		stream = stream[n:]
	}
	if len(stream) != 0 {
		t.Fatalf("%d bytes left over", len(stream))
	}
}

// normalize makes empty and nil data compare equal.
func normalize(m Msg) {
	switch m := m.(type) {
	case *Entry:
		if len(m.Data) == 0 {
			m.Data = nil
		}
	case *Output:
		if len(m.Data) == 0 {
			m.Data = nil
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := (&Ack{Received: 1}).Append(nil)
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":     {nil, ErrShort},
		"truncated": {good[:len(good)-1], ErrShort},
		"version":   {patch(good, 0, 9), ErrVersion},
		"type":      {patch(good, 1, 200), ErrType},
		"crc":       {patch(good, 23, good[23]^1), ErrChecksum},
		"too large": {patch(good, 21, 0x7f), ErrTooLarge},
	}
	for name, c := range cases {
		_, _, err := Parse(c.b)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	// A body whose inner length lies is refused even with a valid CRC.
	e := (&Entry{Data: []byte("xyz")}).Append(nil)
	e = fixCRC(patch(e, HeaderBytes+18, 200))
	if _, _, err := Parse(e); !errors.Is(err, ErrMalformed) {
		t.Errorf("lying inner length: got %v, want ErrMalformed", err)
	}
}

// TestResyncBaseBound: a base of MaxResyncBaseBytes fits a frame and
// round-trips; one byte more is refused by Parse, naming the field.
func TestResyncBaseBound(t *testing.T) {
	m := &ResyncRequest{Reason: ResyncOutputMismatch, AtSeq: 1, Base: bytes.Repeat([]byte{7}, MaxResyncBaseBytes)}
	got, _, err := Parse(m.Append(nil))
	if err != nil {
		t.Fatalf("a base of MaxResyncBaseBytes: %v", err)
	}
	if r := got.(*ResyncRequest); !bytes.Equal(r.Base, m.Base) {
		t.Fatalf("base of %d bytes came back as %d", len(m.Base), len(r.Base))
	}
	m.Base = append(m.Base, 7)
	_, _, err = Parse(m.Append(nil))
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "base length") {
		t.Fatalf("a base over MaxResyncBaseBytes: got %v, want ErrMalformed naming the base", err)
	}
}

func patch(b []byte, i int, v byte) []byte {
	c := bytes.Clone(b)
	c[i] = v
	return c
}

func fixCRC(b []byte) []byte {
	n := len(b) - TrailerBytes
	return binary.LittleEndian.AppendUint32(bytes.Clone(b[:n]), crc32.Checksum(b[:n], castagnoli))
}

func FuzzParse(f *testing.F) {
	for _, m := range sampleMsgs() {
		f.Add(m.Append(nil))
	}
	f.Add([]byte{})
	f.Add(make([]byte, HeaderBytes+TrailerBytes))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := Parse(b)
		if err != nil {
			return
		}
		if n > len(b) || n > MaxFrameBytes {
			t.Fatalf("Parse used %d bytes of %d", n, len(b))
		}
		// A frame that parses re-encodes to the same bytes: one encoding per
		// message means no ambiguity between hosts.
		if again := m.Append(nil); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b[:n], again)
		}
	})
}
