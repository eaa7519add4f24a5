package linearize

import (
	"fmt"
	"strconv"
	"time"
)

// Kind is the request an operation made.
type Kind uint8

// The kvstore requests.
const (
	Put Kind = iota + 1 // "<id> PUT <key> <value>"
	Get                 // "<id> GET <key>"
	Inc                 // "<id> INC <key>"
)

func (k Kind) String() string {
	switch k {
	case Put:
		return "PUT"
	case Get:
		return "GET"
	case Inc:
		return "INC"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Outcome says what the client learned about an operation.
type Outcome uint8

// Outcomes.
const (
	// Unknown: no reply arrived after every attempt (timed out, or still in
	// flight when the history ended). The operation may have been applied,
	// up to Attempts times.
	Unknown Outcome = iota
	// OK: the server answered with a result (OK, VAL or NONE).
	OK
	// Failed: the server answered ERR. The answered attempt was not applied;
	// earlier attempts whose replies were lost may have been.
	Failed
)

func (o Outcome) String() string {
	switch o {
	case Unknown:
		return "unknown"
	case OK:
		return "ok"
	case Failed:
		return "failed"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Op is one operation of a history: a request with a client-chosen id, sent
// up to Attempts times with that same id, and what came back.
type Op struct {
	ID   uint64
	Kind Kind
	Key  string
	// Value is what a PUT wrote, or what an OK GET read (empty for NONE).
	Value string
	// Invoke is when the client first sent the request, Complete when it
	// received the reply it recorded (meaningful only when Outcome is not
	// Unknown). Both are nanoseconds on one monotonic clock, any origin.
	Invoke, Complete int64
	Outcome          Outcome
	// Found: an OK GET got "VAL" (true) or "NONE" (false).
	Found bool
	// Version: for an OK PUT the version it created, for an OK GET that
	// found the key the version it read, for an OK INC the counter's new
	// value.
	Version uint64
	// Attempts is how many times the request was sent (1 without retries).
	Attempts int
	// Reply is the raw reply line, kept for error messages.
	Reply string
}

func (op *Op) String() string {
	s := fmt.Sprintf("#%d %s %q", op.ID, op.Kind, op.Key)
	if op.Kind == Put {
		s += fmt.Sprintf(" %q", op.Value)
	}
	switch op.Outcome {
	case Unknown:
		s += " -> (no reply)"
	case Failed:
		s += fmt.Sprintf(" -> %q", op.Reply)
	default:
		switch {
		case op.Kind == Put:
			s += fmt.Sprintf(" -> OK version %d", op.Version)
		case op.Kind == Inc:
			s += fmt.Sprintf(" -> VAL %d", op.Version)
		case op.Found:
			s += fmt.Sprintf(" -> VAL version %d %q", op.Version, op.Value)
		default:
			s += " -> NONE"
		}
	}
	if op.Attempts > 1 {
		s += fmt.Sprintf(" (%d attempts)", op.Attempts)
	}
	if op.Outcome == Unknown {
		return s + fmt.Sprintf(" [invoked %s]", fmtNs(op.Invoke))
	}
	return s + fmt.Sprintf(" [%s..%s]", fmtNs(op.Invoke), fmtNs(op.Complete))
}

func fmtNs(ns int64) string { return time.Duration(ns).String() }
