package tcpfallback

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestForEachRecordWalksRingLayout(t *testing.T) {
	var span []byte
	var want [][]byte
	for i := range 20 {
		p := bytes.Repeat([]byte{byte(i)}, i*3) // lengths 0, 3, 6, ...: every padding
		want = append(want, p)
		span = AppendRecord(span, p)
	}
	if len(span)%recordAlignBytes != 0 {
		t.Fatalf("span of %d bytes is not 8-aligned", len(span))
	}
	var got [][]byte
	if err := forEachRecord(span, 1<<20, func(p []byte) { got = append(got, p) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("walked %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: % x, want % x", i, got[i], want[i])
		}
		// Zero copy: the payload aliases the span.
		if len(got[i]) > 0 && &got[i][0] != &span[bytes.Index(span, want[i])] {
			t.Fatalf("record %d does not alias the span", i)
		}
	}
	// A span cut right after the last payload (padding missing) is accepted.
	cut := AppendRecord(nil, []byte("abc"))[:recordLenBytes+3]
	n := 0
	if err := forEachRecord(cut, 1<<20, func([]byte) { n++ }); err != nil || n != 1 {
		t.Fatalf("unpadded tail: n=%d err=%v", n, err)
	}
}

func TestForEachRecordRefusesMalformedSpans(t *testing.T) {
	good := AppendRecord(nil, []byte("first"))
	wrap := binary.LittleEndian.AppendUint32(append([]byte(nil), good...), recordWrapMarker)
	long := binary.LittleEndian.AppendUint32(append([]byte(nil), good...), 30)
	long = append(long, make([]byte, 10)...)
	huge := AppendRecord(append([]byte(nil), good...), make([]byte, 64))
	for _, tc := range []struct {
		name   string
		span   []byte
		offset int
		want   string
	}{
		{"wrap marker", wrap, len(good), "wrap marker"},
		{"length past end", long, len(good), "runs past the end"},
		{"trailing bytes", append(append([]byte(nil), good...), 1, 2), len(good), "too few for a length"},
		{"over peer maximum", huge, len(good), "exceeds the peer's maximum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := forEachRecord(tc.span, 32, func([]byte) { calls++ })
			var se *SpanError
			if !errors.As(err, &se) || se.Offset != tc.offset || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want SpanError at %d mentioning %q", err, tc.offset, tc.want)
			}
			if calls != 1 {
				t.Fatalf("%d records visited before the bad one, want 1", calls)
			}
		})
	}
}

func ExampleAppendRecord() {
	span := AppendRecord(nil, []byte("entry"))
	span = AppendRecord(span, []byte("another entry"))
	_ = forEachRecord(span, DefaultMaxPayloadBytes, func(p []byte) { fmt.Printf("%q\n", p) })
	// Output:
	// "entry"
	// "another entry"
}
