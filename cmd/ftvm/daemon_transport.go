package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/rdma/shm"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
)

// The --transport choices.
const (
	transportAuto = "auto"
	transportRDMA = "rdma"
	transportShm  = "shm"
	transportTCP  = "tcp"
)

// rdmaForPeer returns the verbs provider for the RDMA device on the route
// to peer (host:port; empty on a primary, which does not know who will
// join: any device of this host), or an error saying why there is none.
// rdma/verbs provides it; a build without it has no RDMA.
var rdmaForPeer = func(peer string) (rdma.Provider, error) {
	return nil, errors.New("this build has no RDMA support (rdma/verbs is not linked in)")
}

// chooseProvider picks the one-sided memory for the control lane from
// --transport, and says why. A nil provider means TCP. --transport rdma
// with no device is an error; auto falls back to TCP and says why.
func (c *daemonConfig) chooseProvider(peer string) (rdma.Provider, string, error) {
	switch c.transport {
	case transportTCP:
		return nil, "--transport tcp", nil
	case transportShm:
		return shm.Provider{Dir: c.shmDir}, "--transport shm: a ring in shared memory with a peer daemon on this host", nil
	case transportRDMA:
		p, err := rdmaForPeer(peer)
		if err != nil {
			return nil, "", fmt.Errorf("--transport rdma: %w; use --transport auto (RDMA where there is a device, else TCP) or tcp", err)
		}
		return p, "--transport rdma", nil
	}
	p, err := rdmaForPeer(peer)
	if err != nil {
		where := "this host"
		if host, _, e := net.SplitHostPort(peer); e == nil && peer != "" {
			where = "the route to " + host
		}
		return nil, fmt.Sprintf("--transport auto: no RDMA device on %s (%v): TCP", where, err), nil
	}
	return p, "--transport auto: an RDMA device on the route to the peer", nil
}

// providerName is what the log and status call a provider: its name, or
// tcp for none.
func providerName(p rdma.Provider) string {
	if p == nil {
		return transportTCP
	}
	return p.Name()
}

// ringConfig is the rdma.Transport configuration over tcp with provider p.
// Its frames go to the agent as coming from src, so that a frame that is
// not a protocol message drops the connection of the transport it came
// on (this host has two: the listener and the dialer).
func (d *daemon) ringConfig(tcp tcpfallback.Config, p rdma.Provider, src *frameSource) rdma.Config {
	tcp.OnFrame = func(f transport.Frame) {
		d.fence.peerHeard()
		d.ag.HandleFrameFrom(src, f)
	}
	// A reader's frames are answered once per batch read (one
	// acknowledgement for all the log entries in it); the ring's poller
	// delivers frames unbatched, answered one by one.
	tcp.OnBatchEnd = func(transport.Lane) { d.ag.EndBatch() }
	spin := d.cfg.ringSpin
	if spin == 0 {
		spin = -1 // rdma.Config: never spin
	}
	return rdma.Config{TCP: tcp, Provider: p, WaitSpin: spin, Logger: d.log}
}
