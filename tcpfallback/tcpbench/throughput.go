package tcpbench

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/tcpfallback"
)

// DefaultEntriesPerSpan is how many records a SendSpan carries in the entry
// throughput benchmark: what a byte ring accumulates while the previous
// writev is in the kernel at a few million entries per second.
const DefaultEntriesPerSpan = 256

// ChunkBytes is the checkpoint chunk size of the bulk benchmark.
const ChunkBytes = 1 << 20

// throughputTimeout bounds one send call's wait for delivery.
const throughputTimeout = 60 * time.Second

// Link is a connected primary/secondary pair on loopback whose secondary
// counts what arrives.
type Link struct {
	primary, secondary *tcpfallback.Transport

	// The secondary's OnFrame only counts, atomically, and signals once
	// the count reaches want: the receiving side of the benchmark should
	// cost the transport's share, not a lock per frame.
	frames  atomic.Int64 // delivered to the secondary
	bytes   atomic.Int64
	want    atomic.Int64 // signal reached when frames gets here
	reached chan struct{}
}

// NewLink sets up a throughput link (pre-shared key, or TLS).
func NewLink(withTLS bool, o Options) (*Link, error) {
	l := &Link{reached: make(chan struct{}, 1)}
	l.want.Store(-1)
	var err error
	l.primary, l.secondary, err = pair(o, withTLS,
		func(*tcpfallback.Transport) func(tcpfallback.Frame) { return func(tcpfallback.Frame) {} },
		func(*tcpfallback.Transport) func(tcpfallback.Frame) { return l.onFrame })
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Link) onFrame(f tcpfallback.Frame) {
	n := l.frames.Add(1)
	l.bytes.Add(int64(len(f.Payload)))
	if n == l.want.Load() {
		select {
		case l.reached <- struct{}{}:
		default:
		}
	}
}

// waitFrames waits until the secondary has received n frames in all. A
// signal left over from an earlier target is harmless (the count is checked
// again), and a signal lost to one is covered by the recheck tick.
func (l *Link) waitFrames(n int64) error {
	l.want.Store(n)
	recheck := time.NewTicker(time.Millisecond)
	defer recheck.Stop()
	timeout := time.After(throughputTimeout)
	for l.frames.Load() < n {
		select {
		case <-l.reached:
		case <-recheck.C:
		case <-timeout:
			return fmt.Errorf("tcpbench: %d of %d frames arrived in %v", l.frames.Load(), n, throughputTimeout)
		}
	}
	return nil
}

func (l *Link) delivered() int64 { return l.frames.Load() }

// Span builds a byte-ring span of count records of entryBytes each.
func Span(count, entryBytes int) []byte {
	entry := make([]byte, entryBytes)
	for i := range entry {
		entry[i] = byte(i)
	}
	var span []byte
	for range count {
		span = tcpfallback.AppendRecord(span, entry)
	}
	return span
}

// SendEntries sends n log entries in spans of perSpan records (one SendSpan
// each) and returns once the secondary has received them all.
func (l *Link) SendEntries(n int, span []byte, perSpan int) error {
	base := l.delivered()
	for sent := 0; sent < n; {
		s := span
		if left := n - sent; left < perSpan {
			s = span[:left*len(span)/perSpan]
		}
		k, err := l.primary.SendSpan(tcpfallback.TypeLog, s)
		if err != nil {
			return err
		}
		sent += k
	}
	return l.waitFrames(base + int64(n))
}

// SendChunks sends n checkpoint chunks and returns once all have arrived.
func (l *Link) SendChunks(n int, chunk []byte) error {
	base := l.delivered()
	for i := range n {
		flags := tcpfallback.Flags(0)
		if i == n-1 {
			flags = tcpfallback.FlagFinal
		}
		if err := l.primary.SendFlags(tcpfallback.TypeCheckpoint, flags, chunk); err != nil {
			return err
		}
	}
	return l.waitFrames(base + int64(n))
}

// Close closes both ends.
func (l *Link) Close() error {
	l.primary.Close()
	l.secondary.Close()
	return nil
}

// Throughput is one throughput measurement.
type Throughput struct {
	Name          string
	Items         int64 // entries or chunks
	Bytes         int64 // payload bytes
	Elapsed       time.Duration
	ItemsPerSec   float64
	PayloadMBPerS float64 // 10^6 bytes per second
}

func (t Throughput) String() string {
	return fmt.Sprintf("%-10s %10d items in %8v: %12.0f items/s %9.1f MB/s", t.Name, t.Items, t.Elapsed.Round(time.Millisecond), t.ItemsPerSec, t.PayloadMBPerS)
}

// MeasureEntries times SendEntries of n entries of entryBytes.
func MeasureEntries(l *Link, n, entryBytes, perSpan int) (Throughput, error) {
	span := Span(perSpan, entryBytes)
	t0 := time.Now()
	if err := l.SendEntries(n, span, perSpan); err != nil {
		return Throughput{}, err
	}
	return throughput(fmt.Sprintf("entries%d", entryBytes), int64(n), int64(n*entryBytes), time.Since(t0)), nil
}

// MeasureChunks times SendChunks of n chunks of ChunkBytes.
func MeasureChunks(l *Link, n int) (Throughput, error) {
	chunk := make([]byte, ChunkBytes)
	t0 := time.Now()
	if err := l.SendChunks(n, chunk); err != nil {
		return Throughput{}, err
	}
	return throughput("chunk1M", int64(n), int64(n*ChunkBytes), time.Since(t0)), nil
}

func throughput(name string, items, bytes int64, d time.Duration) Throughput {
	s := d.Seconds()
	return Throughput{Name: name, Items: items, Bytes: bytes, Elapsed: d, ItemsPerSec: float64(items) / s, PayloadMBPerS: float64(bytes) / s / 1e6}
}
