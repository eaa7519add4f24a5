package agent

import (
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/vmm"
)

// diskQueueWrites bounds the jobs waiting for the disk writer; a full
// queue makes whoever releases wait, which stalls the protocol rather than
// memory.
const diskQueueWrites = 1024

// Retries of a block write that failed: the first after
// diskRetryMinInterval, doubling up to diskRetryMaxInterval, until it
// succeeds or the agent stops. While a write fails the VM is paused and an
// ERROR is logged every diskFailureLogInterval.
const (
	diskRetryMinInterval   = 10 * time.Millisecond
	diskRetryMaxInterval   = time.Second
	diskFailureLogInterval = 10 * time.Second
)

// diskWriter performs block writes (a primary's releases, a secondary's
// persists) in order on a goroutine of its own, so that the loop never
// waits for a disk: each of a primary's writes is made durable (fdatasync)
// before the next, which takes longer than a round trip to the peer, and
// a burst of them (the persists a heartbeat releases) would hold back
// every acknowledgement behind it. A secondary's writes (lazy: the
// agent's persists) need no sync each: the writer takes every one queued
// at the moment, writes them, syncs the disk once, then reports each
// durable in order (batch; agent/doc.go says why that is safe). Any
// other job (a release, a drain, a primary's write) ends a batch. A write still queued stays visible to the
// guest's reads (the VMM overlays a held write until its Release
// succeeds); a write that no exit holds (one a checkpoint carried) is
// not, so the loop drains the queue before anything reads the disk live:
// before a restore, before a new primary's exits are served, and before a
// snapshot when such a write is queued (else the snapshot saves the
// queued writes, which the VMM holds, as performed: queuedWrites).
//
// An output released after a block write must not leave before that
// write is durable: a kvstore's reply to a PUT acknowledges the WAL record
// the write carries. So while any job is queued, every later release
// (after) goes through the queue too and is performed only once the writes
// before it succeeded; when the queue is empty it is performed at once.
//
// A write that fails (a full disk: ENOSPC; an I/O error) is never given
// up and never skipped: the writer retries it with backoff, and
// everything queued behind it waits. failing says so, and onChange (which
// the agent uses to pause the VM) is called when it starts and stops, so
// that the guest makes no further progress on a disk that cannot keep
// what it writes, and resumes by itself when the write succeeds (space
// was freed). Only stop gives up: then the abandoned write and all later
// jobs are dropped unperformed, so that no output acknowledging them
// leaves. Or leaving: a write that has failed for leaveAfter, while
// mayLeave says this host is a secondary, is given up the same way and
// left is set, so that the secondary leaves the pair (Agent.followDisk)
// rather than stall the primary behind its paused VM.
type diskWriter struct {
	q        chan diskJob
	log      *slog.Logger
	onChange func() // failing changed; called on the writer goroutine
	// onDurable reports that the output at a log position is done: a
	// write durable, a release performed. Called in queue order, never
	// for a job that failed or was dropped.
	onDurable func(seq uint64)

	// quit is closed by abort: a failing write is given up, a blocked
	// enqueue returns.
	quit      chan struct{}
	abortOnce sync.Once

	queued  atomic.Int64  // jobs enqueued and not yet finished
	batches atomic.Uint64 // batches of a secondary's writes synced together
	batched atomic.Uint64 // writes those batches made durable
	errors  atomic.Uint64 // failed write attempts
	failing atomic.Bool   // a write is failing and being retried
	fenced  atomic.Bool   // a write was refused by the disk's fence: this host is stale
	lastErr atomic.Value  // string: the last write error, "" once one succeeds
	dropped atomic.Uint64 // jobs not performed because the agent stopped
	// given: a write was abandoned (aborted while failing, or dropped by
	// a stopping enqueue); every later job is dropped too.
	given    atomic.Bool
	finished chan struct{} // closed when run returns

	// leaveAfter, if positive, is how long a write may fail on a host
	// that mayLeave says should leave the pair (a secondary) before it is
	// given up; left then says so, and leftErr is that write's error.
	// Set before the first job.
	leaveAfter time.Duration
	mayLeave   func() bool
	left       atomic.Bool
	leftErr    atomic.Value // string

	// gate, if set, is asked before every job is performed (Config.Lease's
	// Check): once it fails, that job and every later one are dropped
	// unperformed and gated is set. Set before the first job.
	gate  func() error
	gated atomic.Bool

	// writes are the block writes queued and not yet finished, in queue
	// order: the VMM's held output of each, nil for one no VM holds (a
	// write a checkpoint carried). wmu guards it; the writer pops its
	// head as each write finishes.
	wmu    sync.Mutex
	writes []*vmm.Output
}

