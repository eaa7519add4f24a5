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

// ClockNs returns the guest clock the snapshot carries: what the clock
// device would answer at once on a VM restored from it. ok is false when
// the snapshot has no clock state (a live snapshot has no devices).
func (s *Snapshot) ClockNs() (ns uint64, ok bool) {
	for _, d := range s.Devices {
		if d.Device != DeviceClock {
			continue
		}
		body, err := stateBody("clock", d.State, clockStateVersion, 8)
		if err != nil {
			return 0, false
		}
		return le.Uint64(body), true
	}
	return 0, false
}

// SetClockNs makes a VM restored from the snapshot read its clock on from
// ns. It reports false, changing nothing, when the snapshot has no clock
// state. The agent uses it to carry a guest clock it keeps above the
// device's own across hosts (agent/clock.go).
func (s *Snapshot) SetClockNs(ns uint64) bool {
	for i, d := range s.Devices {
		if d.Device != DeviceClock {
			continue
		}
		if _, err := stateBody("clock", d.State, clockStateVersion, 8); err != nil {
			return false
		}
		var b [8]byte
		le.PutUint64(b[:], ns)
		s.Devices[i].State = stateWithVersion(clockStateVersion, b[:])
		return true
	}
	return false
}
