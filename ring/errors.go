package ring

import (
	"errors"
	"fmt"
)

// Errors returned by the rings. They are sentinel values, so the hot paths
// that return them allocate nothing; compare with errors.Is.
var (
	// ErrFull: a Try call on the producer side found no room.
	ErrFull = errors.New("ring: full")
	// ErrEmpty: a Try call on the consumer side found nothing to read.
	ErrEmpty = errors.New("ring: empty")
	// ErrClosed: the ring was closed. The producer gets it at once; the
	// consumer gets it only after it has drained what was committed.
	ErrClosed = errors.New("ring: closed")
	// ErrTooLarge: a record does not fit in the ring (see TooLargeError).
	ErrTooLarge = errors.New("ring: record too large")
	// ErrMalformed: a span of records does not follow the layout in doc.go
	// (see MalformedError).
	ErrMalformed = errors.New("ring: malformed record span")
)

// TooLargeError says how large a record was asked for and how large one may
// be in this ring. errors.Is(err, ErrTooLarge) holds.
type TooLargeError struct {
	PayloadBytes    int // what Reserve was asked for
	MaxPayloadBytes int // the largest payload this ring accepts
	RingBytes       int // the ring's capacity
}

func (e *TooLargeError) Error() string {
	fix := "split the record"
	if largest := MaxRecordsBytes/2 - RecordHeaderBytes; e.PayloadBytes <= largest {
		fix += fmt.Sprintf(" or create the ring with at least %d bytes", minRingBytesFor(e.PayloadBytes))
	} else {
		fix += fmt.Sprintf(" (even the largest ring takes at most %d payload bytes)", largest)
	}
	return fmt.Sprintf("ring: record payload of %d bytes is too large: a ring of %d bytes takes at most %d payload bytes per record (half the ring less the 4-byte header); %s",
		e.PayloadBytes, e.RingBytes, e.MaxPayloadBytes, fix)
}

func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// MalformedError says where a span of records broke the layout and how.
// errors.Is(err, ErrMalformed) holds.
type MalformedError struct {
	OffsetBytes int    // offset in the span of the offending record header
	Reason      string // what was wrong there
}

func (e *MalformedError) Error() string {
	return fmt.Sprintf("ring: malformed record span at byte offset %d: %s (spans must hold whole records as laid out in the ring package documentation)", e.OffsetBytes, e.Reason)
}

func (e *MalformedError) Is(target error) bool { return target == ErrMalformed }

// capacityError explains a capacity that a constructor cannot use.
func capacityError(what string, got, min, max int) error {
	return fmt.Errorf("ring: %s capacity %d is not usable: it must be a power of two between %d and %d (for example %d)",
		what, got, min, max, nextPowerOfTwo(got, min, max))
}

func nextPowerOfTwo(n, min, max int) int {
	p := min
	for p < n && p < max {
		p <<= 1
	}
	return p
}

func isPowerOfTwo(n int) bool { return n > 0 && n&(n-1) == 0 }
