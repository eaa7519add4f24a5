package agent

import "github.com/ftvm/ftvm/vmm"

// guestClock keeps the clock the guest reads (vmm's clock device, one
// input per read) monotonic across hosts. Each host's device counts from
// the checkpoint it was restored from, so a secondary's clock lags the
// primary's by the time the checkpoint took to arrive; were it to serve
// its own clock after a take-over, the guest would see time go back by
// that much. So a live read is served as
//
//	max(local + offset, last + 1)
//
// where last is the highest value the guest has been given (served live
// here, or replayed from the primary's log), and offset, which only
// grows, is kept from the first read that needed it: the clock then runs
// on at this host's rate from where the guest last saw it.
//
// The zero value is a clock that has given nothing yet. Accessed under
// Agent.mu.
type guestClock struct {
	last   uint64 // the highest value the guest was given
	offset uint64 // added to this host's clock; only grows
	any    bool   // last is set
	// backwards counts logged values below last: a primary that broke
	// the rule (the replica follows the log regardless: it is what the
	// world saw).
	backwards uint64
}

// serve returns what the guest gets for a live read of local, this host's
// clock device.
func (c *guestClock) serve(local uint64) uint64 {
	v := local + c.offset
	if c.any && v <= c.last {
		c.offset += c.last + 1 - v
		v = c.last + 1
	}
	c.last, c.any = v, true
	return v
}

// replayed notes a value the guest got from the primary's log; it reports
// false when the value is below one the guest had already seen.
func (c *guestClock) replayed(v uint64) bool {
	if c.any && v < c.last {
		c.backwards++
		return false
	}
	c.last, c.any = v, true
	return true
}

// stamp makes a checkpoint carry the clock the guest sees here, not only
// this host's device: a replica restored from it reads on from there.
func (c *guestClock) stamp(s *vmm.Snapshot) {
	ns, ok := s.ClockNs()
	if !ok || !c.any {
		return
	}
	if want := max(ns+c.offset, c.last); want != ns {
		s.SetClockNs(want)
	}
}

// restored takes up the clock of a checkpoint restored into this host's
// VM: its device now reads on from the guest's clock, so no offset is
// needed, and the guest has seen nothing above it (a checkpoint vouches
// for outputs this replica never replayed the clock reads of).
func (c *guestClock) restored(s *vmm.Snapshot) {
	if ns, ok := s.ClockNs(); ok {
		c.restoredNs(ns)
	}
}

// restoredNs is restored for a checkpoint whose clock reads ns.
func (c *guestClock) restoredNs(ns uint64) {
	c.offset = 0
	if !c.any || ns > c.last {
		c.last, c.any = ns, true
	}
}
