package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, errNICClosed)
}

// TAP is a NIC backend on a Linux TAP device (IFF_TAP|IFF_NO_PI): each read
// or write on the file is one Ethernet frame. The interface is created in
// the network namespace of the calling thread.
type TAP struct {
	f    *os.File
	name string
}

var _ NICBackend = (*TAP)(nil)

// OpenTAP creates (or attaches to) the TAP interface name; an empty name
// lets the kernel pick one (Name says which). It needs CAP_NET_ADMIN.
//
// From the moment it is open the interface has carrier, and the kernel
// queues the frames routed to it until they are read. A replica that must
// not see the network yet (a secondary, whose inputs come from the log)
// must not read those frames, nor find them queued when it goes live:
// they are requests the primary has already answered. But it must not
// open the TAP only at go-live either: the carrier would come up then,
// and a bridge may take up to a second to forward to the port. Hold the
// TAP for the host's whole life in a NICGate, which drains and drops the
// frames until the host goes live and lends the TAP to one VM after
// another.
func OpenTAP(name string) (*TAP, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w (needs CONFIG_TUN and CAP_NET_ADMIN)", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %q: %w (needs CAP_NET_ADMIN)", name, err)
	}
	// A non-blocking fd joins Go's poller, so Close wakes a blocked read.
	return &TAP{f: os.NewFile(uintptr(fd), "/dev/net/tun"), name: ifr.Name()}, nil
}

// Name is the interface's name.
func (t *TAP) Name() string { return t.name }

// WriteFrame implements NICBackend.
func (t *TAP) WriteFrame(frame []byte) error {
	_, err := t.f.Write(frame)
	return err
}

// ReadFrame implements NICBackend.
func (t *TAP) ReadFrame(buf []byte) (int, error) { return t.f.Read(buf) }

// SetReadDeadline makes a ReadFrame blocked now or later fail with
// os.ErrDeadlineExceeded once d has passed (at once if d is in the past);
// the zero time clears it. A NICGate uses it to end one VM's read without
// closing the TAP.
func (t *TAP) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// Close implements NICBackend.
func (t *TAP) Close() error { return t.f.Close() }

// UDPNIC is a NIC backend for machines without root: each UDP datagram
// carries one Ethernet frame. Frames go to the peer address; only
// datagrams from the peer are taken as frames.
type UDPNIC struct {
	conn *net.UDPConn
	peer *net.UDPAddr
}

var _ NICBackend = (*UDPNIC)(nil)

// ListenUDPNIC binds local ("127.0.0.1:0" picks a port) and sends frames
// to peer.
func ListenUDPNIC(local, peer string) (*UDPNIC, error) {
	la, err := net.ResolveUDPAddr("udp", local)
	if err != nil {
		return nil, fmt.Errorf("UDP NIC local address %q: %w", local, err)
	}
	pa, err := net.ResolveUDPAddr("udp", peer)
	if err != nil {
		return nil, fmt.Errorf("UDP NIC peer address %q: %w", peer, err)
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, fmt.Errorf("UDP NIC: %w", err)
	}
	return &UDPNIC{conn: c, peer: pa}, nil
}

// LocalAddr is the bound address (to give the peer).
func (u *UDPNIC) LocalAddr() *net.UDPAddr { return u.conn.LocalAddr().(*net.UDPAddr) }

// WriteFrame implements NICBackend.
func (u *UDPNIC) WriteFrame(frame []byte) error {
	_, err := u.conn.WriteToUDP(frame, u.peer)
	return err
}

// ReadFrame implements NICBackend.
func (u *UDPNIC) ReadFrame(buf []byte) (int, error) {
	for {
		n, from, err := u.conn.ReadFromUDP(buf)
		if err != nil {
			return 0, err
		}
		if from.Port == u.peer.Port && from.IP.Equal(u.peer.IP) {
			return n, nil
		}
	}
}

// SetReadDeadline is TAP.SetReadDeadline for the socket.
func (u *UDPNIC) SetReadDeadline(d time.Time) error { return u.conn.SetReadDeadline(d) }

// Close implements NICBackend.
func (u *UDPNIC) Close() error { return u.conn.Close() }
