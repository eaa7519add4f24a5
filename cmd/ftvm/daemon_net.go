package main

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
	"golang.org/x/sys/unix"
)

// peerLink is the agent's Transport: it sends through whichever transport
// reaches the peer now. A secondary sends through the connection it dialed
// to its primary; a primary (and a secondary once it goes live) through
// its listener, to whichever secondary has joined.
type peerLink struct {
	cur atomic.Pointer[tcpfallback.Transport]
}

var _ agent.Transport = (*peerLink)(nil)

func (l *peerLink) set(t *tcpfallback.Transport) { l.cur.Store(t) }

func (l *peerLink) current() *tcpfallback.Transport { return l.cur.Load() }

// Send implements agent.Transport. Before any connection exists it fails
// like a lane that is down; the protocol resends.
func (l *peerLink) Send(typ transport.Type, payload []byte) error {
	t := l.cur.Load()
	if t == nil {
		return fmt.Errorf("%w: not connected to a peer yet", transport.ErrLaneDown)
	}
	return t.Send(typ, payload)
}

// TrySend implements agent.TrySender: the transport's readers send with
// it, so that they never wait for room in a socket.
func (l *peerLink) TrySend(typ transport.Type, payload []byte) error {
	t := l.cur.Load()
	if t == nil {
		return fmt.Errorf("%w: not connected to a peer yet", transport.ErrLaneDown)
	}
	return t.TrySend(typ, payload)
}

var _ agent.TrySender = (*peerLink)(nil)

// gratuitousARP is the frame a new primary sends so that switches learn the
// VM's MAC on its port and neighbours refresh their caches: a broadcast
// ARP request from mac asking for ip, which ip itself answers for (sender
// and target protocol address both ip, RFC 5227 section 3).
func gratuitousARP(mac [6]byte, ip [4]byte) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac[:])
	binary.BigEndian.PutUint16(f[12:], 0x0806) // ARP
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac[:])
	copy(a[14:18], ip[:])
	// target hardware address stays zero
	copy(a[24:28], ip[:])
	return f
}

// setLinkUp sets IFF_UP on the interface name (in this process's network
// namespace), as `ip link set NAME up` does.
func setLinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS: %w", err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS: %w", err)
	}
	return nil
}
