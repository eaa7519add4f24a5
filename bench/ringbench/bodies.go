package ringbench

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/ring"
)

// Sizes shared by a ring benchmark and its baseline, so they compare like
// with like.
const (
	// QueueItems is the capacity, in items, of the SPSC ring, the channel
	// and the mutex queue: 64 KiB of uint64, well inside a core's L2.
	QueueItems = 8192
	// RecordsRingBytes is the Records ring's capacity: 512 KiB holds 7281
	// records of 64-byte payload (72 bytes each), close to QueueItems.
	RecordsRingBytes = 512 << 10
	// PingPongQueueItems is the capacity of each of the two queues in the
	// ping-pong; only one item is ever in flight.
	PingPongQueueItems = 8
	// pingPongSamplesMax bounds the memory of round-trip samples; with
	// more round trips than this the last ones are kept.
	pingPongSamplesMax = 1 << 20
)

// Strategy is the wait strategy of the rings under test: Park, the one the
// agent uses, so an idle ring costs no CPU; its spin phase keeps busy
// hand-offs off the futex.
const Strategy = ring.Park

// Item64 is the 64-byte item of the record benchmarks' channel baseline.
type Item64 [64]byte

// fill64 writes the payload both the Records producer and the channel
// producer write for item seq: eight 8-byte words derived from seq.
func fill64(p []byte, seq uint64) {
	for w := uint64(0); w < 8; w++ {
		binary.LittleEndian.PutUint64(p[8*w:], seq*0x9E3779B97F4A7C15+w)
	}
}

// read64 is what both consumers do with a 64-byte item: check its first
// word names the expected item and fold its last word into a checksum.
func read64(p []byte, want uint64) (ok bool, sum uint64) {
	return binary.LittleEndian.Uint64(p) == want*0x9E3779B97F4A7C15,
		binary.LittleEndian.Uint64(p[56:])
}

// want64Sum is the checksum read64 accumulates over items 0..n-1.
func want64Sum(n uint64) uint64 {
	var s uint64
	for seq := uint64(0); seq < n; seq++ {
		s += seq*0x9E3779B97F4A7C15 + 7
	}
	return s
}

func reportPerItem(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/item")
}

func mustNot(b *testing.B, err error) {
	if err != nil {
		fatalf(b, "%v", err)
	}
}

