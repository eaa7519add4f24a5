package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// arpFrame builds an Ethernet frame carrying an ARP packet (RFC 826) for
// IPv4 over Ethernet, padded to the 60-byte minimum.
func arpFrame(op uint16, dst, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := make([]byte, 0, 60)
	b = append(b, dst...)
	b = append(b, sha...)
	b = binary.BigEndian.AppendUint16(b, 0x0806) // EtherType ARP
	b = binary.BigEndian.AppendUint16(b, 1)      // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, 0x0800) // protocol: IPv4
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa.AsSlice()...)
	b = append(b, tha...)
	b = append(b, tpa.AsSlice()...)
	return append(b, make([]byte, 60-len(b))...)
}

// arpReply is what the tests read of an ARP reply frame.
type arpReply struct {
	dst, sha net.HardwareAddr
	spa, tpa netip.Addr
}

func parseARPReply(f []byte) (arpReply, bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0806 || binary.BigEndian.Uint16(f[20:]) != 2 {
		return arpReply{}, false
	}
	spa, _ := netip.AddrFromSlice(f[28:32])
	tpa, _ := netip.AddrFromSlice(f[38:42])
	return arpReply{dst: net.HardwareAddr(f[0:6]), sha: net.HardwareAddr(f[22:28]), spa: spa, tpa: tpa}, true
}

// TestTAPReachesClient plays the VM on host a: it attaches to a's tap0 the
// way the daemon does, and asks on the wire, as 10.77.0.10 from the VM's MAC,
// who has the client's address. The question must cross a's bridge and the
// switch (the client learns the VM's MAC from it), and the client's answer
// must come back the same way into the TAP.
func TestTAPReachesClient(t *testing.T) {
	topo := upBed(t, "tap")
	ctx := testCtx(t, 20*time.Second)
	vmMAC, err := net.ParseMAC(VMMAC)
	if err != nil {
		t.Fatal(err)
	}
	vmAddr := netip.MustParseAddr(VMAddr)
	clientNeigh := func() string {
		out, err := topo.Run(ctx, Client, "ip", "neigh", "show", "dev", LinkName, VMAddr)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if n := clientNeigh(); strings.Contains(n, VMMAC) {
		t.Fatalf("before the VM spoke, the client already knows it: %q", n)
	}

	tap, err := topo.OpenTAP(HostA)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()

	replies := make(chan arpReply, 1)
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		if err := tap.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			readErr <- err
			return
		}
		for {
			n, err := tap.Read(buf)
			if err != nil {
				readErr <- err
				return
			}
			if r, ok := parseARPReply(buf[:n]); ok && r.spa == HostAddr(Client) {
				replies <- r
				return
			}
		}
	}()

	// The bridge may take a moment to see the TAP's carrier after the open,
	// and drops what arrives before: ask again until answered.
	request := arpFrame(1, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, vmMAC, vmAddr, make(net.HardwareAddr, 6), HostAddr(Client))
	ask := time.NewTicker(100 * time.Millisecond)
	defer ask.Stop()
	var reply arpReply
wait:
	for {
		if _, err := tap.Write(request); err != nil {
			t.Fatalf("writing into %s: %v", TAPName, err)
		}
		select {
		case reply = <-replies:
			break wait
		case err := <-readErr:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("no ARP reply from the client came back into %s of host a within 10s; client neighbours: %q", TAPName, clientNeigh())
			}
			t.Fatalf("reading %s: %v", TAPName, err)
		case <-ask.C:
		}
	}
	if !bytes.Equal(reply.sha, HostMAC(Client)) || !bytes.Equal(reply.dst, vmMAC) || reply.tpa != vmAddr {
		t.Errorf("ARP reply %+v, want one from %s (%s) to %s (%s)", reply, HostAddr(Client), HostMAC(Client), VMAddr, VMMAC)
	}
	if n := clientNeigh(); !strings.Contains(n, VMAddr+" lladdr "+VMMAC) {
		t.Errorf("after the VM's ARP request the client's neighbour table says %q, want %s at %s", n, VMAddr, VMMAC)
	}
	// Opening a's TAP attached a's VM only: b's TAP still has no carrier.
	if tap := links(t, topo.Namespace(HostB))[TAPName]; !strings.Contains(strings.Join(tap.Flags, ","), "NO-CARRIER") {
		t.Errorf("host b's %s has carrier with nobody attached: %v", TAPName, tap.Flags)
	}
}
