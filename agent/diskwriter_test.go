package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/vmm"
	"golang.org/x/sys/unix"
)

// A release queued behind a failing block write waits until the write
// succeeds; the writer says it is failing (and pokes) meanwhile; a
// release with nothing queued goes at once.
func TestDiskWriterHoldsReleasesBehindAFailingWrite(t *testing.T) {
	var changes atomic.Int32
	w := newDiskWriter(slog.New(slog.NewTextHandler(io.Discard, nil)), func() { changes.Add(1) }, nil)
	defer w.stop()
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	full := atomic.Bool{}
	full.Store(true)
	w.enqueue("seq 1", 1, func() error {
		if full.Load() {
			return errors.New("no space left on device")
		}
		note("write")
		return nil
	}, nil)
	w.release("seq 2", 2, func() error { note("reply"); return nil })
	deadline := time.Now().Add(10 * time.Second)
	for w.errors.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the failing write was not retried")
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	got := len(order)
	mu.Unlock()
	if got != 0 || !w.failing.Load() || w.err() == "" || changes.Load() != 1 {
		t.Fatalf("while the write fails: done %v, failing %v, err %q, changes %d; want nothing done, failing, an error, one change",
			order, w.failing.Load(), w.err(), changes.Load())
	}
	full.Store(false)
	w.drain()
	if w.failing.Load() || w.err() != "" || changes.Load() != 2 {
		t.Fatalf("after the write succeeded: failing %v, err %q, changes %d", w.failing.Load(), w.err(), changes.Load())
	}
	w.release("seq 3", 3, func() error { note("at once"); return nil })
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"write", "reply", "at once"}; len(order) != 3 || order[0] != want[0] || order[1] != want[1] || order[2] != want[2] {
		t.Fatalf("order %v, want %v", order, want)
	}
}

// Stopping with a write that never succeeds drops it and every output
// behind it: nothing that acknowledges it leaves.
func TestDiskWriterAbortDropsWhatFollowsAFailingWrite(t *testing.T) {
	w := newDiskWriter(slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil)
	w.enqueue("seq 1", 1, func() error { return errors.New("no space left on device") }, nil)
	var released atomic.Bool
	w.release("seq 2", 2, func() error { released.Store(true); return nil })
	for w.errors.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	w.abort()
	w.stop()
	w.release("seq 3", 3, func() error { released.Store(true); return nil })
	if released.Load() {
		t.Fatal("an output behind a write that never succeeded was released")
	}
	if w.dropped.Load() < 2 {
		t.Fatalf("dropped %d jobs, want the write and the release", w.dropped.Load())
	}
}

// flakyHeld is a held block write that fails while full is set.
type flakyHeld struct {
	log  *opLog
	mu   *sync.Mutex
	full *atomic.Bool
}

func (h *flakyHeld) Release() error {
	if h.full.Load() {
		return errors.New("no space left on device")
	}
	h.mu.Lock()
	h.log.add("write")
	h.mu.Unlock()
	return nil
}
func (h *flakyHeld) Drop() {}

type lockedHeld struct {
	log *opLog
	mu  *sync.Mutex
}

func (h *lockedHeld) Release() error { h.mu.Lock(); h.log.add("reply"); h.mu.Unlock(); return nil }
func (h *lockedHeld) Drop()          {}

