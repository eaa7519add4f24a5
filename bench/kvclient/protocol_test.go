package kvclient

import (
	"strings"
	"testing"

	"github.com/ftvm/ftvm/bench/linearize"
)

func TestAppendRequest(t *testing.T) {
	cases := []struct {
		r    Request
		want string
	}{
		{Request{Kind: linearize.Put, Key: "k1", Value: "hello world"}, "7 PUT k1 hello world"},
		{Request{Kind: linearize.Get, Key: "k1"}, "7 GET k1"},
		{Request{Kind: linearize.Inc, Key: "c"}, "7 INC c"},
	}
	for _, tc := range cases {
		if err := tc.r.Validate(); err != nil {
			t.Fatalf("%+v: %v", tc.r, err)
		}
		if got := string(AppendRequest(nil, 7, tc.r)); got != tc.want {
			t.Errorf("AppendRequest(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}

func TestInvalidRequestsNameTheProblem(t *testing.T) {
	cases := []struct {
		r    Request
		want string
	}{
		{Request{Kind: linearize.Get, Key: ""}, "key"},
		{Request{Kind: linearize.Get, Key: "a b"}, "byte 0x20"},
		{Request{Kind: linearize.Get, Key: strings.Repeat("k", KeyBytesMax+1)}, "1 to 64"},
		{Request{Kind: linearize.Put, Key: "k", Value: ""}, "value"},
		{Request{Kind: linearize.Put, Key: "k", Value: "x\ny"}, "byte 0xa"},
		{Request{Kind: linearize.Put, Key: "k", Value: strings.Repeat("v", ValueBytesMax+1)}, "1 to 64"},
		{Request{Kind: linearize.Inc, Key: "k", Value: "1"}, "takes no value"},
		{Request{Key: "k"}, "not PUT, GET or INC"},
	}
	for _, tc := range cases {
		err := tc.r.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error mentioning %q", tc.r, err, tc.want)
		}
	}
}

func TestParseReply(t *testing.T) {
	cases := []struct {
		in   string
		want Reply
	}{
		{"5 OK 3\n", Reply{ID: 5, HasID: true, Kind: ReplyOK, Number: 3}},
		{"5 VAL 3 hello world\n", Reply{ID: 5, HasID: true, Kind: ReplyVal, Number: 3, Value: "hello world", HasValue: true}},
		{"5 VAL 3  \n", Reply{ID: 5, HasID: true, Kind: ReplyVal, Number: 3, Value: " ", HasValue: true}},
		{"5 VAL 42", Reply{ID: 5, HasID: true, Kind: ReplyVal, Number: 42}},
		{"5 NONE\r\n", Reply{ID: 5, HasID: true, Kind: ReplyNone}},
		{"5 ERR walfull\n", Reply{ID: 5, HasID: true, Kind: ReplyErr, Reason: "walfull"}},
		{"? ERR badid\n", Reply{Kind: ReplyErr, Reason: "badid"}},
		{"18446744073709551615 OK 1", Reply{ID: 1<<64 - 1, HasID: true, Kind: ReplyOK, Number: 1}},
	}
	for _, tc := range cases {
		got, err := ParseReply([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("ParseReply(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "5", "5 OK", "5 OK x", "x OK 1", "5 VAL", "5 VAL 3 ", "5 NONE 1", "5 ERR", "5 MAYBE 1", "? OK 1", "18446744073709551616 OK 1"} {
		if r, err := ParseReply([]byte(bad)); err == nil {
			t.Errorf("ParseReply(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestRecordRejectsRepliesOfTheWrongKind(t *testing.T) {
	cases := []struct {
		kind linearize.Kind
		r    Reply
		ok   bool
	}{
		{linearize.Put, Reply{Kind: ReplyOK, Number: 1}, true},
		{linearize.Put, Reply{Kind: ReplyVal, Number: 1}, false},
		{linearize.Put, Reply{Kind: ReplyOK, Number: 0}, false},
		{linearize.Get, Reply{Kind: ReplyVal, Number: 2, Value: "v", HasValue: true}, true},
		{linearize.Get, Reply{Kind: ReplyVal, Number: 2}, false},
		{linearize.Get, Reply{Kind: ReplyNone}, true},
		{linearize.Inc, Reply{Kind: ReplyVal, Number: 2}, true},
		{linearize.Inc, Reply{Kind: ReplyVal, Number: 2, Value: "v", HasValue: true}, false},
		{linearize.Inc, Reply{Kind: ReplyErr, Reason: "notnum"}, true},
	}
	for _, tc := range cases {
		op := linearize.Op{Kind: tc.kind}
		if got := record(&op, tc.r); got != tc.ok {
			t.Errorf("record(%v, %+v) = %v, want %v", tc.kind, tc.r, got, tc.ok)
		}
		if !tc.ok && op.Outcome != linearize.Unknown {
			t.Errorf("record(%v, %+v) set outcome %v on a reply it refused", tc.kind, tc.r, op.Outcome)
		}
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"5 OK 3\n", "5 VAL 3 a b", "? ERR x", "5 NONE"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReply(b)
		if err != nil {
			return
		}
		if r.Kind < ReplyOK || r.Kind > ReplyErr {
			t.Fatalf("ParseReply(%q) accepted with kind %d", b, r.Kind)
		}
	})
}
