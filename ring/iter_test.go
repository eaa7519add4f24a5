package ring

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// span builds a span in the documented layout from payloads, independently
// of the ring's own code.
func span(payloads ...string) []byte {
	var b []byte
	for _, p := range payloads {
		n := len(p)
		b = append(b, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
		b = append(b, p...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

func TestForEachRecordWalksAValidSpan(t *testing.T) {
	want := []string{"", "a", "abcd", "abcde", strings.Repeat("x", 300)}
	var got []string
	if err := ForEachRecord(span(want...), func(p []byte) error {
		if cap(p) != len(p) {
			t.Errorf("payload of %d bytes has capacity %d: appending would overwrite the next record", len(p), cap(p))
		}
		got = append(got, string(p))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("walked %q, want %q", got, want)
	}
	if err := ForEachRecord(nil, func([]byte) error { t.Error("called on an empty span"); return nil }); err != nil {
		t.Fatalf("empty span: %v", err)
	}
}

func TestForEachRecordRejectsMalformedSpans(t *testing.T) {
	good := span("hello", "world!")
	marker := append(span("ok"), 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0)
	dirtyPad := bytes.Clone(good)
	dirtyPad[10] = 1 // inside the padding after "hello"
	dirtyLastPad := bytes.Clone(good)
	dirtyLastPad[15] = 0x80 // the last padding byte after "hello"
	dirtyFirstPad := span("abc", "x")
	dirtyFirstPad[7] = 2 // the only padding byte after "abc"
	huge := append(span("ok"), 0xFE, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0)
	cases := []struct {
		name   string
		span   []byte
		offset int
		reason string
	}{
		{"truncated header", good[:len(good)-12], 16, "fewer than"},
		{"truncated record", good[:24], 16, "only 8 bytes are left"},
		{"record past the end", append(bytes.Clone(good[:16]), 9, 0, 0, 0, 'a', 'b', 'c', 'd'), 16, "payload of 9 bytes"},
		{"wrap marker", marker, 8, "wrap marker"},
		{"non-zero padding", dirtyPad, 0, "padding byte at span offset 10 is 0x1"},
		{"non-zero last padding byte", dirtyLastPad, 0, "padding byte at span offset 15 is 0x80"},
		{"non-zero single padding byte", dirtyFirstPad, 0, "padding byte at span offset 7 is 0x2"},
		{"length near 4 GiB", huge, 8, "payload of 4294967294 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			err := ForEachRecord(c.span, func([]byte) error { calls++; return nil })
			var me *MalformedError
			if !errors.Is(err, ErrMalformed) || !errors.As(err, &me) {
				t.Fatalf("got %v, want a MalformedError", err)
			}
			if me.OffsetBytes != c.offset || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("got %q at offset %d, want offset %d and %q", err, me.OffsetBytes, c.offset, c.reason)
			}
			if want := c.offset / 8; !strings.Contains(c.name, "padding") && calls > want+1 {
				t.Fatalf("fn was called %d times, past the bad record", calls)
			}
		})
	}
}

func TestForEachRecordStopsAtFnError(t *testing.T) {
	stop := errors.New("enough")
	calls := 0
	err := ForEachRecord(span("a", "b", "c"), func([]byte) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if err != stop || calls != 2 {
		t.Fatalf("got %v after %d calls, want fn's error after 2", err, calls)
	}
}

func TestForEachRecordAllocatesNothing(t *testing.T) {
	s := span("one", "two", "three")
	n := 0
	allocs := testing.AllocsPerRun(100, func() {
		if err := ForEachRecord(s, func(p []byte) error { n += len(p); return nil }); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("ForEachRecord allocates %v times per walk, want 0", allocs)
	}
}