// mayPerform asks the gate whether a job may be performed now; once it
// refuses, the writer gives up like a fenced one.
func (w *diskWriter) mayPerform(what string) bool {
	if w.gate == nil {
		return true
	}
	err := w.gate()
	if err == nil {
		return true
	}
	if !w.gated.Swap(true) {
		w.log.Error("output not performed: the arbiter's lease is lost; it and every output after it are dropped", "output", what, "err", err)
	}
	w.given.Store(true)
	w.dropped.Add(1)
	w.changed()
	return false
}

type diskJob struct {
	write func() error // a block write: retried until it succeeds
	lazy  *lazyWrite   // set for a secondary's write: it may join a batch
	after func() error // a release that waits for the writes before it
	what  string
	seq   uint64        // the output's log position, for onDurable
	done  chan struct{} // a drain marker when set
}

// lazyWrite is a block write a secondary persists, which the writer may
// make durable together with the writes queued beside it (batch). Its
// job's write stays the way to perform it durably on its own: after a
// failure, and for a write the batch did not finish.
type lazyWrite struct {
	write  func() error // writes without making durable; the VMM still holds it
	sync   func() error // makes every write before it on the disk durable
	commit func()       // after the sync: the write is durable (nil: nothing to do)
}

// diskBatchMax bounds the writes a batch takes, so that the first one's
// report waits for no more than a queue's worth.
const diskBatchMax = diskQueueWrites

func newDiskWriter(log *slog.Logger, onChange func(), onDurable func(seq uint64)) *diskWriter {
	w := &diskWriter{q: make(chan diskJob, diskQueueWrites), log: log, onChange: onChange, onDurable: onDurable,
		quit: make(chan struct{}), finished: make(chan struct{})}
	w.lastErr.Store("")
	go w.run()
	return w
}

func (w *diskWriter) run() {
	defer close(w.finished)
	// next holds jobs a batch took from the queue and did not perform:
	// they come before anything still in the queue.
	var next []diskJob
	for {
		var j diskJob
		if len(next) > 0 {
			j, next = next[0], next[1:]
		} else {
			var ok bool
			if j, ok = <-w.q; !ok {
				return
			}
		}
		if j.lazy != nil && !w.given.Load() {
			next = w.batch(w.gather(j, next))
			continue
		}
		w.perform(j)
	}
}

// perform does one job as it comes: a write durably, on its own.
func (w *diskWriter) perform(j diskJob) {
	if j.done != nil {
		w.queued.Add(-1) // before the drainer goes on: it may release at once
		close(j.done)
		return
	}
	switch {
	case w.given.Load():
		w.dropped.Add(1)
		if j.write != nil {
			w.popWrite()
		}
	case !w.mayPerform(j.what):
		if j.write != nil {
			w.popWrite()
		}
	case j.write != nil:
		ok := w.writeDurably(j, nil)
		w.popWrite()
		if ok {
			w.durable(j.seq)
		}
	case j.after != nil:
		// The output's own backend error is its device's to report,
		// as for a release performed at once.
		j.after()
		w.durable(j.seq)
	}
	w.queued.Add(-1)
}

// gather returns first and the lazy writes queued right behind it at this
// moment (from next, else from the queue, without waiting), at most
// diskBatchMax of them; the second return holds what must be done after
// them, in order: the job that ended the batch and the rest of next.
func (w *diskWriter) gather(first diskJob, next []diskJob) ([]diskJob, []diskJob) {
	batch := []diskJob{first}
	for len(next) > 0 && next[0].lazy != nil && len(batch) < diskBatchMax {
		batch, next = append(batch, next[0]), next[1:]
	}
	if len(next) > 0 {
		return batch, next
	}
	for len(batch) < diskBatchMax {
		select {
		case j, ok := <-w.q:
			if !ok {
				// Closed by stop, which queued a drain marker first:
				// never reached while a batch is open.
				return batch, nil
			}
			if j.lazy == nil {
				return batch, []diskJob{j}
			}
			batch = append(batch, j)
		default:
			return batch, nil
		}
	}
	return batch, nil
}

