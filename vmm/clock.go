package vmm

import "time"

// clockDevice answers NOW with monotonic nanoseconds since the VM started.
// Its state is the guest time at the snapshot, so that a restored guest's
// clock goes on from there instead of jumping or running backwards.
type clockDevice struct {
	noOutput
	// start is the host monotonic time at which the guest clock read base.
	// Only the vCPU thread touches these.
	start time.Time
	base  uint64
}

func newClock() *clockDevice { return &clockDevice{start: time.Now()} }

func (c *clockDevice) now() uint64 { return c.base + uint64(time.Since(c.start)) }

func (c *clockDevice) input(*Exit) (Result, error) {
	return Result{Value: c.now()}, nil
}

const clockStateVersion = 1

func (c *clockDevice) saveState() ([]byte, error) {
	var b [8]byte
	le.PutUint64(b[:], c.now())
	return stateWithVersion(clockStateVersion, b[:]), nil
}

func (c *clockDevice) restoreState(b []byte) error {
	body, err := stateBody("clock", b, clockStateVersion, 8)
	if err != nil {
		return err
	}
	c.base = le.Uint64(body)
	c.start = time.Now()
	return nil
}
