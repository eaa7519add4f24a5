package tcpbench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"

	"github.com/ftvm/ftvm/tcpfallback"
)

// Histogram bounds: 1 ns to 10 s, three significant digits.
const (
	histMinNs   = 1
	histMaxNs   = int64(10 * time.Second)
	histSigFigs = 3
)

// NewHistogram returns a histogram for round-trip times in nanoseconds.
func NewHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMinNs, histMaxNs, histSigFigs)
}

// DefaultMessageBytes is the size of a log entry and of its acknowledgement
// in the round-trip benchmarks.
const DefaultMessageBytes = 64

// benchHeartbeatTimeout is the transports' heartbeat timeout in benchmarks.
const benchHeartbeatTimeout = 2 * time.Second

// roundTripTimeout bounds one RoundTrips call per round trip, so that a lost
// message fails the benchmark instead of hanging it.
const roundTripTimeout = 10 * time.Second

// The pinger kinds, which are also the sub-benchmark names.
const (
	KindBare    = "bare"
	KindFtvm    = "ftvm"
	KindFtvmTLS = "ftvm-tls"
	KindGRPC    = "grpc"
	// KindFtvmBusyPoll is ftvm with Config.BusyPoll = DefaultBusyPoll: the
	// lowest-latency mode, which spends a core spinning.
	KindFtvmBusyPoll = "ftvm-busypoll"
)

// KindBareBusyPoll is the bare ping-pong with both readers spinning on
// non-blocking reads like ftvm-busypoll: the fair baseline for it.
const KindBareBusyPoll = "bare-busypoll"

// DefaultBusyPoll is the spin time of the ftvm-busypoll pinger: longer than
// a loopback round trip, so the reader rarely sleeps while traffic flows.
const DefaultBusyPoll = 200 * time.Microsecond

// Kinds lists the pingers run by default, in report order, baseline first.
var Kinds = []string{KindBare, KindFtvm, KindFtvmTLS, KindGRPC}

// BusyPollKinds are the spinning pingers. They are opt-in: each holds a
// processor while it runs, which on a small or shared machine says more
// about the neighbours than about the transport.
var BusyPollKinds = []string{KindBareBusyPoll, KindFtvmBusyPoll}

// Pinger is a connected primary/secondary pair over loopback.
type Pinger interface {
	// RoundTrips does n round trips one after the other and records
	// each in h, in nanoseconds.
	RoundTrips(n int, h *hdrhistogram.Histogram) error
	Close() error
}

// Options tune a pinger.
type Options struct {
	MessageBytes int           // default DefaultMessageBytes
	BusyPoll     time.Duration // ftvm kinds: tcpfallback.Config.BusyPoll
}

// NewPinger sets up a pinger of the given kind on loopback.
func NewPinger(kind string, o Options) (Pinger, error) {
	if o.MessageBytes <= 0 {
		o.MessageBytes = DefaultMessageBytes
	}
	switch kind {
	case KindBare:
		return newBarePinger(o.MessageBytes, 0)
	case KindBareBusyPoll:
		if o.BusyPoll <= 0 {
			o.BusyPoll = DefaultBusyPoll
		}
		return newBarePinger(o.MessageBytes, o.BusyPoll)
	case KindFtvm:
		return newFtvmPinger(o, false)
	case KindFtvmTLS:
		return newFtvmPinger(o, true)
	case KindGRPC:
		return newGRPCPinger(o.MessageBytes)
	case KindFtvmBusyPoll:
		if o.BusyPoll <= 0 {
			o.BusyPoll = DefaultBusyPoll
		}
		return newFtvmPinger(o, false)
	}
	return nil, fmt.Errorf("tcpbench: unknown pinger %q (known: %v %v)", kind, Kinds, BusyPollKinds)
}

// barePinger: plain TCP, fixed-size messages, one goroutine per side.
type barePinger struct {
	ln     net.Listener
	client net.Conn
	server net.Conn
	msg    []byte
	done   chan struct{}
	spin   time.Duration
}