// batch performs a run of a secondary's writes (lazy) with one sync:
// each is written without one, in order, until one fails or the gate
// refuses; then the disk is synced once and the written ones reported
// durable, in order. A write that failed is then retried as perform
// retries one, with everything behind it waiting; if the sync fails,
// each written one is performed again, durably. It returns the jobs
// still to do, in order (then) behind what it did not perform.
func (w *diskWriter) batch(jobs []diskJob, then []diskJob) []diskJob {
	written := 0
	var failed error
	refused := false
	for _, j := range jobs {
		if w.given.Load() || (w.gate != nil && w.gate() != nil) {
			refused = true // perform drops it and logs why
			break
		}
		if failed = j.lazy.write(); failed != nil {
			break
		}
		written++
	}
	if written > 0 {
		w.batches.Add(1)
		if err := jobs[written-1].lazy.sync(); err != nil {
			// The writes are in the file but perhaps not on the device,
			// and a failed fdatasync may have dropped them: each still
			// held one is written again and made durable on its own.
			w.errors.Add(1)
			w.log.Warn("making a batch of block writes durable failed: writing each again with its own fdatasync",
				"writes", written, "first", jobs[0].what, "err", err)
			for _, j := range jobs[:written] {
				w.perform(j)
			}
		} else {
			w.batched.Add(uint64(written))
			for _, j := range jobs[:written] {
				if j.lazy.commit != nil {
					j.lazy.commit()
				}
				w.popWrite()
				w.durable(j.seq)
				w.queued.Add(-1)
			}
		}
	}
	rest := jobs[written:]
	switch {
	case refused:
		w.perform(rest[0])
		rest = rest[1:]
	case failed != nil:
		// Retried (with its first error) before anything behind it.
		j := rest[0]
		rest = rest[1:]
		ok := w.writeDurably(j, failed)
		w.popWrite()
		if ok {
			w.durable(j.seq)
		}
		w.queued.Add(-1)
	}
	return append(rest, then...)
}

// writeDurably performs one write, retrying it with backoff until it
// succeeds (true) or the writer is aborted (false). first, if set, is the
// error of an attempt already made (a batch's write without a sync).
func (w *diskWriter) writeDurably(j diskJob, first error) bool {
	wait := diskRetryMinInterval
	var firstFail, lastLog time.Time
	attempts := 0
	for {
		if attempts > 0 && !w.mayPerform(j.what) {
			w.failing.Store(false)
			return false
		}
		err := first
		if first != nil {
			first = nil
		} else {
			err = j.write()
		}
		if err == nil {
			if attempts > 0 {
				w.lastErr.Store("")
				w.failing.Store(false)
				w.log.Info("block write succeeded again: the VM resumes", "write", j.what,
					"failed_attempts", attempts, "failing_for", time.Since(firstFail).Round(time.Millisecond))
				w.changed()
			}
			return true
		}
		if errors.Is(err, vmm.ErrFenced) {
			// Not for retrying: a newer primary owns the disk. This
			// write and everything after it are dropped.
			w.fenced.Store(true)
			w.failing.Store(false) // not failing: over
			w.given.Store(true)
			w.dropped.Add(1)
			w.log.Error("block write refused by the shared disk's fence: a newer primary owns the disk; this write and every output after it are dropped",
				"write", j.what, "err", err)
			w.changed()
			return false
		}
		attempts++
		w.errors.Add(1)
		w.lastErr.Store(err.Error())
		now := time.Now()
		if attempts == 1 {
			firstFail, lastLog = now, now
			w.failing.Store(true)
			w.log.Error("block write failed: the VM is paused and no output after this write leaves until it succeeds; "+
				"free space on the disk's filesystem (or repair it) and the VM resumes by itself",
				"write", j.what, "err", err)
			w.changed()
		} else if now.Sub(lastLog) >= diskFailureLogInterval {
			lastLog = now
			w.log.Error("block write still failing: the VM stays paused until it succeeds",
				"write", j.what, "err", err, "attempts", attempts, "failing_for", now.Sub(firstFail).Round(time.Second))
		}
		if failingFor := now.Sub(firstFail); w.leaveAfter > 0 && failingFor >= w.leaveAfter && w.mayLeave != nil && w.mayLeave() {
			w.leftErr.Store(err.Error())
			w.left.Store(true)
			w.given.Store(true)
			w.failing.Store(false) // not retried any more: over
			w.dropped.Add(1)
			w.log.Error("a block write on this secondary has failed for too long: leaving the pair, so that the primary, which waits for this host, goes on serving (unprotected); "+
				"this write and every one after it are dropped (the primary has them). Free space on the disk's filesystem (or repair it), then start this host again as a secondary: it copies the disk afresh",
				"write", j.what, "err", err, "attempts", attempts, "failing_for", failingFor.Round(time.Millisecond), "limit", w.leaveAfter)
			w.changed()
			return false
		}
		select {
		case <-w.quit:
			w.given.Store(true)
			w.dropped.Add(1)
			w.log.Error("stopping with a block write that never succeeded: it and every output after it are dropped, none of them was acknowledged",
				"write", j.what, "err", err, "attempts", attempts)
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, diskRetryMaxInterval)
	}
}

