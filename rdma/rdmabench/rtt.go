// Package rdmabench measures the round trip of a log entry to its
// acknowledgement over the rdma transport's shared-memory twin against the
// physical limit on one host (a bare cache line passed between two
// threads) and against the ftvm TCP transport, in one run, and reports
// the ratios: the body of the shm part of `ftvm bench transport`, and of
// `go test -bench RTT ./rdma/rdmabench/`.
package rdmabench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/rdma/shm"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/tcpfallback/tcpbench"
	"github.com/ftvm/ftvm/transport"
)

// The pingers, which are also BenchmarkRTT's sub-benchmark names.
const (
	// KindCacheLine: one 64-bit word on its own cache line, stored by one
	// thread and awaited by the other, and back: the floor of any
	// one-sided round trip between two cores.
	KindCacheLine = "cacheline"
	// KindShm: rdma.Transport over rdma/shm, a log entry into the
	// secondary's ring, an acknowledgement back into the primary's, read
	// by the primary's thread with Poll (as the vCPU thread does).
	KindShm = "shm"
	// KindFtvm: the same over the ftvm TCP transport (tcpbench's pinger).
	KindFtvm = tcpbench.KindFtvm
)

// Kinds is the report's order, the baseline first.
var Kinds = []string{KindCacheLine, KindShm, KindFtvm}

// Targets, held against ratios measured in the same run (issue 10).
const (
	TargetShmP50OverCacheLine = 2.0
	TargetFtvmOverShm         = 10.0
)

// roundWarmup round trips, unrecorded, start each pinger's round.
const roundWarmup = 300

// spinTimeout bounds a spin on a reply, so that a lost message fails the
// benchmark instead of hanging it.
const spinTimeout = 10 * time.Second

// NewPinger sets up a pinger of kind.
func NewPinger(kind string, messageBytes int) (tcpbench.Pinger, error) {
	if messageBytes <= 0 {
		messageBytes = tcpbench.DefaultMessageBytes
	}
	switch kind {
	case KindCacheLine:
		return &cacheLinePinger{}, nil
	case KindShm:
		return newShmPinger(messageBytes)
	case KindFtvm:
		return tcpbench.NewPinger(tcpbench.KindFtvm, tcpbench.Options{MessageBytes: messageBytes})
	}
	return nil, fmt.Errorf("rdmabench: unknown pinger %q (known: %v)", kind, Kinds)
}

type paddedWord struct {
	_ [64]byte
	v atomic.Uint64
	_ [64]byte
}

// cacheLinePinger: the responder runs, on a thread of its own, only while
// RoundTrips does, so that between rounds it takes no processor from the
// other pingers.
type cacheLinePinger struct {
	ping, pong paddedWord
	seq        uint64
}

func (p *cacheLinePinger) RoundTrips(n int, h *hdrhistogram.Histogram) error {
	if n <= 0 {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, end := p.seq+1, p.seq+uint64(n)
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		close(ready)
		for want := start; want <= end; want++ {
			deadline := 0
			for p.ping.v.Load() != want {
				if deadline++; deadline&(1<<20-1) == 0 && p.ping.v.Load() == ^uint64(0) {
					return
				}
			}
			p.pong.v.Store(want)
		}
	}()
	<-ready
	for i := start; i <= end; i++ {
		t0 := time.Now()
		p.ping.v.Store(i)
		for spins := 0; p.pong.v.Load() != i; spins++ {
			if spins&(1<<20-1) == 0 && time.Since(t0) > spinTimeout {
				p.ping.v.Store(^uint64(0))
				<-done
				return errors.New("rdmabench: the cache-line responder stopped answering")
			}
		}
		h.RecordValue(int64(time.Since(t0)))
	}
	p.seq = end
	<-done
	return nil
}

func (p *cacheLinePinger) Close() error { return nil }