// readFull is io.ReadFull, spinning on non-blocking reads for up to spin
// before each wait in the poller when spin > 0.
func readFull(c net.Conn, buf []byte, spin time.Duration) error {
	if spin <= 0 {
		_, err := io.ReadFull(c, buf)
		return err
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	got := 0
	var rerr error
	var deadline time.Time
	for got < len(buf) {
		deadline = time.Time{}
		err := rc.Read(func(fd uintptr) bool {
			for i := 0; ; i++ {
				n, err := unix.Read(int(fd), buf[got:])
				if err == nil {
					if n == 0 {
						rerr = io.EOF
					}
					got += n
					return true
				}
				if err != unix.EAGAIN && err != unix.EINTR {
					rerr = err
					return true
				}
				if i%8 == 7 {
					runtime.Gosched() // as tcpfallback's spin does
				}
				if i%64 == 0 {
					if deadline.IsZero() {
						deadline = time.Now().Add(spin)
					} else if time.Now().After(deadline) {
						return false
					}
				}
			}
		})
		if err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
	}
	return nil
}

func newBarePinger(size int, spin time.Duration) (*barePinger, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &barePinger{ln: ln, msg: make([]byte, size), done: make(chan struct{}), spin: spin}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		p.server = c
		accepted <- nil
		defer close(p.done)
		buf := make([]byte, size)
		for {
			if err := readFull(c, buf, spin); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	if p.client, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		ln.Close()
		return nil, err
	}
	if err := <-accepted; err != nil {
		p.client.Close()
		ln.Close()
		return nil, err
	}
	return p, nil
}

func (p *barePinger) RoundTrips(n int, h *hdrhistogram.Histogram) error {
	buf := make([]byte, len(p.msg))
	p.client.SetDeadline(time.Now().Add(roundTripTimeout + time.Duration(n)*time.Millisecond))
	defer p.client.SetDeadline(time.Time{})
	for range n {
		t0 := time.Now()
		if _, err := p.client.Write(p.msg); err != nil {
			return err
		}
		if err := readFull(p.client, buf, p.spin); err != nil {
			return err
		}
		h.RecordValue(int64(time.Since(t0)))
	}
	return nil
}

func (p *barePinger) Close() error {
	p.client.Close()
	p.ln.Close()
	<-p.done
	return nil
}

// benchPSK is a fresh random key per process.
var benchPSK = func() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}()

// ftvmPinger: a tcpfallback pair; the secondary acknowledges from OnFrame,
// the primary sends the next entry from OnFrame.
type ftvmPinger struct {
	primary, secondary *tcpfallback.Transport
	msg                []byte

	// The turn passes between RoundTrips and the primary's OnFrame through
	// the socket, which the race detector cannot see; mu makes the
	// hand-over explicit (uncontended: tens of nanoseconds).
	mu        sync.Mutex
	h         *hdrhistogram.Histogram
	remaining int
	t0        time.Time
	err       error
	done      chan struct{}
}

// pair connects a secondary (listener) and a primary (dialer) on loopback.
func pair(o Options, withTLS bool, onPrimary, onSecondary func(*tcpfallback.Transport) func(tcpfallback.Frame)) (primary, secondary *tcpfallback.Transport, err error) {
	// Heartbeats at the default interval, so their cost is in the figures,
	// but a timeout that rides out a starved watchdog: on a small shared
	// machine the spinning pingers can hold both processors long enough
	// to fake a dead peer, and a benchmark is not a failure detector.
	base := tcpfallback.Config{VMID: "bench", BusyPoll: o.BusyPoll, HeartbeatTimeout: benchHeartbeatTimeout}
	pc, sc := base, base
	if withTLS {
		dir, err := os.MkdirTemp("", "ftvm-bench-certs-")
		if err != nil {
			return nil, nil, err
		}
		defer os.RemoveAll(dir)
		if err := tcpfallback.WriteTestCertificates(dir, "primary", "secondary"); err != nil {
			return nil, nil, err
		}
		if pc.TLS, err = tcpfallback.LoadTLSConfig(dir, "primary"); err != nil {
			return nil, nil, err
		}
		if sc.TLS, err = tcpfallback.LoadTLSConfig(dir, "secondary"); err != nil {
			return nil, nil, err
		}
	} else {
		pc.PSK, sc.PSK = benchPSK, benchPSK
	}
	// The handlers need the transports they belong to; they are created
	// after, so route through variables set below.
	var ps, ss *tcpfallback.Transport
	var pf, sf func(tcpfallback.Frame)
	ready := make(chan struct{})
	pc.OnFrame = func(f tcpfallback.Frame) { <-ready; pf(f) }
	sc.OnFrame = func(f tcpfallback.Frame) { <-ready; sf(f) }
	ss, err = tcpfallback.Listen("127.0.0.1:0", sc)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), roundTripTimeout)
	defer cancel()
	ps, err = tcpfallback.Dial(ctx, ss.Addr(), pc)
	if err != nil {
		ss.Close()
		return nil, nil, err
	}
	if err := ss.WaitConnected(ctx); err != nil {
		ps.Close()
		ss.Close()
		return nil, nil, err
	}
	pf, sf = onPrimary(ps), onSecondary(ss)
	close(ready)
	return ps, ss, nil
}