func (w *diskWriter) durable(seq uint64) {
	if w.onDurable != nil {
		w.onDurable(seq)
	}
}

func (w *diskWriter) changed() {
	if w.onChange != nil {
		w.onChange()
	}
}

// put queues a job; once the writer is aborted it gives up rather than
// wait for room, and then every later job is dropped too (a release must
// not overtake the write it was queued behind).
func (w *diskWriter) put(j diskJob) bool {
	w.queued.Add(1)
	select {
	case w.q <- j:
		return true
	default:
	}
	select {
	case w.q <- j:
		return true
	case <-w.quit:
		w.given.Store(true)
		w.queued.Add(-1)
		w.dropped.Add(1)
		return false
	}
}

// enqueue queues the write of the output at log position seq behind
// every earlier job; out is its output as the VMM holds it (nil: no VM
// holds it). Callers are serialized (readyMu).
func (w *diskWriter) enqueue(what string, seq uint64, write func() error, out *vmm.Output) {
	w.enqueueLazy(what, seq, write, nil, out)
}

// enqueueLazy is enqueue for a secondary's write, which lazy (if set)
// lets the writer make durable in a batch with the writes queued beside
// it; write still performs it durably on its own.
func (w *diskWriter) enqueueLazy(what string, seq uint64, write func() error, lazy *lazyWrite, out *vmm.Output) {
	w.wmu.Lock()
	w.writes = append(w.writes, out)
	w.wmu.Unlock()
	if !w.put(diskJob{write: write, lazy: lazy, what: what, seq: seq}) {
		// Never queued: the last one listed (the writer pops only
		// the head, and only of what it took from the queue).
		w.wmu.Lock()
		w.writes = w.writes[:len(w.writes)-1]
		w.wmu.Unlock()
	}
}

// popWrite forgets the oldest write queued: the writer finished it.
func (w *diskWriter) popWrite() {
	w.wmu.Lock()
	w.writes[0] = nil
	w.writes = w.writes[1:]
	w.wmu.Unlock()
}

// queuedWrites returns the block writes queued and not yet finished, in
// order, and whether the VMM holds every one of them (Machine.
// SnapshotReleased can then save them as performed, so that a snapshot
// need not drain the queue).
func (w *diskWriter) queuedWrites() ([]*vmm.Output, bool) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	outs := slices.Clone(w.writes)
	return outs, !slices.Contains(outs, nil)
}

// release performs an output that is not a block write: at once when
// nothing is queued (every earlier write is durable), else behind the
// queued jobs, so that it leaves only once the writes released before it
// are durable.
func (w *diskWriter) release(what string, seq uint64, do func() error) error {
	if w.given.Load() {
		w.dropped.Add(1)
		return nil
	}
	if w.queued.Load() == 0 {
		if !w.mayPerform(what) {
			return nil
		}
		err := do()
		w.durable(seq)
		return err
	}
	w.put(diskJob{after: do, what: what, seq: seq})
	return nil
}

// drain returns once every job queued before it is done (or dropped,
// once the writer is aborted).
func (w *diskWriter) drain() {
	done := make(chan struct{})
	w.queued.Add(1)
	w.q <- diskJob{done: done}
	<-done
}

// abort makes a failing write give up and a blocked enqueue return: the
// agent is stopping.
func (w *diskWriter) abort() { w.abortOnce.Do(func() { close(w.quit) }) }

// stop drains the queue and ends the goroutine. Nothing may be queued
// after it.
func (w *diskWriter) stop() {
	w.drain()
	close(w.q)
	<-w.finished
}

// err is the last write error while a write is failing, else "".
func (w *diskWriter) err() string {
	if !w.failing.Load() {
		return ""
	}
	return w.lastErr.Load().(string)
}
