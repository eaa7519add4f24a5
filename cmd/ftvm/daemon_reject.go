package main

import (
	"sync"
	"time"
)

// rejectLogInterval: at most one WARN per refusal reason this often. A
// flood of bad connections (a scanner, a misconfigured host retrying)
// must not flood the log, but the first of each kind must show.
const rejectLogInterval = 5 * time.Second

// rejectLog rate-limits the log lines about refused connections, per
// reason (tcpfallback.RejectReason: a small fixed set, so the map is
// bounded by construction).
type rejectLog struct {
	mu      sync.Mutex
	every   time.Duration
	reasons map[string]*rejectCount
}

type rejectCount struct {
	logged     time.Time // when the last line for this reason was written
	suppressed int       // refusals since then that wrote no line
}

func newRejectLog(every time.Duration) *rejectLog {
	return &rejectLog{every: every, reasons: map[string]*rejectCount{}}
}

// note records one refusal at now; log says whether to write a line, and
// suppressed how many refusals for this reason went unlogged before it.
func (r *rejectLog) note(now time.Time, reason string) (log bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.reasons[reason]
	if c == nil {
		c = &rejectCount{}
		r.reasons[reason] = c
	}
	if !c.logged.IsZero() && now.Sub(c.logged) < r.every {
		c.suppressed++
		return false, 0
	}
	suppressed, c.suppressed, c.logged = c.suppressed, 0, now
	return true, suppressed
}
