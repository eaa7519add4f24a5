package ring

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// FuzzRecords drives a Records ring with a random script of reserve, trim,
// commit, peek and release steps and checks it against a plain queue of
// byte slices. Under plain go test it runs its seed corpus; run
// `go test -fuzz FuzzRecords ./ring/` to search further.
func FuzzRecords(f *testing.F) {
	f.Add(uint8(0), []byte{0, 5, 1, 0, 2, 0})
	f.Add(uint8(1), []byte{0, 60, 0, 60, 1, 0, 3, 1, 0, 40, 1, 0, 2, 0, 0, 61, 1, 0, 2, 0})
	f.Add(uint8(2), []byte{0, 10, 0, 20, 0, 30, 4, 3, 1, 0, 3, 2, 0, 100, 1, 0, 2, 0, 0, 126, 0, 1, 1, 0, 2, 0})
	f.Add(uint8(0), bytes.Repeat([]byte{0, 13, 1, 0, 3, 1}, 40))
	f.Add(uint8(1), bytes.Repeat([]byte{0, 7, 0, 33, 1, 1, 2, 0, 0, 59, 4, 17, 1, 0, 3, 0}, 30))
	f.Fuzz(func(t *testing.T, ringShift uint8, script []byte) {
		if err := runRecordsScript(ringShift, script, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// TestFuzzCheckerCatchesPlantedBugs proves the model check can fail: a ring
// whose committed bytes get corrupted, or whose record goes missing, is
// caught.
func TestFuzzCheckerCatchesPlantedBugs(t *testing.T) {
	script := bytes.Repeat([]byte{0, 13, 0, 21, 1, 0, 3, 1, 2, 0}, 10)
	if err := runRecordsScript(1, script, nil); err != nil {
		t.Fatalf("the clean run fails: %v", err)
	}
	flipPayload := func(r *Records) { r.buf[(r.prodTail-8)&r.mask] ^= 0x5A }
	if err := runRecordsScript(1, script, flipPayload); err == nil {
		t.Error("a flipped byte in a committed record went unnoticed")
	}
	dropRecord := func(r *Records) {
		// Pretend one more 8-byte record was released than was.
		if r.tail.Load()-r.consHead >= 16 && r.peekLen == 0 {
			r.consHead += 8
			r.tailSeen = r.consHead
			r.head.Store(r.consHead)
		}
	}
	if err := runRecordsScript(1, bytes.Repeat([]byte{0, 4, 0, 4, 1, 0, 2, 0}, 10), dropRecord); err == nil {
		t.Error("a lost record went unnoticed")
	}
}

// runRecordsScript plays script, two bytes per step (operation, argument),
// on a ring of 64<<(ringShift%3) bytes and compares everything the consumer
// sees with a reference queue. afterCommit, if set, runs after every commit
// (tests use it to plant bugs).
func runRecordsScript(ringShift uint8, script []byte, afterCommit func(*Records)) error {
	r, err := NewRecords(64<<(ringShift%3), Park)
	if err != nil {
		return err
	}
	var pending, committed [][]byte // the reference queue
	seq := uint64(0)
	consume := func(maxRecords int) error {
		span, err := r.TryPeek()
		if err == ErrEmpty {
			if len(committed) != 0 {
				return fmt.Errorf("TryPeek: ErrEmpty with %d records committed", len(committed))
			}
			return nil
		}
		if err != nil {
			return err
		}
		n, released := 0, 0
		err = ForEachRecord(span, func(p []byte) error {
			if n == maxRecords {
				return errStop
			}
			if len(committed) == 0 {
				return fmt.Errorf("record % x seen, but none is committed", p)
			}
			if !bytes.Equal(p, committed[0]) {
				return fmt.Errorf("record\n got % x\nwant % x", p, committed[0])
			}
			committed = committed[1:]
			n++
			released += RecordBytes(len(p))
			return nil
		})
		if err != nil && err != errStop {
			return err
		}
		if n == 0 && maxRecords > 0 {
			return errors.New("TryPeek returned a span without a record")
		}
		return r.Release(released)
	}
	for i := 0; i+1 < len(script); i += 2 {
		op, arg := script[i]%5, int(script[i+1])
		switch op {
		case 0: // reserve
			n := arg % (r.MaxPayload() + 8)
			p, err := r.TryReserve(n)
			switch {
			case n > r.MaxPayload():
				if !errors.Is(err, ErrTooLarge) {
					return fmt.Errorf("Reserve(%d) beyond MaxPayload %d: %v, want ErrTooLarge", n, r.MaxPayload(), err)
				}
			case err == ErrFull:
				if len(pending) == 0 && len(committed) == 0 {
					return fmt.Errorf("Reserve(%d) on an empty ring: ErrFull", n)
				}
			case err != nil:
				return err
			default:
				fillPayload(p, seq)
				pending = append(pending, payloadFor(seq, n))
				seq++
			}
		case 1: // commit
			r.Commit()
			committed = append(committed, pending...)
			pending = pending[:0]
			if afterCommit != nil {
				afterCommit(r)
			}
		case 2: // consume everything visible
			if err := consume(-1); err != nil {
				return err
			}
		case 3: // consume a few records
			if err := consume(arg % 4); err != nil {
				return err
			}
		case 4: // trim the last reservation
			if len(pending) == 0 {
				if r.Trim(0) == nil {
					return errors.New("Trim succeeded with nothing reserved")
				}
				continue
			}
			last := &pending[len(pending)-1]
			k := arg % (len(*last) + 1)
			if err := r.Trim(k); err != nil {
				return err
			}
			*last = (*last)[:k]
		}
		used := 0
		for _, p := range committed {
			used += RecordBytes(len(p))
		}
		if r.Len() < used || r.Len() > r.Cap() {
			return fmt.Errorf("Len %d with %d bytes of records committed in a %d-byte ring", r.Len(), used, r.Cap())
		}
	}
	r.Commit()
	committed = append(committed, pending...)
	for len(committed) > 0 {
		before := len(committed)
		if err := consume(-1); err != nil {
			return err
		}
		if len(committed) == before {
			return fmt.Errorf("%d committed records never came out", before)
		}
	}
	if _, err := r.TryPeek(); err != ErrEmpty {
		return fmt.Errorf("drained ring: TryPeek = %v, want ErrEmpty", err)
	}
	return nil
}
