package agent

import (
	"log/slog"
	"sync/atomic"
)

// diskQueueWrites bounds the block writes waiting for the disk writer; a
// full queue makes the loop wait, which stalls the protocol rather than
// memory.
const diskQueueWrites = 1024

// diskWriter performs block writes (a primary's releases, a secondary's
// persists) in order on a goroutine of its own, so that the loop never
// waits for a disk: each write is made durable (fdatasync) before the next,
// which takes longer than a round trip to the peer, and a burst of them
// (the persists a heartbeat releases) would hold back every
// acknowledgement behind it. A write still queued stays visible to the
// guest's reads (the VMM overlays a held write until its Release returns);
// a write that no exit holds (one a checkpoint carried) is not, so the
// loop drains the queue before anything reads the disk live: before a
// snapshot, a restore, and before a new primary's exits are served.
type diskWriter struct {
	q      chan diskJob
	log    *slog.Logger
	errors atomic.Uint64
}

type diskJob struct {
	write func() error
	what  string
	done  chan struct{} // a drain marker when set
}

func newDiskWriter(log *slog.Logger) *diskWriter {
	w := &diskWriter{q: make(chan diskJob, diskQueueWrites), log: log}
	go w.run()
	return w
}

func (w *diskWriter) run() {
	for j := range w.q {
		if j.done != nil {
			close(j.done)
			continue
		}
		if err := j.write(); err != nil {
			// The guest got its status when the write was held; the
			// disk's failure is the device's to report.
			w.errors.Add(1)
			w.log.Error("block write failed", "write", j.what, "err", err)
		}
	}
}

// enqueue queues a write behind every earlier one.
func (w *diskWriter) enqueue(what string, write func() error) {
	w.q <- diskJob{write: write, what: what}
}

// drain returns once every write queued before it is done.
func (w *diskWriter) drain() {
	done := make(chan struct{})
	w.q <- diskJob{done: done}
	<-done
}

// stop drains the queue and ends the goroutine.
func (w *diskWriter) stop() {
	w.drain()
	close(w.q)
}
