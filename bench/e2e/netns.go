package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// InNamespace runs fn on an OS thread that has joined a machine's network
// namespace, and returns fn's error. It is how Go code in this process acts
// as one of the machines without a helper process.
//
// A socket (or TAP file) that fn creates belongs to that namespace for its
// whole life, and may be used from any goroutine once fn has returned it:
//
//	var ln net.Listener
//	err := topo.InNamespace(e2e.HostB, func() (err error) {
//		ln, err = net.Listen("tcp", "10.77.0.2:7070")
//		return err
//	})
//
// Only fn's own goroutine is in the namespace: goroutines that fn starts run
// elsewhere, and so does anything the runtime does in the background (name
// resolution among it, so fn should give addresses as IP literals).
func (t *Topology) InNamespace(h Host, fn func() error) error {
	ns := t.Namespace(h)
	path := filepath.Join(netnsDir, ns)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening network namespace %s (%s): %w (is the test bed up?)", ns, path, err)
	}
	defer unix.Close(fd)
	errc := make(chan error, 1)
	go func() {
		// setns(2) moves only the calling thread, so the goroutine is locked
		// to its thread before the move, and it is never unlocked: when the
		// goroutine ends, the runtime then destroys the thread rather than
		// hand a thread that lives in another namespace to unrelated
		// goroutines (which would open their sockets in the wrong network).
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns into network namespace %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial connects from a machine's namespace, like net.Dialer.DialContext. The
// address must be an IP literal with a port ("10.77.0.2:7070"): names would
// be resolved outside the namespace. The dial is bounded by ctx and by the
// command timeout.
func (t *Topology) Dial(ctx context.Context, from Host, network, address string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(address); err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: want an IP literal and a port: %w", network, address, from, err)
	}
	var conn net.Conn
	err := t.InNamespace(from, func() error {
		d := net.Dialer{Timeout: t.cmdTimeout}
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from namespace %s: %w", network, address, t.Namespace(from), err)
	}
	return conn, nil
}

// Listen opens a stream listener in a machine's namespace, like net.Listen.
// The host part of address must be empty or an IP literal.
func (t *Topology) Listen(h Host, network, address string) (net.Listener, error) {
	if err := checkListenAddr(address); err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, address, h, err)
	}
	var ln net.Listener
	err := t.InNamespace(h, func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in namespace %s: %w", network, address, t.Namespace(h), err)
	}
	return ln, nil
}

// ListenPacket opens a datagram socket in a machine's namespace, like
// net.ListenPacket. The host part of address must be empty or an IP literal.
func (t *Topology) ListenPacket(h Host, network, address string) (net.PacketConn, error) {
	if err := checkListenAddr(address); err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, address, h, err)
	}
	var pc net.PacketConn
	err := t.InNamespace(h, func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in namespace %s: %w", network, address, t.Namespace(h), err)
	}
	return pc, nil
}

func checkListenAddr(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("want an IP literal, not a name: %w", err)
	}
	return nil
}

// OpenTAP opens the VM's TAP (tap0) on HostA or HostB as the VM's side of
// it, the way the ftvm daemon does: /dev/net/tun with TUNSETIFF
// IFF_TAP|IFF_NO_PI, from inside the host's namespace. Each Read returns one
// Ethernet frame the host's bridge sends to the VM, each Write sends one
// frame from the VM; the file is non-blocking, so deadlines work. While the
// file is open the TAP has carrier and the bridge forwards into it (the
// kernel may take up to a second to notice); close it to detach the VM.
func (t *Topology) OpenTAP(h Host) (*os.File, error) {
	if h != HostA && h != HostB {
		return nil, fmt.Errorf("open TAP on %q: only hosts %q and %q have one", h, HostA, HostB)
	}
	var fd int
	err := t.InNamespace(h, func() error {
		// The kernel binds a tun file to the namespace of the thread that
		// opens it, and looks the device name up there.
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(TAPName)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s (IFF_TAP|IFF_NO_PI): %w", TAPName, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open %s in namespace %s: %w", TAPName, t.Namespace(h), err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+t.Namespace(h)+"/"+TAPName), nil
}
