package vmm

import (
	"io"
	"sync"
)

// consoleDevice writes the guest's text to a writer. Held console output
// is written when released, in release order.
type consoleDevice struct {
	noInput
	mu sync.Mutex // serialises writes from the vCPU thread and releasers
	w  io.Writer
}

func newConsole(w io.Writer) *consoleDevice {
	if w == nil {
		w = io.Discard
	}
	return &consoleDevice{w: w}
}

func (c *consoleDevice) check(*Exit) int32 { return StatusOK }

func (c *consoleDevice) deliver(_ uint32, _ uint64, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.w.Write(data)
	return err
}

const consoleStateVersion = 1

func (c *consoleDevice) saveState() ([]byte, error) {
	return stateWithVersion(consoleStateVersion, nil), nil
}

func (c *consoleDevice) restoreState(b []byte) error {
	_, err := stateBody("console", b, consoleStateVersion, 0)
	return err
}
