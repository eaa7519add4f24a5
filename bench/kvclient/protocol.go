package kvclient

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ftvm/ftvm/bench/linearize"
)

// Limits of the kvstore protocol (vmm/guests/kvstore/kv.h).
const (
	KeyBytesMax   = 64
	ValueBytesMax = 64
	// replyBytesMax is a bound on a reply datagram: the server's own is 192
	// ("<id> VAL <version> <value>\n"); anything longer is not a reply.
	replyBytesMax = 512
)

// Request is one operation to send.
type Request struct {
	Kind  linearize.Kind
	Key   string
	Value string // PUT only
}

// Validate says what is wrong with r in the server's terms, or nil.
func (r Request) Validate() error {
	if err := checkChars("key", r.Key, KeyBytesMax, '!', '~'); err != nil {
		return err
	}
	switch r.Kind {
	case linearize.Put:
		return checkChars("value", r.Value, ValueBytesMax, ' ', '~')
	case linearize.Get, linearize.Inc:
		if r.Value != "" {
			return fmt.Errorf("kvclient: %s takes no value, got %q", r.Kind, r.Value)
		}
		return nil
	}
	return fmt.Errorf("kvclient: request kind %v is not PUT, GET or INC", r.Kind)
}

func checkChars(what, s string, max int, lo, hi byte) error {
	if len(s) == 0 || len(s) > max {
		return fmt.Errorf("kvclient: %s %q has %d bytes; the kvstore takes 1 to %d", what, s, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < lo || s[i] > hi {
			return fmt.Errorf("kvclient: %s %q has byte %#x at %d; the kvstore takes only %q..%q", what, s, s[i], i, lo, hi)
		}
	}
	return nil
}

// AppendRequest appends the datagram for request id to b. r must be valid.
func AppendRequest(b []byte, id uint64, r Request) []byte {
	b = strconv.AppendUint(b, id, 10)
	b = append(b, ' ')
	b = append(b, r.Kind.String()...)
	b = append(b, ' ')
	b = append(b, r.Key...)
	if r.Kind == linearize.Put {
		b = append(b, ' ')
		b = append(b, r.Value...)
	}
	return b
}

// ReplyKind is the word after the id in a reply.
type ReplyKind uint8

// Reply kinds.
const (
	ReplyOK   ReplyKind = iota + 1 // OK <version>
	ReplyVal                       // VAL <version> <value> (GET) or VAL <n> (INC)
	ReplyNone                      // NONE
	ReplyErr                       // ERR <reason>
)

// Reply is a parsed reply datagram.
type Reply struct {
	ID    uint64
	HasID bool // false for "? ERR <reason>", the answer to an unparsable id
	Kind  ReplyKind
	// Number is the version of OK and of a GET's VAL, or an INC's new value.
	Number uint64
	// Value is a GET's value; HasValue tells a GET's VAL from an INC's.
	Value    string
	HasValue bool
	Reason   string // ERR only
}

// errMalformedReply wraps every parse failure so callers can count them.
var errMalformedReply = errors.New("malformed reply")

// ParseReply parses one reply datagram; a trailing "\n" or "\r\n" is ignored.
func ParseReply(b []byte) (Reply, error) {
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	bad := func(why string) (Reply, error) {
		return Reply{}, fmt.Errorf("kvclient: %w %q: %s", errMalformedReply, s, why)
	}
	idText, rest, ok := strings.Cut(s, " ")
	if !ok {
		return bad("no space after the id")
	}
	var r Reply
	if idText != "?" {
		id, err := strconv.ParseUint(idText, 10, 64)
		if err != nil {
			return bad("the id is not a decimal number below 2^64")
		}
		r.ID, r.HasID = id, true
	}
	word, rest, _ := strings.Cut(rest, " ")
	number := func(text string) (uint64, bool) {
		n, err := strconv.ParseUint(text, 10, 64)
		return n, err == nil
	}
	switch word {
	case "OK":
		r.Kind = ReplyOK
		if r.Number, ok = number(rest); !ok {
			return bad("OK needs a version")
		}
	case "VAL":
		r.Kind = ReplyVal
		numText, value, hasValue := strings.Cut(rest, " ")
		if r.Number, ok = number(numText); !ok {
			return bad("VAL needs a number")
		}
		if hasValue && value == "" {
			return bad("VAL has an empty value")
		}
		r.Value, r.HasValue = value, hasValue
	case "NONE":
		r.Kind = ReplyNone
		if rest != "" {
			return bad("NONE takes nothing after it")
		}
	case "ERR":
		r.Kind = ReplyErr
		if rest == "" {
			return bad("ERR needs a reason")
		}
		r.Reason = rest
	default:
		return bad("unknown reply word " + strconv.Quote(word))
	}
	if !r.HasID && r.Kind != ReplyErr {
		return bad("only ERR may come without an id")
	}
	return r, nil
}

// record fills op's outcome from the reply r to it. It returns false when
// r is not a possible answer to op's kind (a server bug, or a reply to a
// different request that reused the id): op's outcome is then left Unknown.
func record(op *linearize.Op, r Reply) bool {
	switch {
	case r.Kind == ReplyErr:
		op.Outcome = linearize.Failed
	case op.Kind == linearize.Put && r.Kind == ReplyOK && r.Number > 0:
		op.Outcome, op.Version = linearize.OK, r.Number
	case op.Kind == linearize.Get && r.Kind == ReplyNone:
		op.Outcome, op.Found, op.Version, op.Value = linearize.OK, false, 0, ""
	case op.Kind == linearize.Get && r.Kind == ReplyVal && r.HasValue && r.Number > 0:
		op.Outcome, op.Found, op.Version, op.Value = linearize.OK, true, r.Number, r.Value
	case op.Kind == linearize.Inc && r.Kind == ReplyVal && !r.HasValue && r.Number > 0:
		op.Outcome, op.Version = linearize.OK, r.Number
	default:
		return false
	}
	return true
}
