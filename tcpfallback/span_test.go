package tcpfallback

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/ftvm/ftvm/ring"
)

func TestAppendRecordMatchesRingLayout(t *testing.T) {
	var span []byte
	var want [][]byte
	for i := range 20 {
		p := bytes.Repeat([]byte{byte(i)}, i*3) // lengths 0, 3, 6, ...: every padding
		want = append(want, p)
		span = AppendRecord(span, p)
	}
	var got [][]byte
	if err := ring.ForEachRecord(span, func(p []byte) error { got = append(got, p); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("walked %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: % x, want % x", i, got[i], want[i])
		}
	}
	if n, err := checkSpan(span, 1<<20); n != len(want) || err != nil {
		t.Fatalf("checkSpan: %d records, %v", n, err)
	}
}

func TestCheckSpanRefusesWhatCannotBeSent(t *testing.T) {
	good := AppendRecord(nil, []byte("first"))
	wrap := binary.LittleEndian.AppendUint32(append([]byte(nil), good...), ring.WrapMarker)
	wrap = append(wrap, 0, 0, 0, 0)
	if _, err := checkSpan(wrap, 1<<20); !errors.Is(err, ring.ErrMalformed) {
		t.Fatalf("span with a wrap marker: %v, want ring.ErrMalformed", err)
	}
	huge := AppendRecord(append([]byte(nil), good...), make([]byte, 64))
	_, err := checkSpan(huge, 32)
	var se *SpanError
	if !errors.As(err, &se) || se.Offset != len(good) {
		t.Fatalf("oversized record: %v, want SpanError at offset %d", err, len(good))
	}
	mustContain(t, err, "64 bytes", "maximum frame payload 32")
}

// Records produced by a real byte ring go out as frames, one per record,
// payloads intact, and the ring span is released after the send.
func TestSendSpanFromRing(t *testing.T) {
	d, _, _, ls := pair(t, nil)
	r, err := ring.NewRecords(1<<16, ring.Park)
	if err != nil {
		t.Fatal(err)
	}
	const total = 1000
	go func() {
		for i := range total {
			p := payloadFor(i)
			buf, err := r.Reserve(len(p))
			if err != nil {
				t.Error(err)
				return
			}
			copy(buf, p)
			r.Commit()
		}
		r.Close()
	}()
	sent := 0
	for {
		span, err := r.Peek()
		if errors.Is(err, ring.ErrClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n, err := d.SendSpan(TypeLog, span)
		if err != nil {
			t.Fatal(err)
		}
		sent += n
		if err := r.Release(len(span)); err != nil {
			t.Fatal(err)
		}
	}
	if sent != total {
		t.Fatalf("sent %d frames, want %d", sent, total)
	}
	for i, f := range ls.waitN(t, total) {
		if !bytes.Equal(f.Payload, payloadFor(i)) {
			t.Fatalf("frame %d: %q", i, f.Payload)
		}
	}
}

func ExampleAppendRecord() {
	span := AppendRecord(nil, []byte("entry"))
	span = AppendRecord(span, []byte("another entry"))
	_ = ring.ForEachRecord(span, func(p []byte) error { fmt.Printf("%q\n", p); return nil })
	// Output:
	// "entry"
	// "another entry"
}
