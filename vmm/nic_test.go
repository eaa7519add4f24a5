package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/netframe"
	"github.com/ftvm/ftvm/internal/testutil"
	"golang.org/x/sys/unix"
)

func testFrame(payload string) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, DefaultMAC[:])
	copy(f[6:], []byte{0x02, 0, 0, 0, 0, 9})
	binary.BigEndian.PutUint16(f[12:], 0x88b5) // local experimental ethertype
	return append(f, payload...)
}

// udpPeer is the other end of a UDP NIC: the test plays the network.
func udpPeer(t testing.TB) (*UDPNIC, *net.UDPConn) {
	t.Helper()
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	nic, err := ListenUDPNIC("127.0.0.1:0", peer.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	return nic, peer
}

func TestNICOverUDP(t *testing.T) {
	backend, peer := udpPeer(t)
	b := newExitBench(t, benchOpts{nic: backend})

	b.mustCall(PortNIC, OpNICMAC, 0x2000, 0, 0)
	if got, _ := b.mem.Slice(0x2000, 6); !bytes.Equal(got, DefaultMAC[:]) {
		t.Fatalf("MAC %x", got)
	}
	// Nothing pending: RX answers 0, WAIT times out with 0.
	if _, n := b.mustCall(PortNIC, OpNICRX, 0x3000, 2048, 0); n != 0 {
		t.Fatalf("RX on an idle NIC returned %d", n)
	}
	if _, r := b.mustCall(PortNIC, OpNICWait, 0, 0, uint64(time.Millisecond)); r != 0 {
		t.Fatalf("WAIT on an idle NIC returned %d", r)
	}
	// A frame from the network wakes WAIT and RX copies it.
	in := testFrame("to the guest")
	go func() {
		time.Sleep(10 * time.Millisecond)
		peer.WriteToUDP(in, backend.LocalAddr())
	}()
	if _, r := b.mustCall(PortNIC, OpNICWait, 0, 0, uint64(time.Minute)); r != 1 {
		t.Fatalf("WAIT returned %d with a frame on the way", r)
	}
	if _, n := b.mustCall(PortNIC, OpNICRX, 0x3000, 2048, 0); n != uint64(len(in)) {
		t.Fatalf("RX returned %d, want %d", n, len(in))
	}
	if got, _ := b.mem.Slice(0x3000, uint64(len(in))); !bytes.Equal(got, in) {
		t.Fatalf("RX copied %q", got)
	}
	// TX reaches the peer.
	out := testFrame("from the guest")
	b.mem.Write(0x4000, out)
	b.mustCall(PortNIC, OpNICTX, 0x4000, uint32(len(out)), 0)
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _, err := peer.ReadFromUDP(buf)
	if err != nil || !bytes.Equal(buf[:n], out) {
		t.Fatalf("peer got %q, %v", buf[:n], err)
	}
}

func TestNICWaitIsInterruptible(t *testing.T) {
	interrupt := make(chan struct{}, 1)
	n := newNIC(nil, DefaultMAC, interrupt)
	defer n.close()
	const timeout = time.Hour
	done := make(chan Result, 1)
	go func() {
		r, _ := n.input(&Exit{Device: DeviceNIC, Op: OpNICWait, Arg: uint64(timeout)})
		done <- r
	}()
	interrupt <- struct{}{}
	select {
	case r := <-done:
		if r.Value != 0 {
			t.Fatalf("interrupted WAIT returned %d, want 0", r.Value)
		}
	case <-time.After(nicWaitMaxNs / 2):
		t.Fatal("WAIT ignored the interrupt")
	}
}

// TestTAPBackend runs the NIC over a TAP device in a network namespace the
// test creates, with the kernel's IP stack as the peer: a UDP datagram
// sent into the namespace comes out as a frame, and a frame written by the
// NIC is delivered to a socket.
func TestTAPBackend(t *testing.T) { runTAPScenario(t, tapScenario) }

// runTAPScenario runs scenario on a goroutine locked to a thread that the
// scenario moves into a network namespace of its own (it unshares), with
// the ip command at hand. The namespace belongs to that thread, which is
// thrown away when the goroutine ends (no UnlockOSThread).
func runTAPScenario(t *testing.T, scenario func(testing.TB) error) {
	testutil.Require(t, testutil.Root, testutil.Netns, testutil.TUN)
	if _, err := exec.LookPath("ip"); err != nil {
		testutil.SkipMissing(t, fmt.Errorf("the ip command (iproute2) is missing: apt-get install iproute2"), testutil.Netns, testutil.TUN)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("%v", r)
			}
		}()
		errc <- scenario(goroutineTB{t})
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// goroutineTB turns Fatalf into a panic, which the goroutine running the
// scenario recovers: FailNow may only be called on the test's goroutine.
type goroutineTB struct{ testing.TB }

func (g goroutineTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (g goroutineTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }

func tapScenario(t testing.TB) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	tap, err := OpenTAP("ftvmtap0")
	if err != nil {
		return err
	}
	defer tap.Close()
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "10.99.0.1/24", "dev", tap.Name()},
		{"link", "set", tap.Name(), "address", "02:00:00:00:00:01", "up"},
		{"neigh", "add", "10.99.0.2", "lladdr", "02:66:74:76:6d:01", "dev", tap.Name()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Logf("ip %v: %s", args, out)
			return err
		}
	}
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 5555})
	if err != nil {
		return err
	}
	defer rx.Close()

	b := newExitBench(t, benchOpts{nic: tap})
	// Kernel → guest: a datagram to the guest's address leaves the TAP.
	tx, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: 7000})
	if err != nil {
		return err
	}
	defer tx.Close()
	if _, err := tx.Write([]byte("ping")); err != nil {
		return err
	}
	for {
		if _, r := b.mustCall(PortNIC, OpNICWait, 0, 0, uint64(5*time.Second)); r != 1 {
			t.Error("no frame came out of the TAP device")
			return nil
		}
		_, n := b.mustCall(PortNIC, OpNICRX, 0x3000, 2048, 0)
		f, _ := b.mem.Slice(0x3000, n)
		if n > 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && string(f[42:n]) == "ping" {
			break // skip IPv6 router solicitations and the like
		}
	}
	// Guest → kernel: a UDP frame from 10.99.0.2 to 10.99.0.1:5555.
	frame := udpFrame([6]byte{2, 0, 0, 0, 0, 1}, DefaultMAC, [4]byte{10, 99, 0, 2}, [4]byte{10, 99, 0, 1}, 7000, 5555, []byte("pong"))
	b.mem.Write(0x4000, frame)
	b.mustCall(PortNIC, OpNICTX, 0x4000, uint32(len(frame)), 0)
	rx.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, _, err := rx.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Errorf("socket got %q, %v; want the guest's datagram", buf[:n], err)
	}
	return nil
}

// udpFrame builds an Ethernet/IPv4/UDP frame.
func udpFrame(dst, src [6]byte, sip, dip [4]byte, sport, dport uint16, payload []byte) []byte {
	return netframe.UDP4(dst, src, sip, dip, sport, dport, payload)
}
