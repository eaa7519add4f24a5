package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// clientWire records, on the client's link, when the frames of a
// failover pass it, by the kernel's timestamps: the VM's gratuitous ARPs
// and its replies arriving. It is how a test splits the client's wait
// after a take-over into what the new primary took to put a reply on the
// client's link and what the client took to read it.
type clientWire struct {
	fd   int
	done chan struct{}

	mu      sync.Mutex
	garps   []time.Time // in arrival order
	replies []wireReply
	err     error
}

// wireReply is a reply datagram from the VM: when it passed, and the
// request id it answers.
type wireReply struct {
	at time.Time
	id uint64
}

// clientWireReadTimeout bounds each read, so that stop is seen.
const clientWireReadTimeout = 100 * time.Millisecond

// watchClientWire starts recording on the client's eth0 until the test
// ends.
func watchClientWire(t *testing.T, topo *Topology) *clientWire {
	t.Helper()
	w := &clientWire{fd: -1, done: make(chan struct{})}
	err := topo.InNamespace(Client, func() error {
		ifi, err := net.InterfaceByName(LinkName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		w.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("binding the packet socket to %s: %w", LinkName, err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
		tv := unix.NsecToTimeval(clientWireReadTimeout.Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		if w.fd >= 0 {
			unix.Close(w.fd)
		}
		t.Fatalf("watching the client's link: %v", err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		w.read()
	}()
	t.Cleanup(func() {
		close(w.done)
		<-stopped
		unix.Close(w.fd)
	})
	return w
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (w *clientWire) read() {
	vmMAC, _ := net.ParseMAC(VMMAC)
	vm := netip.MustParseAddr(VMAddr).As4()
	buf, oob := make([]byte, 128), make([]byte, 128)
	for {
		select {
		case <-w.done:
			return
		default:
		}
		n, oobn, _, _, err := unix.Recvmsg(w.fd, buf, oob, unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		at, ok := packetTime(oob[:oobn])
		if !ok || n < 14 {
			continue
		}
		f := buf[:min(n, len(buf))]
		switch binary.BigEndian.Uint16(f[12:14]) {
		case 0x0806:
			if bytes.Equal(f[6:12], vmMAC) {
				w.mu.Lock()
				w.garps = append(w.garps, at)
				w.mu.Unlock()
			}
		case 0x0800:
			if len(f) < 14+20 || f[14+9] != unix.IPPROTO_UDP {
				break
			}
			ihl := int(f[14]&0x0f) * 4
			if len(f) < 14+ihl+8 || [4]byte(f[14+12:14+16]) != vm || binary.BigEndian.Uint16(f[14+ihl:]) != kvPort {
				break
			}
			// "<id> ...": the request it answers.
			var id uint64
			payload := f[14+ihl+8:]
			for _, c := range payload {
				if c < '0' || c > '9' {
					break
				}
				id = id*10 + uint64(c-'0')
			}
			w.mu.Lock()
			w.replies = append(w.replies, wireReply{at: at, id: id})
			w.mu.Unlock()
		}
	}
}

// kvPort is the kvstore guest's UDP port.
const kvPort = 7000

// packetTime is the kernel's timestamp of a packet (SCM_TIMESTAMPNS).
func packetTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec, nsec := int64(binary.NativeEndian.Uint64(m.Data[0:])), int64(binary.NativeEndian.Uint64(m.Data[8:]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}

// clientSide is what the client's link saw after a take-over: from the
// new primary going live to its announcement passing the link, and to
// the first reply that answers a request still unanswered (not a second
// reply to an answered one: the new primary releases again the last
// outputs of the log it replayed, which the old primary may have
// released); then from that reply on the link to the client recording
// it (its own delay: the kernel's socket, its reader, the Go scheduler).
type clientSide struct {
	announce, onLink, clientRead time.Duration
	ok                           bool
}

func (c clientSide) String() string {
	if !c.ok {
		return "the client's link saw no announcement and answer after live"
	}
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("announcement on the client's link %v, first answer on it %v, the client read it %v later", r(c.announce), r(c.onLink), r(c.clientRead))
}

// after splits the client's wait after a host went live at live; served
// has, for every request the client saw answered, when (a reply to one
// answered before live is a second reply).
func (w *clientWire) after(live time.Time, served map[uint64]time.Time) clientSide {
	w.mu.Lock()
	defer w.mu.Unlock()
	sort.Slice(w.garps, func(i, j int) bool { return w.garps[i].Before(w.garps[j]) })
	sort.Slice(w.replies, func(i, j int) bool { return w.replies[i].at.Before(w.replies[j].at) })
	i := sort.Search(len(w.garps), func(i int) bool { return !w.garps[i].Before(live) })
	j := sort.Search(len(w.replies), func(i int) bool { return !w.replies[i].at.Before(live) })
	if i == len(w.garps) {
		return clientSide{}
	}
	for ; j < len(w.replies); j++ {
		r := w.replies[j]
		if got, ok := served[r.id]; ok && got.After(live) {
			return clientSide{announce: w.garps[i].Sub(live), onLink: r.at.Sub(live), clientRead: got.Sub(r.at), ok: true}
		}
	}
	return clientSide{}
}