// perform hands a reply released after a block write to the disk writer,
// behind the write: it leaves only once the write is durable, and the
// loop pauses the VM while the write fails.
func TestPerformReleasesAfterTheBlockWriteIsDurable(t *testing.T) {
	log, mu := &opLog{}, &sync.Mutex{}
	a := newUnitAgent(t, &opLog{})
	var full atomic.Bool
	full.Store(true)
	a.handles[1] = heldEntry{h: &flakyHeld{log: log, mu: mu, full: &full}}
	a.handles[2] = heldEntry{h: &lockedHeld{log: log, mu: mu}}
	blk, _ := exitKind(vmm.DeviceBlock, vmm.OpBlockWrite)
	nic, _ := exitKind(vmm.DeviceNIC, vmm.OpNICTX)
	if err := a.perform(context.Background(), &work{rel: []lockstep.Output{{ID: 1, Seq: 1, Device: blk}, {ID: 2, Seq: 2, Device: nic}}}); err != nil {
		t.Fatal(err)
	}
	for a.Stats().DiskWriteErrors < 2 {
		time.Sleep(time.Millisecond)
	}
	if err := a.followDisk(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	early := strings.Join(log.ops, " ")
	mu.Unlock()
	if early != "" || !a.Stats().DiskFailing || a.running {
		t.Fatalf("while the write fails: %q done, failing %v, VM running %v; want nothing done, failing, paused", early, a.Stats().DiskFailing, a.running)
	}
	full.Store(false)
	a.disk.drain()
	if err := a.followDisk(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(log.ops, " "); got != "write reply" || !a.running {
		t.Fatalf("after the write succeeded: %q, VM running %v; want \"write reply\" and running", got, a.running)
	}
}

// A write that fails for leaveAfter on a host that may leave (a
// secondary) is given up, with everything behind it, and left says so; on
// one that may not (a primary) it is retried on, however long it fails.
func TestDiskWriterLeavesAfterFailingTooLong(t *testing.T) {
	for _, may := range []bool{true, false} {
		w := newDiskWriter(slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil)
		w.leaveAfter = 30 * time.Millisecond
		w.mayLeave = func() bool { return may }
		var released atomic.Bool
		w.enqueue("seq 1", 1, func() error { return errors.New("no space left on device") }, nil)
		w.release("seq 2", 2, func() error { released.Store(true); return nil })
		deadline := time.Now().Add(10 * time.Second)
		for !w.left.Load() && w.errors.Load() < 8 { // 8 attempts: >1 s of backoff
			if time.Now().After(deadline) {
				t.Fatal("the failing write was not retried")
			}
			time.Sleep(time.Millisecond)
		}
		if w.left.Load() != may {
			t.Fatalf("may leave %v: left %v after %d attempts", may, w.left.Load(), w.errors.Load())
		}
		if may {
			w.drain() // returns: the writer gave up
			if released.Load() || w.failing.Load() || !strings.Contains(w.leftErr.Load().(string), "no space") {
				t.Fatalf("after leaving: release performed %v, failing %v, error %q; want dropped, not failing, the ENOSPC", released.Load(), w.failing.Load(), w.leftErr.Load())
			}
		} else if !w.failing.Load() {
			t.Fatal("a host that may not leave stopped retrying")
		}
		w.abort()
		w.stop()
		if released.Load() {
			t.Fatal("the release behind the failing write was performed")
		}
	}
}

// The writer lists the writes queued, in order, until each is done; one
// no VM holds makes the list incomplete (the snapshot must drain then).
func TestDiskWriterListsQueuedWrites(t *testing.T) {
	w := newDiskWriter(slog.New(slog.DiscardHandler), nil, nil)
	defer w.stop()
	gate := make(chan struct{})
	o1, o2 := &vmm.Output{Index: 1}, &vmm.Output{Index: 2}
	w.enqueue("seq 1", 1, func() error { <-gate; return nil }, o1)
	w.enqueue("seq 2", 2, func() error { return nil }, o2)
	if got, all := w.queuedWrites(); !all || len(got) != 2 || got[0] != o1 || got[1] != o2 {
		t.Fatalf("queued writes %v (all held %v); want [o1 o2], all held", got, all)
	}
	w.enqueue("seq 3", 3, func() error { return nil }, nil)
	if _, all := w.queuedWrites(); all {
		t.Fatal("a write no VM holds is queued, and the list says every write is held")
	}
	close(gate)
	w.drain()
	if got, all := w.queuedWrites(); !all || len(got) != 0 {
		t.Fatalf("after the writes: %v (all held %v); want none", got, all)
	}
}

// A secondary granted an epoch records its disk as the primary's only once
// the writes it had queued are on it; a primary re-granted does not wait
// for its own.
func TestDiskCurrentBeforeTheEpochIsRecorded(t *testing.T) {
	for _, c := range []struct {
		was      lockstep.Role
		wantDone bool
	}{{lockstep.RoleCandidate, true}, {lockstep.RoleSecondary, true}, {lockstep.RolePrimary, false}} {
		w := newDiskWriter(slog.New(slog.DiscardHandler), nil, nil)
		release := make(chan struct{})
		var done atomic.Bool
		w.enqueue("seq 1", 1, func() error { <-release; time.Sleep(20 * time.Millisecond); done.Store(true); return nil }, nil)
		a := &Agent{disk: w}
		go func() { time.Sleep(10 * time.Millisecond); close(release) }()
		a.diskCurrentFor(c.was)
		if done.Load() != c.wantDone {
			t.Errorf("granted after being %s: the queued write was durable before the record: %v, want %v", c.was, done.Load(), c.wantDone)
		}
		w.stop()
	}
}

// fakeDisk stands for a disk file: it logs every write and counts the
// syncs (fdatasync) the writer makes, a durable write's own included.
// The write of seq failAt fails while full is set.
type fakeDisk struct {
	mu     sync.Mutex
	ops    []string
	syncs  int
	failAt uint64
	full   atomic.Bool
	// syncFails makes that many of the lazy syncs fail (EIO).
	syncFails atomic.Int32
}

func (d *fakeDisk) add(f string, a ...any) {
	d.mu.Lock()
	d.ops = append(d.ops, fmt.Sprintf(f, a...))
	d.mu.Unlock()
}

func (d *fakeDisk) fails(seq uint64) bool { return seq == d.failAt && d.full.Load() }

// durable is a write made durable on its own: written, then synced.
func (d *fakeDisk) durable(seq uint64) func() error {
	return func() error {
		if d.fails(seq) {
			return errors.New("no space left on device")
		}
		d.mu.Lock()
		d.syncs++
		d.mu.Unlock()
		d.add("W%d", seq)
		return nil
	}
}

// lazy is the same write as a secondary's, for a batch.
func (d *fakeDisk) lazy(seq uint64) *lazyWrite {
	return &lazyWrite{
		write: func() error {
			if d.fails(seq) {
				return errors.New("no space left on device")
			}
			d.add("w%d", seq)
			return nil
		},
		sync: func() error {
			d.mu.Lock()
			d.syncs++
			d.mu.Unlock()
			if d.syncFails.Add(-1) >= 0 {
				d.add("sync failed")
				return errors.New("input/output error")
			}
			d.add("sync")
			return nil
		},
		commit: func() { d.add("c%d", seq) },
	}
}

func (d *fakeDisk) snapshot() ([]string, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.ops), d.syncs
}

// queueBehindAGate queues n writes of seq 2..n+1 behind a write (seq 1)
// that waits for the returned channel, so that all n are queued when the
// writer comes to them: a secondary's (lazy) or a primary's.
func queueBehindAGate(w *diskWriter, d *fakeDisk, n int, secondary bool) chan struct{} {
	gate := make(chan struct{})
	w.enqueue("seq 1", 1, func() error { <-gate; return nil }, nil)
	for s := uint64(2); s <= uint64(n)+1; s++ {
		var lazy *lazyWrite
		if secondary {
			lazy = d.lazy(s)
		}
		w.enqueueLazy(fmt.Sprintf("seq %d", s), s, d.durable(s), lazy, nil)
	}
	return gate
}

// durableSeqs collects what onDurable reports, in order.
type durableSeqs struct {
	mu   sync.Mutex
	seqs []uint64
}

func (s *durableSeqs) add(seq uint64) { s.mu.Lock(); s.seqs = append(s.seqs, seq); s.mu.Unlock() }
func (s *durableSeqs) get() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seqs)
}