// shmPinger: the secondary's poller echoes each entry from OnFrame; the
// primary has no poller and spins on Poll on its own locked thread.
type shmPinger struct {
	primary, secondary *rdma.Transport
	dir                string
	msg                []byte
	acks               atomic.Uint64
}

var benchPSK = bytes.Repeat([]byte{0x5e}, tcpfallback.MinPSKBytes)

func newShmPinger(size int) (*shmPinger, error) {
	dir, err := os.MkdirTemp("", "ftvm-bench-shm-")
	if err != nil {
		return nil, err
	}
	p := &shmPinger{dir: dir, msg: make([]byte, size)}
	prov := shm.Provider{Dir: dir}
	var sec *rdma.Transport
	ready := make(chan struct{})
	scfg := rdma.Config{Provider: prov, Logger: quietLogger, TCP: tcpfallback.Config{VMID: "bench", PSK: benchPSK, HeartbeatTimeout: 2 * time.Second,
		OnFrame: func(f transport.Frame) {
			<-ready
			if f.Type == transport.TypeLog {
				if err := sec.TrySend(transport.TypeAck, f.Payload); err != nil {
					sec.Send(transport.TypeAck, f.Payload)
				}
			}
		}}}
	pcfg := rdma.Config{Provider: prov, NoPoller: true, Logger: quietLogger, TCP: tcpfallback.Config{VMID: "bench", PSK: benchPSK, HeartbeatTimeout: 2 * time.Second,
		OnFrame: func(f transport.Frame) {
			if f.Type == transport.TypeAck {
				p.acks.Add(1)
			}
		}}}
	if sec, err = rdma.Listen("127.0.0.1:0", scfg); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p.secondary = sec
	close(ready)
	ctx, cancel := context.WithTimeout(context.Background(), spinTimeout)
	defer cancel()
	if p.primary, err = rdma.Dial(ctx, sec.Addr(), pcfg); err != nil {
		p.Close()
		return nil, err
	}
	for deadline := time.Now().Add(spinTimeout); !(p.primary.RingUp() && p.secondary.RingUp()); {
		if time.Now().After(deadline) {
			_, why := p.primary.Using()
			p.Close()
			return nil, fmt.Errorf("rdmabench: the shm ring did not come up: %s", why)
		}
		p.primary.Poll()
		time.Sleep(time.Millisecond)
	}
	return p, nil
}

func (p *shmPinger) RoundTrips(n int, h *hdrhistogram.Histogram) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for i := 0; i < n; i++ {
		want := p.acks.Load() + 1
		t0 := time.Now()
		if err := p.primary.Send(transport.TypeLog, p.msg); err != nil {
			return err
		}
		for spins := 0; p.acks.Load() < want; spins++ {
			p.primary.Poll()
			if spins&(1<<16-1) == 0 && spins > 0 && time.Since(t0) > spinTimeout {
				return errors.New("rdmabench: no acknowledgement over shm (a frame was lost)")
			}
		}
		h.RecordValue(int64(time.Since(t0)))
	}
	return nil
}

func (p *shmPinger) Close() error {
	if p.primary != nil {
		p.primary.Close()
	}
	if p.secondary != nil {
		p.secondary.Close()
	}
	return os.RemoveAll(p.dir)
}

// Compare runs the pingers for samples round trips each, interleaved in
// rounds of round so that load from other processes falls on all alike,
// after warmup unrecorded round trips each; each pinger's round starts
// with roundWarmup unrecorded round trips, alike for all, so that the
// figures are of steady traffic (tcpbench.Interleave).
func Compare(kinds []string, samples, round, warmup, messageBytes int) ([]tcpbench.Result, error) {
	newPinger := func(k string) (tcpbench.Pinger, error) { return NewPinger(k, messageBytes) }
	rs, err := tcpbench.Interleave(kinds, newPinger, tcpbench.Rounds{Samples: samples, Round: round, Warmup: warmup, RoundWarmup: roundWarmup})
	if err != nil {
		return nil, fmt.Errorf("rdmabench: %w", err)
	}
	return rs, nil
}