func newFtvmPinger(o Options, withTLS bool) (*ftvmPinger, error) {
	p := &ftvmPinger{msg: make([]byte, o.MessageBytes), done: make(chan struct{}, 1)}
	var err error
	p.primary, p.secondary, err = pair(o, withTLS,
		func(*tcpfallback.Transport) func(tcpfallback.Frame) { return p.onAck },
		func(s *tcpfallback.Transport) func(tcpfallback.Frame) {
			return func(f tcpfallback.Frame) {
				if f.Type == tcpfallback.TypeLog {
					// The acknowledgement echoes the entry: same
					// size both ways, as in the other pingers.
					if err := s.Send(tcpfallback.TypeAck, f.Payload); err != nil {
						p.mu.Lock()
						p.remaining = 0
						p.finish(err)
						p.mu.Unlock()
					}
				}
			}
		})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (p *ftvmPinger) onAck(f tcpfallback.Frame) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.Type != tcpfallback.TypeAck || p.remaining == 0 {
		return
	}
	p.h.RecordValue(int64(time.Since(p.t0)))
	p.remaining--
	if p.remaining == 0 {
		p.finish(nil)
		return
	}
	p.t0 = time.Now()
	if err := p.primary.Send(tcpfallback.TypeLog, p.msg); err != nil {
		p.remaining = 0
		p.finish(err)
	}
}

// finish ends RoundTrips; mu must be held.
func (p *ftvmPinger) finish(err error) {
	p.err = err
	select {
	case p.done <- struct{}{}:
	default:
	}
}

func (p *ftvmPinger) RoundTrips(n int, h *hdrhistogram.Histogram) error {
	if n <= 0 {
		return nil
	}
	p.mu.Lock()
	p.h, p.remaining, p.err = h, n, nil
	p.t0 = time.Now()
	err := p.primary.Send(tcpfallback.TypeLog, p.msg)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-time.After(roundTripTimeout + time.Duration(n)*time.Millisecond):
		return errors.New("tcpbench: ftvm round trips timed out (a frame was lost)")
	}
}

func (p *ftvmPinger) Close() error {
	p.primary.Close()
	p.secondary.Close()
	return nil
}

// Result is one pinger's latency distribution.
type Result struct {
	Kind              string
	Count             int64
	P50, P99, P999    time.Duration
	Mean, Max         time.Duration
	Histogram         *hdrhistogram.Histogram
	RatioToBare50     float64 // P50 / bare P50
	RatioToBare99     float64
	RatioToBare999    float64
	SpeedupOverGRPC50 float64 // grpc P50 / this P50
}

// Summarize fills a Result from a histogram.
func Summarize(kind string, h *hdrhistogram.Histogram) Result {
	return Result{
		Kind: kind, Count: h.TotalCount(), Histogram: h,
		P50:  time.Duration(h.ValueAtQuantile(50)),
		P99:  time.Duration(h.ValueAtQuantile(99)),
		P999: time.Duration(h.ValueAtQuantile(99.9)),
		Mean: time.Duration(h.Mean()),
		Max:  time.Duration(h.Max()),
	}
}

// CompareRTT runs every pinger in Kinds; see CompareRTTKinds.
func CompareRTT(samples, roundSamples, warmup int, o Options) ([]Result, error) {
	return CompareRTTKinds(Kinds, samples, roundSamples, warmup, o)
}

