package agent

import (
	"sync"

	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
)

// bulkSender sends a checkpoint's chunks, and the CheckpointDone closing
// each part, in the node's order, from a goroutine of its own that holds
// none of the agent's locks. Whoever performs a Ready (readyMu held) only
// queues them: a Send on the bulk lane waits for room in its socket for as
// long as the secondary takes to read a window's worth (milliseconds for
// a pre-copy part of a few MB), and while readyMu is held no output is
// released and no log record leaves (the hook and the readers only
// TryLock it, and leave their Ready to the loop). The lock-hold profile
// (lockhold.go) of 30 kills of the primary under load showed the loop
// holding readyMu (Agent.process) p99 2 to 6.6 ms and up to 9 to 28 ms on
// the daemons that shipped a checkpoint, while the client's longest
// silence in a join grew with the checkpoint. The chunks are encoded
// here too, not under mu in takeReady: on the vCPU thread's inline flush
// that was CheckpointReadyBytes copied twice while every exit waited.
//
// A CheckpointDone goes on the control lane, but through this queue, so
// that it still follows its part's chunks as it did when one goroutine
// sent both. Other messages may overtake queued chunks, as they could
// overtake chunks in the bulk lane's socket before: the lanes never kept
// an order between them. The queue holds at most the node's checkpoint
// window (CheckpointWindowBytes) and what it retransmits.
//
// What is queued of a checkpoint the node no longer ships (it gave the
// join up when its secondary was lost, or the secondary restored it) is
// dropped when its turn comes, not sent: after a reconnection it would
// go to the next joiner, which has begun no checkpoint and would start
// assembling that one.
type bulkSender struct {
	mu   sync.Mutex // a leaf: nothing is taken while it is held
	q    []encoded
	wake chan struct{}
}

func newBulkSender() *bulkSender { return &bulkSender{wake: make(chan struct{}, 1)} }

// isBulk says whether a message goes through the bulk sender.
func isBulk(t wire.Type) bool {
	return t == wire.TypeCheckpointChunk || t == wire.TypeCheckpointDone
}

// push queues m; it never waits.
func (b *bulkSender) push(m encoded) {
	b.mu.Lock()
	b.q = append(b.q, m)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// take returns what is queued, in order, and empties the queue.
func (b *bulkSender) take() []encoded {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.q
	b.q = nil
	return q
}

// runBulk sends what perform queued until stop is closed; what is queued
// then is dropped (the run is over). tr is Run's transport.
func (a *Agent) runBulk(tr Transport, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	var buf []byte
	for {
		select {
		case <-stop:
			return
		case <-a.bulk.wake:
		}
		for _, m := range a.bulk.take() {
			select {
			case <-stop:
				return
			default:
			}
			if m.ckpt != 0 && !a.ships(m.ckpt) {
				a.stats.staleBulk.Add(1)
				continue
			}
			b := m.b
			if m.chunk != nil {
				buf = m.chunk.Append(buf[:0]) // Send lets go of it on return
				b = buf
			}
			if m.typ == transport.TypeCheckpoint {
				a.sync.sent.Add(int64(len(b)))
			}
			if err := tr.Send(m.typ, b); err != nil {
				a.stats.send.Add(1) // lost frames are the protocol's to resend
			}
		}
	}
}

// ships reports whether the node still ships checkpoint id (Node.Ships).
func (a *Agent) ships(id uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.node.Ships(id)
}
