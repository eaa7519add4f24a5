package probe

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Stage names one histogram the probe keeps (enum stage in bpf/probe.c,
// in the same order).
type Stage int

// The stages of an output's hold, then the run-queue delays by thread.
// In receipt mode an output waits for the acknowledgement of the log
// entries before it (sent in earlier exits), so the round trip it waits on
// (StageSendAck) began before its hold; StageHeldAck is the part of it
// left once the output is held.
const (
	StageHold           Stage = iota // held → released: what the daemon itself reports as its hold
	StageExitHeld                    // the vCPU's exit to user space → the output held
	StageHeldAck                     // held → the acknowledgement that released it arrived
	StageAckRelease                  // that acknowledgement → released to the backend
	StageSendAck                     // the vCPU's last record write before the hold → that acknowledgement
	StageReleaseTAP                  // released (a NIC frame) → written into the TAP
	StagePeerTurnaround              // the peer: its last transport read → its next transport write on that thread
	StageToPeer                      // one way: a vCPU record write → the peer's next transport read (with --peer-pid)
	StageFromPeer                    // one way back: a peer's transport write → this daemon's next transport read
	StageReadAck                     // a reader's last transport read → the acknowledgement stepped (TLS, parsing, the agent's lock)
	StageReadAckBlocked              // of that, the time the reader was asleep (a lock's or the Go scheduler's wait, and its run-queue delay)
	StageRunqVCPU                    // run-queue delay: the vCPU thread
	StageRunqReader                  // the lane readers (threads that last stepped an acknowledgement)
	StageRunqLoop                    // the loop (threads that released outputs without stepping an acknowledgement)
	StageRunqOther                   // the daemon's other threads
	StageRunqPeerVCPU                // the peer's vCPU thread
	StageRunqPeerOther               // the peer's other threads
	StageCount
)

var stageNames = [StageCount]string{
	"hold", "exit→held", "held→ack", "ack→released", "send→ack (the RTT waited on)",
	"released→TAP", "peer turnaround", "wire to peer", "wire from peer", "read→ack stepped", "  of it asleep",
	"runq vCPU", "runq readers", "runq loop", "runq other", "runq peer vCPU", "runq peer other",
}

var stageKeys = [StageCount]string{
	"hold", "exit_held", "held_ack", "ack_release", "send_ack",
	"release_tap", "peer_turnaround", "to_peer", "from_peer", "read_ack", "read_ack_blocked",
	"runq_vcpu", "runq_reader", "runq_loop", "runq_other", "runq_peer_vcpu", "runq_peer_other",
}

func (s Stage) String() string { return stageNames[s] }

// Key is the stage's name in JSON.
func (s Stage) Key() string { return stageKeys[s] }

// Counter names one of the probe's event counts (enum counter in
// bpf/probe.c, in the same order).
type Counter int

const (
	CounterExits           Counter = iota // vCPU exits to user space
	CounterHeld                           // outputs held
	CounterReleased                       // outputs released (including those held before the probe started)
	CounterMatched                        // released outputs whose hold the probe saw
	CounterAcks                           // acknowledgements received
	CounterReleasedAtOnce                 // released with no acknowledgement after the hold: what it waited for was acknowledged already
	CounterTAPWrites                      // writes into the TAP
	CounterTAPMatched                     // of them, matched to a released NIC frame
	CounterVCPUSends                      // record writes by the vCPU thread
	CounterPeerTurnarounds                // the peer's read → write pairs
	CounterCount
)

var counterKeys = [CounterCount]string{
	"exits", "held", "released", "matched", "acks", "released_at_once", "tap_writes", "tap_matched", "vcpu_sends", "peer_turnarounds",
}

// Key is the counter's name in JSON.
func (c Counter) Key() string { return counterKeys[c] }

// Bucket layout of the kernel's histograms: bucket_of in bpf/probe.c.
const (
	subBits    = 3
	subBuckets = 1 << subBits
	maxLog2    = 40
	// Buckets is the number of buckets in each stage's histogram.
	Buckets = subBuckets + subBuckets*(maxLog2-subBits+1)
)

// Bounds of the hdrhistograms the buckets are folded into (ns).
const (
	histLowestNs  = 1
	histHighestNs = 1 << (maxLog2 + 1)
	histDigits    = 3
)

// bucketOf is bucket_of in bpf/probe.c: below 8 ns one bucket a value;
// above, the power of two and the next three bits.
func bucketOf(ns uint64) int {
	if ns < subBuckets {
		return int(ns)
	}
	msb := 63
	for ns>>uint(msb) == 0 {
		msb--
	}
	if msb > maxLog2 {
		return Buckets - 1
	}
	sub := (ns >> uint(msb-subBits)) & (subBuckets - 1)
	return (msb-subBits+1)*subBuckets + int(sub)
}

// bucketBounds is the range [lo, hi) of values in bucket b.
func bucketBounds(b int) (lo, hi uint64) {
	if b < subBuckets {
		return uint64(b), uint64(b) + 1
	}
	msb := b/subBuckets + subBits - 1
	sub := uint64(b % subBuckets)
	width := uint64(1) << uint(msb-subBits)
	lo = (subBuckets + sub) * width
	return lo, lo + width
}

// fold turns a kernel histogram into an hdrhistogram, each bucket's
// count recorded at the bucket's middle: a quantile read from it is
// within half a bucket (at most 6.25%) of the kernel's value.
func fold(buckets []uint64) *hdrhistogram.Histogram {
	h := hdrhistogram.New(histLowestNs, histHighestNs, histDigits)
	for b, n := range buckets {
		if n == 0 {
			continue
		}
		lo, hi := bucketBounds(b)
		mid := max(int64(lo+hi)/2, histLowestNs)
		_ = h.RecordValues(min(mid, histHighestNs), int64(n)) // in range by the clamps
	}
	return h
}

// Snapshot is what the probe has seen since it was attached.
type Snapshot struct {
	Taken    time.Time
	Stages   [StageCount]*hdrhistogram.Histogram // ns, folded from Buckets
	Buckets  [StageCount][Buckets]uint64         // the kernel's counts
	Counters [CounterCount]uint64
}

// Stage is the histogram of stage st (ns).
func (s *Snapshot) Stage(st Stage) *hdrhistogram.Histogram { return s.Stages[st] }

// Since is what was seen between an earlier snapshot and s.
func (s *Snapshot) Since(earlier *Snapshot) *Snapshot {
	d := &Snapshot{Taken: s.Taken}
	for st := range s.Buckets {
		for b := range s.Buckets[st] {
			d.Buckets[st][b] = s.Buckets[st][b] - min(earlier.Buckets[st][b], s.Buckets[st][b])
		}
		d.Stages[st] = fold(d.Buckets[st][:])
	}
	for i := range s.Counters {
		d.Counters[i] = s.Counters[i] - min(earlier.Counters[i], s.Counters[i])
	}
	return d
}
