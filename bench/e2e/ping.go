package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/ftvm/ftvm/internal/netframe"
)

// pingInterval is the time between two echo requests of one Ping.
const pingInterval = 100 * time.Millisecond

// pingPayload marks this package's echo requests.
const pingPayload = "ftvm-e2e-ping"

// Ping sends ICMP echo requests from a machine's namespace to addr, one
// every 100 ms, until one is answered (nil) or ctx ends (an error saying how
// many went unanswered). Without a deadline in ctx it gives up after
// DefaultPingTimeout. It needs no ping binary: the requests go out on a raw
// socket opened in the namespace.
func (t *Topology) Ping(ctx context.Context, from Host, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("ping %s: only IPv4 addresses are on the test bed", addr)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	ns := t.Namespace(from)
	var conn *net.IPConn
	err := t.InNamespace(from, func() (err error) {
		// Connected, so the kernel delivers to it only ICMP from addr.
		conn, err = net.DialIP("ip4:icmp", nil, &net.IPAddr{IP: addr.AsSlice()})
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s from namespace %s: %w", addr, ns, err)
	}
	defer conn.Close()

	start := time.Now()
	id := uint16(rand.Uint32())
	buf := make([]byte, 1500)
	sent := 0
	var lastErr error
	for seq := uint16(1); ctx.Err() == nil; seq++ {
		if _, err := conn.Write(appendEchoRequest(nil, id, seq)); err != nil {
			lastErr = err // e.g. EHOSTUNREACH once ARP gave up: keep trying
		} else {
			sent++
		}
		next := time.Now().Add(pingInterval)
		if next.After(deadline) {
			next = deadline
		}
		if err := conn.SetReadDeadline(next); err != nil {
			return fmt.Errorf("ping %s from namespace %s: %w", addr, ns, err)
		}
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					lastErr = err
				}
				break
			}
			if isEchoReply(buf[:n], id) {
				return nil
			}
		}
	}
	detail := ""
	if lastErr != nil {
		detail = fmt.Sprintf(" (last error: %v)", lastErr)
	}
	return fmt.Errorf("ping %s from namespace %s: no echo reply to %d requests in %v%s",
		addr, ns, sent, time.Since(start).Round(time.Millisecond), detail)
}

// appendEchoRequest appends an ICMP echo request (RFC 792) to b.
func appendEchoRequest(b []byte, id, seq uint16) []byte {
	return netframe.AppendEchoRequest(b, id, seq, []byte(pingPayload))
}

// isEchoReply reports whether msg (an ICMP message, IP header stripped) is
// an intact echo reply to one of this package's requests with identifier id.
func isEchoReply(msg []byte, id uint16) bool {
	return netframe.IsEchoReply(msg, id, []byte(pingPayload))
}

// internetChecksum is the RFC 1071 checksum of b; over a message that
// carries its checksum it is 0.
func internetChecksum(b []byte) uint16 { return netframe.Checksum(b) }
