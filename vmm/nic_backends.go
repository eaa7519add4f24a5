package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

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
// From the moment it is open the kernel queues the frames routed to the
// interface until they are read. So a replica that must not see the
// network yet (a secondary, whose inputs come from the log) must not hold
// an open TAP: the queue would fill with requests the primary has already
// answered, and the secondary would answer them again when it goes live.
// Give such a VM a PlugNIC and open and Plug the TAP at go-live.
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

// Close implements NICBackend.
func (u *UDPNIC) Close() error { return u.conn.Close() }

// PlugNIC is a NIC backend that starts unplugged and is later plugged into
// a real one. Unplugged, the VM's NIC is a cable to nowhere: WriteFrame
// drops each frame (and counts it in Dropped) and ReadFrame blocks. After
// Plug both go to the plugged backend, including the ReadFrame calls that
// were already waiting.
//
// It is what a secondary's VM gets: before it goes live its inputs come
// from the primary's log, so it must not read the network, and a TAP
// opened early would queue client requests the primary has already
// answered (see OpenTAP), which the secondary would answer again. The
// daemon opens the TAP and plugs it in at go-live, when the VM's NIC
// becomes the service's:
//
//	nic := vmm.NewPlugNIC()
//	m, err := vmm.New(vmm.Config{NIC: nic, ...}) // the secondary's VM
//	...                                          // it replays the log
//	tap, err := vmm.OpenTAP(name)                // go-live
//	if err := nic.Plug(tap); err != nil { tap.Close(); ... }
//
// The VM closes its NIC backend, and so the PlugNIC and what is plugged
// into it, when it closes. All methods are safe for concurrent use.
type PlugNIC struct {
	// plugged is set once, by Plug; read without mu on every frame.
	plugged atomic.Pointer[plug]
	dropped atomic.Uint64 // frames written while unplugged

	mu     sync.Mutex // serialises Plug and Close
	closed bool
	ready  chan struct{} // closed by the first Plug or Close: readers go on
}

// plug holds the plugged backend (an atomic.Pointer needs a concrete type).
type plug struct{ b NICBackend }

var _ NICBackend = (*PlugNIC)(nil)

// NewPlugNIC returns an unplugged PlugNIC.
func NewPlugNIC() *PlugNIC { return &PlugNIC{ready: make(chan struct{})} }

// Plug connects the NIC to b; from now on frames go to and come from b,
// and Close closes it. It fails, leaving b to the caller, if the NIC was
// already plugged or is closed.
func (p *PlugNIC) Plug(b NICBackend) error {
	if b == nil {
		return errors.New("PlugNIC: Plug of a nil backend: pass the TAP (or other backend) to connect")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("PlugNIC: Plug after Close: the NIC's VM is gone; close the backend instead: %w", errNICClosed)
	}
	if p.plugged.Load() != nil {
		return errors.New("PlugNIC: already plugged: a NIC is plugged once, at go-live")
	}
	p.plugged.Store(&plug{b: b})
	close(p.ready)
	return nil
}

// Plugged reports whether Plug has connected a backend.
func (p *PlugNIC) Plugged() bool { return p.plugged.Load() != nil }

// Dropped counts the frames written while the NIC was unplugged.
func (p *PlugNIC) Dropped() uint64 { return p.dropped.Load() }

// WriteFrame implements NICBackend: unplugged, the frame is dropped.
func (p *PlugNIC) WriteFrame(frame []byte) error {
	if pl := p.plugged.Load(); pl != nil {
		return pl.b.WriteFrame(frame)
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return errNICClosed
	}
	p.dropped.Add(1)
	return nil
}

// ReadFrame implements NICBackend: unplugged, it waits for Plug (and then
// reads from the plugged backend) or for Close.
func (p *PlugNIC) ReadFrame(buf []byte) (int, error) {
	<-p.ready
	if pl := p.plugged.Load(); pl != nil {
		return pl.b.ReadFrame(buf)
	}
	return 0, errNICClosed
}

// Close implements NICBackend: it closes the plugged backend, if any, and
// ends the reads waiting for a Plug. Later calls do nothing.
func (p *PlugNIC) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if pl := p.plugged.Load(); pl != nil {
		return pl.b.Close()
	}
	close(p.ready)
	return nil
}
