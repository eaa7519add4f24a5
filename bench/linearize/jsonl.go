package linearize

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
)

// historyLineBytesMax bounds one line of a history file; an Op with 64-byte
// key and value takes about 300.
const historyLineBytesMax = 64 << 10

// WriteJSONL writes history as JSON Lines, one Op a line, so that a run's
// history can be kept next to its logs and checked again later.
func WriteJSONL(w io.Writer, history []Op) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for i := range history {
		if err := enc.Encode(&history[i]); err != nil {
			return fmt.Errorf("linearize: write history[%d]: %w", i, err)
		}
	}
	return bw.Flush()
}

// ReadJSONL reads a history WriteJSONL wrote.
func ReadJSONL(r io.Reader) ([]Op, error) {
	var ops []Op
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), historyLineBytesMax)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var op Op
		if err := json.Unmarshal(sc.Bytes(), &op); err != nil {
			return nil, fmt.Errorf("linearize: history line %d: %w (want one JSON object per line, as WriteJSONL writes)", line, err)
		}
		ops = append(ops, op)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("linearize: read history after %d operations: %w", len(ops), err)
	}
	return ops, nil
}