// SPSC moves b.N uint64 items through a ring.SPSC of QueueItems. With batch
// 1 the two sides use Push and Pop; otherwise the producer reserves, fills
// and commits up to batch slots at a time and the consumer peeks and
// releases up to batch items at a time.
func SPSC(b *testing.B, batch int) {
	r, err := ring.NewSPSC[uint64](QueueItems, Strategy)
	mustNot(b, err)
	n := uint64(b.N)
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		if batch == 1 {
			for seq := uint64(0); seq < n; seq++ {
				if err := r.Push(seq); err != nil {
					done <- err
					return
				}
			}
			done <- nil
			return
		}
		for seq := uint64(0); seq < n; {
			s, err := r.Reserve(int(min(uint64(batch), n-seq)))
			if err != nil {
				done <- err
				return
			}
			for i := range s {
				s[i] = seq + uint64(i)
			}
			seq += uint64(len(s))
			if err := r.Commit(len(s)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var sum uint64
	for want := uint64(0); want < n; {
		if batch == 1 {
			v, err := r.Pop()
			mustNot(b, err)
			if v != want {
				fatalf(b, "SPSC: got item %d, want %d", v, want)
			}
			sum += v
			want++
			continue
		}
		s, err := r.Peek(batch)
		mustNot(b, err)
		for _, v := range s {
			if v != want {
				fatalf(b, "SPSC: got item %d, want %d", v, want)
			}
			sum += v
			want++
		}
		mustNot(b, r.Release(len(s)))
	}
	b.StopTimer()
	mustNot(b, <-done)
	if sum != n*(n-1)/2 {
		fatalf(b, "SPSC: checksum %d, want %d", sum, n*(n-1)/2)
	}
	reportPerItem(b)
}

// Chan is the baseline for SPSC: the same uint64 items through a buffered
// channel of QueueItems.
func Chan(b *testing.B) {
	c := make(chan uint64, QueueItems)
	n := uint64(b.N)
	b.ResetTimer()
	go func() {
		for seq := uint64(0); seq < n; seq++ {
			c <- seq
		}
	}()
	var sum uint64
	for want := uint64(0); want < n; want++ {
		v := <-c
		if v != want {
			fatalf(b, "chan: got item %d, want %d", v, want)
		}
		sum += v
	}
	b.StopTimer()
	if sum != n*(n-1)/2 {
		fatalf(b, "chan: checksum %d, want %d", sum, n*(n-1)/2)
	}
	reportPerItem(b)
}

// Chan64B is the baseline for Records with 64-byte payloads: 64-byte arrays
// through a buffered channel of QueueItems, written and read the same way.
func Chan64B(b *testing.B) {
	c := make(chan Item64, QueueItems)
	n := uint64(b.N)
	b.ResetTimer()
	go func() {
		for seq := uint64(0); seq < n; seq++ {
			var it Item64
			fill64(it[:], seq)
			c <- it
		}
	}()
	var sum uint64
	for want := uint64(0); want < n; want++ {
		it := <-c
		ok, s := read64(it[:], want)
		if !ok {
			fatalf(b, "chan 64B: item %d arrived out of order", want)
		}
		sum += s
	}
	b.StopTimer()
	if sum != want64Sum(n) {
		fatalf(b, "chan 64B: checksum %d, want %d", sum, want64Sum(n))
	}
	reportPerItem(b)
}

// mutexQueue is the textbook alternative: a slice ring under a mutex with
// condition variables for full and empty.
type mutexQueue struct {
	mu                sync.Mutex
	notEmpty, notFull sync.Cond
	buf               []uint64
	head, n           int
}

func newMutexQueue(capacity int) *mutexQueue {
	q := &mutexQueue{buf: make([]uint64, capacity)}
	q.notEmpty.L, q.notFull.L = &q.mu, &q.mu
	return q
}

func (q *mutexQueue) push(v uint64) {
	q.mu.Lock()
	for q.n == len(q.buf) {
		q.notFull.Wait()
	}
	q.buf[(q.head+q.n)%len(q.buf)] = v
	q.n++
	q.mu.Unlock()
	q.notEmpty.Signal()
}

func (q *mutexQueue) pop() uint64 {
	q.mu.Lock()
	for q.n == 0 {
		q.notEmpty.Wait()
	}
	v := q.buf[q.head]
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	q.mu.Unlock()
	q.notFull.Signal()
	return v
}

// MutexQueue is the second baseline: uint64 items through a mutex-guarded
// queue of QueueItems.
func MutexQueue(b *testing.B) {
	q := newMutexQueue(QueueItems)
	n := uint64(b.N)
	b.ResetTimer()
	go func() {
		for seq := uint64(0); seq < n; seq++ {
			q.push(seq)
		}
	}()
	var sum uint64
	for want := uint64(0); want < n; want++ {
		v := q.pop()
		if v != want {
			fatalf(b, "mutex queue: got item %d, want %d", v, want)
		}
		sum += v
	}
	b.StopTimer()
	if sum != n*(n-1)/2 {
		fatalf(b, "mutex queue: checksum %d, want %d", sum, n*(n-1)/2)
	}
	reportPerItem(b)
}

// errRecordsOrder stops the consumer's walk at a record out of order.
type errRecordsOrder struct{ want uint64 }

func (e *errRecordsOrder) Error() string {
	return fmt.Sprintf("records: record %d is out of order, damaged or of the wrong length", e.want)
}

// Records moves b.N records of 64-byte payload through a ring.Records of
// RecordsRingBytes. The producer reserves and fills each record in place and
// commits every batch records; the consumer walks each span it peeks with
// ring.ForEachRecord and releases every batch records.
func Records(b *testing.B, batch int) {
	const payloadBytes = 64
	recordBytes := ring.RecordBytes(payloadBytes)
	r, err := ring.NewRecords(RecordsRingBytes, Strategy)
	mustNot(b, err)
	n := uint64(b.N)
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for seq := uint64(0); seq < n; seq++ {
			p, err := r.Reserve(payloadBytes)
			if err != nil {
				done <- err
				return
			}
			fill64(p, seq)
			if (seq+1)%uint64(batch) == 0 {
				r.Commit()
			}
		}
		r.Commit()
		done <- nil
	}()
	var sum, want uint64
	var unreleased int
	for want < n {
		span, err := r.Peek()
		mustNot(b, err)
		err = ring.ForEachRecord(span, func(p []byte) error {
			ok, s := read64(p, want)
			if !ok || len(p) != payloadBytes {
				return &errRecordsOrder{want}
			}
			sum += s
			want++
			if unreleased++; unreleased == batch {
				unreleased = 0
				return r.Release(batch * recordBytes)
			}
			return nil
		})
		mustNot(b, err)
		mustNot(b, r.Release(unreleased*recordBytes))
		unreleased = 0
	}
	b.StopTimer()
	mustNot(b, <-done)
	if sum != want64Sum(n) {
		fatalf(b, "records: checksum %d, want %d", sum, want64Sum(n))
	}
	reportPerItem(b)
}

// roundTrips records round-trip times and reports their median.
type roundTrips struct{ ns []int64 }

func newRoundTrips(n int) *roundTrips {
	return &roundTrips{ns: make([]int64, 0, min(n, pingPongSamplesMax))}
}

func (s *roundTrips) add(i int, d time.Duration) {
	if len(s.ns) < cap(s.ns) {
		s.ns = append(s.ns, int64(d))
		return
	}
	s.ns[i%len(s.ns)] = int64(d)
}

func (s *roundTrips) report(b *testing.B) {
	slices.Sort(s.ns)
	b.ReportMetric(float64(s.ns[len(s.ns)/2]), "p50-ns")
}

// PingPongRing bounces one item between two goroutines through two SPSC
// rings, timing every round trip.
func PingPongRing(b *testing.B) {
	ping, err := ring.NewSPSC[uint64](PingPongQueueItems, Strategy)
	mustNot(b, err)
	pong, err := ring.NewSPSC[uint64](PingPongQueueItems, Strategy)
	mustNot(b, err)
	defer ping.Close()
	go func() {
		for {
			v, err := ping.Pop()
			if err != nil || pong.Push(v+1) != nil {
				return
			}
		}
	}()
	samples := newRoundTrips(b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		mustNot(b, ping.Push(uint64(i)))
		v, err := pong.Pop()
		samples.add(i, time.Since(start))
		mustNot(b, err)
		if v != uint64(i)+1 {
			fatalf(b, "ping-pong ring: got %d back for %d", v, i)
		}
	}
	b.StopTimer()
	samples.report(b)
}

// PingPongChan is PingPongRing's baseline with two buffered channels.
func PingPongChan(b *testing.B) {
	ping := make(chan uint64, PingPongQueueItems)
	pong := make(chan uint64, PingPongQueueItems)
	defer close(ping)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
	}()
	samples := newRoundTrips(b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		ping <- uint64(i)
		v := <-pong
		samples.add(i, time.Since(start))
		if v != uint64(i)+1 {
			fatalf(b, "ping-pong chan: got %d back for %d", v, i)
		}
	}
	b.StopTimer()
	samples.report(b)
}

// paddedCounter is an atomic counter alone on its 128-byte pair of lines.
type paddedCounter struct {
	_ [128]byte
	v atomic.Uint64
	_ [128]byte
}

// PingPongCacheLine is the floor under PingPongRing: two goroutines spin on
// two atomic counters, each answering the other's increment, with no ring
// and no waiting strategy. Its p50 is one core-to-core round trip of a cache
// line when both threads run at once; far above a microsecond it shows that
// the machine rarely runs the two threads at the same time (other load, or
// vCPUs the host does not co-schedule), and then every cross-core figure of
// the report is dominated by scheduling, not by the code under test.
func PingPongCacheLine(b *testing.B) {
	var ping, pong paddedCounter
	n := uint64(b.N)
	go func() {
		for i := uint64(1); i <= n; i++ {
			for ping.v.Load() != i {
			}
			pong.v.Store(i)
		}
	}()
	samples := newRoundTrips(b.N)
	b.ResetTimer()
	for i := uint64(1); i <= n; i++ {
		start := time.Now()
		ping.v.Store(i)
		for pong.v.Load() != i {
		}
		samples.add(int(i), time.Since(start))
	}
	b.StopTimer()
	samples.report(b)
}
