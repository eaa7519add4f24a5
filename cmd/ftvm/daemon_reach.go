package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/internal/netframe"
	"github.com/ftvm/ftvm/lockstep"
)

// The reachability rule: a host that cannot reach the network the VM
// serves must not take the VM. With --reach-check, the daemon pings each
// target every --reach-interval (ICMP echo, raw socket) and watches the
// carrier of --reach-link; the VM network is reachable while the link has
// carrier and some target answered within --reach-lost-after. Then:
//
//   - The daemon never asks the arbiter for an epoch while the network is
//     unreachable (reachArbiter): the node's request fails, and the node
//     asks again until the network answers. An isolated primary therefore
//     cannot win against its secondary, and a secondary cut off from the
//     clients does not take over a VM it could not serve.
//   - A protected primary that has been unable to reach the network for
//     --reach-yield-after yields: it stops and exits with code 3, as a
//     halted daemon does, so that its secondary takes over (at once: the
//     connection breaks). Restart it as a secondary once its network is
//     back. A primary with no secondary in step never yields: nobody else
//     could serve.
//
// Pick a target only this host's own failure would hide, such as the VM
// network's gateway: while no target answers anywhere, no host takes an
// epoch, and a protected primary yields.

// reachability watches the VM network from this host. Safe for concurrent
// use.
type reachability struct {
	targets   []netip.Addr
	link      string // "" for no carrier check
	interval  time.Duration
	lostAfter time.Duration
	base      time.Time
	lastReply atomic.Int64 // ns since base of the latest echo reply; 0: none yet
	log       *slog.Logger
}

// String names what is checked, for messages.
func (r *reachability) String() string {
	var b strings.Builder
	for i, t := range r.targets {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(t.String())
	}
	if r.link != "" {
		fmt.Fprintf(&b, " via %s", r.link)
	}
	return b.String()
}

// start opens one echo socket per target (it needs root, for raw ICMP
// sockets) and probes until ctx ends.
func (r *reachability) start(ctx context.Context) error {
	r.base = time.Now()
	for _, t := range r.targets {
		conn, err := net.DialIP("ip4:icmp", nil, &net.IPAddr{IP: t.AsSlice()})
		if err != nil {
			return fmt.Errorf("--reach-check %s: opening an ICMP socket: %w (it needs root or CAP_NET_RAW)", t, err)
		}
		go r.probe(ctx, conn)
	}
	return nil
}

// probe pings one target every interval, and reads its replies.
func (r *reachability) probe(ctx context.Context, conn *net.IPConn) {
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	id := uint16(rand.Uint32())
	go func() {
		buf := make([]byte, 1500)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if isEchoReply(buf[:n], id) {
				r.lastReply.Store(max(1, int64(time.Since(r.base))))
			}
		}
	}()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for seq := uint16(1); ; seq++ {
		conn.Write(echoRequest(id, seq)) // a send that fails (no route) is a probe unanswered
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reachable reports whether the VM network answers from this host now.
func (r *reachability) Reachable() bool {
	if r.link != "" && !hasCarrier(r.link) {
		return false
	}
	last := r.lastReply.Load()
	return last != 0 && time.Since(r.base)-time.Duration(last) < r.lostAfter
}

// wait waits up to d (or until ctx ends) for the network to be reachable.
func (r *reachability) wait(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !r.Reachable() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(r.interval / 2):
		}
	}
	return true
}

// hasCarrier reads the link's carrier as the kernel reports it.
func hasCarrier(link string) bool {
	b, err := os.ReadFile("/sys/class/net/" + link + "/carrier")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// echoRequest is an ICMP echo request (the kernel adds the IP header).
func echoRequest(id, seq uint16) []byte {
	return netframe.AppendEchoRequest(nil, id, seq, []byte(reachPayload))
}

const reachPayload = "ftvm-reach-check"

// isEchoReply reports whether p (an IPv4 packet, as a raw ICMP socket
// reads it) is an intact echo reply to our id.
func isEchoReply(p []byte, id uint16) bool {
	return netframe.IsEchoReply(netframe.StripIPv4(p), id, []byte(reachPayload))
}

// reachAcquireWait is how long a request for an epoch waits for the VM
// network to answer before it fails (and the node asks again).
const reachAcquireWait = time.Second

// reachArbiter asks its arbiter only while the VM network is reachable:
// see the reachability rule above.
type reachArbiter struct {
	inner agent.Arbiter
	reach *reachability
	log   *slog.Logger
}

var _ agent.Arbiter = (*reachArbiter)(nil)

// Acquire implements agent.Arbiter. While the VM network is unreachable
// it fails without asking; the node asks again.
func (a *reachArbiter) Acquire(ctx context.Context, vmID string, epoch uint64) (bool, uint64, error) {
	if !a.reach.wait(ctx, reachAcquireWait) {
		a.log.Warn("not asking the arbiter: this host cannot reach the VM's network, so it must not take the VM", "epoch", epoch, "reach_check", a.reach.String())
		return false, 0, fmt.Errorf("the VM's network (%s) does not answer from this host: not asking for epoch %d until it does", a.reach, epoch)
	}
	return a.inner.Acquire(ctx, vmID, epoch)
}

// watchReach makes a protected primary that lost the VM network for
// --reach-yield-after yield (see the reachability rule).
func (d *daemon) watchReach(ctx context.Context) {
	t := time.NewTicker(d.cfg.reachInterval)
	defer t.Stop()
	var lostSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if d.reach.Reachable() {
			if !lostSince.IsZero() {
				d.log.Info("the VM's network answers again", "reach_check", d.reach.String(), "lost_for", time.Since(lostSince).Round(time.Millisecond))
			}
			lostSince = time.Time{}
			continue
		}
		if lostSince.IsZero() {
			lostSince = time.Now()
			d.log.Warn("the VM's network does not answer from this host", "reach_check", d.reach.String())
		}
		st := d.ag.Status()
		if st.Role == lockstep.RolePrimary && st.Protected && time.Since(lostSince) >= d.cfg.reachYieldAfter {
			d.log.Error("yielding: this primary cannot reach the VM's network and its secondary is in step; stopping so that the secondary takes over (restart this host as a secondary once its network is back)",
				"reach_check", d.reach.String(), "lost_for", time.Since(lostSince).Round(time.Millisecond))
			d.yielded.Store(true)
			d.ag.Stop()
			return
		}
	}
}