func wantSeqs(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// N writes queued on a secondary cost one sync, not N, and are reported
// durable in order, each only after that sync; a primary's cost N. A
// release behind them (a primary's) ends the batch: it is performed after
// the sync of the writes before it, before any write after it.
func TestDiskWriterBatchesASecondarysQueuedWrites(t *testing.T) {
	const n = 200
	for _, secondary := range []bool{true, false} {
		d := &fakeDisk{}
		var got durableSeqs
		w := newDiskWriter(slog.New(slog.DiscardHandler), nil, got.add)
		close(queueBehindAGate(w, d, n, secondary))
		w.drain()
		ops, syncs := d.snapshot()
		want := n
		if secondary {
			want = 1
		}
		if syncs != want {
			t.Errorf("secondary %v: %d queued writes cost %d syncs, want %d", secondary, n, syncs, want)
		}
		if s := got.get(); !slices.Equal(s, wantSeqs(1, n+1)) {
			t.Errorf("secondary %v: reported durable %v, want 1..%d in order", secondary, s, n+1)
		}
		if secondary {
			if i := slices.Index(ops, "sync"); i != n || ops[n+1] != "c2" {
				t.Errorf("secondary: the sync is op %d of %v, want after the %d writes and before the first commit", i, ops, n)
			}
		}
		w.stop()
	}

	// A release between two runs of a secondary's writes.
	d := &fakeDisk{}
	w := newDiskWriter(slog.New(slog.DiscardHandler), nil, nil)
	defer w.stop()
	gate := queueBehindAGate(w, d, 3, true)
	w.release("seq 5", 5, func() error { d.add("reply"); return nil })
	for s := uint64(6); s <= 8; s++ {
		w.enqueueLazy(fmt.Sprintf("seq %d", s), s, d.durable(s), d.lazy(s), nil)
	}
	close(gate)
	w.drain()
	ops, syncs := d.snapshot()
	want := []string{"w2", "w3", "w4", "sync", "c2", "c3", "c4", "reply", "w6", "w7", "w8", "sync", "c6", "c7", "c8"}
	if !slices.Equal(ops, want) || syncs != 2 {
		t.Fatalf("ops %v (%d syncs), want %v (2 syncs)", ops, syncs, want)
	}
}

// A write of a secondary's batch that fails holds everything behind it:
// the writes before it are synced and reported durable, it is retried
// until it succeeds, nothing after it is written meanwhile, and then the
// rest are reported in order. One that fails for leaveAfter makes the
// secondary leave, and nothing behind it is performed.
func TestDiskWriterFailingWriteInABatchHoldsWhatFollows(t *testing.T) {
	const n, failAt = 10, 6
	for _, leave := range []bool{false, true} {
		d := &fakeDisk{failAt: failAt}
		d.full.Store(true)
		var got durableSeqs
		w := newDiskWriter(slog.New(slog.DiscardHandler), nil, got.add)
		if leave {
			w.leaveAfter = 30 * time.Millisecond
			w.mayLeave = func() bool { return true }
		}
		close(queueBehindAGate(w, d, n, true))
		deadline := time.Now().Add(10 * time.Second)
		for w.errors.Load() < 3 && !w.left.Load() {
			if time.Now().After(deadline) {
				t.Fatal("the failing write was not retried")
			}
			time.Sleep(time.Millisecond)
		}
		ops, _ := d.snapshot()
		if s := got.get(); !slices.Equal(s, wantSeqs(1, failAt-1)) {
			t.Errorf("leave %v: while seq %d fails, reported durable %v, want 1..%d", leave, failAt, s, failAt-1)
		}
		for _, op := range ops {
			var seq uint64
			if _, err := fmt.Sscanf(op[1:], "%d", &seq); err == nil && seq >= failAt {
				t.Errorf("leave %v: while seq %d fails, %q was done (ops %v)", leave, failAt, op, ops)
			}
		}
		if !leave {
			if !w.failing.Load() {
				t.Error("the writer does not say a write is failing")
			}
			d.full.Store(false)
			w.drain()
			if s := got.get(); !slices.Equal(s, wantSeqs(1, n+1)) {
				t.Errorf("after the failing write succeeded: reported durable %v, want 1..%d in order", s, n+1)
			}
			ops, syncs := d.snapshot()
			// The batch before it, its own durable write, the batch after.
			if syncs != 3 || !slices.Contains(ops, fmt.Sprintf("W%d", failAt)) {
				t.Errorf("after the failing write succeeded: ops %v, %d syncs; want the failed one written durably and 3 syncs", ops, syncs)
			}
		} else {
			w.drain() // returns: the writer gave up
			if !w.left.Load() || w.dropped.Load() != uint64(n+1-failAt+1) {
				t.Errorf("leaving: left %v, dropped %d, want the failing write and the %d behind it", w.left.Load(), w.dropped.Load(), n+1-failAt)
			}
			if s := got.get(); !slices.Equal(s, wantSeqs(1, failAt-1)) {
				t.Errorf("after leaving: reported durable %v, want 1..%d", s, failAt-1)
			}
		}
		w.abort()
		w.stop()
	}
}

// A batch whose sync fails is not reported durable: each of its writes
// is performed again with its own sync, in order, before anything behind.
func TestDiskWriterFailedBatchSyncWritesEachAgain(t *testing.T) {
	const n = 5
	d := &fakeDisk{}
	d.syncFails.Store(1)
	var got durableSeqs
	w := newDiskWriter(slog.New(slog.DiscardHandler), nil, got.add)
	defer w.stop()
	gate := queueBehindAGate(w, d, n, true)
	w.release("seq 7", 7, func() error { d.add("reply"); return nil })
	close(gate)
	w.drain()
	ops, syncs := d.snapshot()
	want := []string{"w2", "w3", "w4", "w5", "w6", "sync failed", "W2", "W3", "W4", "W5", "W6", "reply"}
	if !slices.Equal(ops, want) || syncs != 1+n {
		t.Fatalf("ops %v (%d syncs), want %v (%d syncs)", ops, syncs, want, 1+n)
	}
	if s := got.get(); !slices.Equal(s, wantSeqs(1, n+2)) {
		t.Fatalf("reported durable %v, want 1..%d in order", s, n+2)
	}
}

// BenchmarkDiskWriterDrain drains a backlog of 300 queued 4 KiB writes to
// a real file through the writer, as a secondary that just rejoined
// finds it: each written and fdatasync'd (a primary's, and every write
// before batching) against lazy (a secondary's: one sync for the lot).
// The figure is ns/op for the whole drain.
func BenchmarkDiskWriterDrain(b *testing.B) {
	const writes, n = 300, 4096
	for _, lazy := range []bool{false, true} {
		b.Run(fmt.Sprintf("writes=%d/lazy=%v", writes, lazy), func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "disk"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write(bytes.Repeat([]byte{1}, writes*n)); err != nil || f.Sync() != nil {
				b.Fatal("preparing the disk file:", err)
			}
			data := bytes.Repeat([]byte{2}, n)
			sync := func() error { return unix.Fdatasync(int(f.Fd())) }
			w := newDiskWriter(slog.New(slog.DiscardHandler), nil, nil)
			defer w.stop()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				gate := make(chan struct{})
				w.enqueue("gate", 0, func() error { <-gate; return nil }, nil)
				for k := range writes {
					off := int64(k * n)
					write := func() error { _, err := f.WriteAt(data, off); return err }
					durable := func() error {
						if err := write(); err != nil {
							return err
						}
						return sync()
					}
					var lw *lazyWrite
					if lazy {
						lw = &lazyWrite{write: write, sync: sync}
					}
					w.enqueueLazy(fmt.Sprintf("seq %d", k), uint64(k), durable, lw, nil)
				}
				b.StartTimer()
				close(gate)
				w.drain()
			}
		})
	}
}