// CompareRTTKinds runs the given pingers for samples round trips each,
// interleaved in rounds of roundSamples so that a burst of load from other
// processes falls on all of them alike, and returns the results with ratios
// to bare (and to gRPC). warmup round trips per pinger are not recorded.
func CompareRTTKinds(kinds []string, samples, roundSamples, warmup int, o Options) ([]Result, error) {
	newPinger := func(k string) (Pinger, error) { return NewPinger(k, o) }
	results, err := Interleave(kinds, newPinger, Rounds{Samples: samples, Round: roundSamples, Warmup: warmup})
	if err != nil {
		return nil, fmt.Errorf("tcpbench: %w", err)
	}
	AddRatios(results)
	return results, nil
}

// Rounds says how Interleave runs its pingers.
type Rounds struct {
	Samples int // recorded round trips per pinger
	Round   int // recorded round trips per pinger in one round (at least 1)
	Warmup  int // unrecorded round trips per pinger before the first round
	// RoundWarmup unrecorded round trips start each pinger's round:
	// after the other pingers' rounds its receivers have gone to sleep,
	// and the first round trips after a wake-up are slow for a while.
	RoundWarmup int
}

// Interleave makes a pinger of each kind with newPinger and runs them for
// r.Samples recorded round trips each, in rounds of r.Round taken in turn,
// so that load from other processes falls on all of them alike. It closes
// the pingers and returns their results (without ratios) in the order of
// kinds. Both tcpbench and rdma/rdmabench compare their pingers with it.
func Interleave(kinds []string, newPinger func(kind string) (Pinger, error), r Rounds) ([]Result, error) {
	pingers := make([]Pinger, len(kinds))
	hists := make([]*hdrhistogram.Histogram, len(kinds))
	defer func() {
		for _, p := range pingers {
			if p != nil {
				p.Close()
			}
		}
	}()
	for i, k := range kinds {
		p, err := newPinger(k)
		if err != nil {
			return nil, fmt.Errorf("setting up %s: %w", k, err)
		}
		pingers[i], hists[i] = p, NewHistogram()
		if err := p.RoundTrips(r.Warmup, NewHistogram()); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", k, err)
		}
	}
	round := max(r.Round, 1)
	scratch := NewHistogram()
	for done := 0; done < r.Samples; done += round {
		for i, p := range pingers {
			if r.RoundWarmup > 0 {
				if err := p.RoundTrips(r.RoundWarmup, scratch); err != nil {
					return nil, fmt.Errorf("%s warm-up: %w", kinds[i], err)
				}
			}
			if err := p.RoundTrips(min(round, r.Samples-done), hists[i]); err != nil {
				return nil, fmt.Errorf("%s: %w", kinds[i], err)
			}
		}
	}
	results := make([]Result, len(kinds))
	for i, k := range kinds {
		results[i] = Summarize(k, hists[i])
	}
	return results, nil
}

// AddRatios fills the ratio fields from the results named bare and grpc.
func AddRatios(results []Result) {
	var bare, grpc *Result
	for i := range results {
		switch results[i].Kind {
		case KindBare:
			bare = &results[i]
		case KindGRPC:
			grpc = &results[i]
		}
	}
	for i := range results {
		r := &results[i]
		if bare != nil && bare.P50 > 0 {
			r.RatioToBare50 = float64(r.P50) / float64(bare.P50)
			r.RatioToBare99 = float64(r.P99) / float64(bare.P99)
			r.RatioToBare999 = float64(r.P999) / float64(bare.P999)
		}
		if grpc != nil && r.P50 > 0 {
			r.SpeedupOverGRPC50 = float64(grpc.P50) / float64(r.P50)
		}
	}
}

// FormatResults renders results as a table.
func FormatResults(results []Result) string {
	s := fmt.Sprintf("%-14s %9s %10s %10s %10s %8s %8s %9s %9s\n", "kind", "samples", "p50", "p99", "p99.9", "p50/bare", "p99/bare", "p999/bare", "grpc/this")
	for _, r := range results {
		s += fmt.Sprintf("%-14s %9d %10v %10v %10v %8.2f %8.2f %9.2f %9.2f\n", r.Kind, r.Count,
			r.P50, r.P99, r.P999, r.RatioToBare50, r.RatioToBare99, r.RatioToBare999, r.SpeedupOverGRPC50)
	}
	return s
}
