package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/rdma/shm"
	"github.com/ftvm/ftvm/tcpfallback"
)

// Parameters of the transport round-trip probe.
const (
	rttProbePort     = 7171
	rttProbeBytes    = 64
	rttProbeWarmup   = 200
	rttProbeTimeout  = 5 * time.Second
	rttConnectTimout = 10 * time.Second
)

// MeasureTransportRTT times n round trips of a 64-byte log frame and its
// acknowledgement between host a and host b over the ftvm transport the
// cluster's daemons use (rdma.Transport with the cluster's mutual TLS:
// the control lane on a shared-memory ring with ClusterConfig.Transport
// "shm", on TCP otherwise), as the daemons' log and acknowledgements
// travel: the baseline an output's hold time is held against.
// Nanoseconds.
func MeasureTransportRTT(ctx context.Context, c *Cluster, n int) (*hdrhistogram.Histogram, error) {
	tlsB, err := tcpfallback.LoadTLSConfig(c.path("certs"), string(HostB))
	if err != nil {
		return nil, err
	}
	tlsA, err := tcpfallback.LoadTLSConfig(c.path("certs"), string(HostA))
	if err != nil {
		return nil, err
	}
	tlsA.ServerName = string(HostB)
	addr := net.JoinHostPort(HostAddr(HostB).String(), fmt.Sprint(rttProbePort))

	var prov rdma.Provider
	if c.cfg.Transport == "shm" {
		prov = shm.Provider{}
	}
	var echo *rdma.Transport
	var echoErr error
	ready := make(chan struct{})
	cfgB := tcpfallback.Config{VMID: "rtt-probe", TLS: tlsB, OnFrame: func(f tcpfallback.Frame) {
		<-ready
		echo.Send(tcpfallback.TypeAck, f.Payload)
	}}
	if err := c.Topo.InNamespace(HostB, func() error {
		echo, echoErr = rdma.Listen(addr, rdma.Config{TCP: cfgB, Provider: prov, Logger: quietLog})
		return echoErr
	}); err != nil {
		return nil, err
	}
	close(ready)
	defer echo.Close()

	acks := make(chan struct{}, 1)
	cfgA := tcpfallback.Config{VMID: "rtt-probe", TLS: tlsA, OnFrame: func(tcpfallback.Frame) { acks <- struct{}{} }}
	var pinger *rdma.Transport
	dctx, cancel := context.WithTimeout(ctx, rttConnectTimout)
	defer cancel()
	if err := c.Topo.InNamespace(HostA, func() (err error) {
		// Over a ring the pinger reads its acknowledgements with Poll on
		// its own thread, as a primary's vCPU thread does at its exits.
		pinger, err = rdma.Dial(dctx, addr, rdma.Config{TCP: cfgA, Provider: prov, NoPoller: prov != nil, Logger: quietLog})
		return err
	}); err != nil {
		return nil, err
	}
	defer pinger.Close()
	for prov != nil && !(pinger.RingUp() && echo.RingUp()) {
		if dctx.Err() != nil {
			_, why := pinger.Using()
			return nil, fmt.Errorf("the %s ring of the probe did not come up: %s", prov.Name(), why)
		}
		pinger.Poll()
		time.Sleep(time.Millisecond)
	}
	if prov != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}

	h := newNsHistogram()
	msg := make([]byte, rttProbeBytes)
	for i := -rttProbeWarmup; i < n; i++ {
		start := time.Now()
		if err := pinger.Send(tcpfallback.TypeLog, msg); err != nil {
			return nil, err
		}
		if prov != nil {
			if err := pollFor(ctx, pinger, acks); err != nil {
				return nil, err
			}
		} else {
			select {
			case <-acks:
			case <-time.After(rttProbeTimeout):
				return nil, errors.New("no acknowledgement within 5 s")
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if i >= 0 {
			h.RecordValue(max(time.Since(start).Nanoseconds(), 1_000))
		}
	}
	return h, nil
}

var quietLog = slog.New(slog.DiscardHandler)

// pollFor spins on the pinger's Poll until its OnFrame (called inline by
// Poll) has signalled an acknowledgement.
func pollFor(ctx context.Context, pinger *rdma.Transport, acks <-chan struct{}) error {
	start := time.Now()
	for i := 0; ; i++ {
		pinger.Poll()
		select {
		case <-acks:
			return nil
		default:
		}
		if i%4096 == 4095 {
			if time.Since(start) > rttProbeTimeout {
				return errors.New("no acknowledgement within 5 s")
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
}
