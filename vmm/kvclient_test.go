package vmm

import (
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"
)

// kvClient plays a client on the network of a UDP NIC: it wraps kvstore
// requests in Ethernet/IPv4/UDP frames and unwraps the answers.
type kvClient struct {
	conn  *net.UDPConn
	nic   *net.UDPAddr
	mac   [6]byte
	ip    [4]byte
	guest [4]byte
}

// kvstore's defaults: 10.77.0.2, UDP port 7000.
const kvGuestPort = 7000

func newKVClient(t testing.TB, conn *net.UDPConn, nic *net.UDPAddr) *kvClient {
	return &kvClient{conn: conn, nic: nic, mac: [6]byte{2, 0, 0, 0, 0, 0x42}, ip: [4]byte{10, 77, 0, 1}, guest: [4]byte{10, 77, 0, 2}}
}

const kvReplyTimeout = 30 * time.Second

func (c *kvClient) do(t testing.TB, req string) string {
	t.Helper()
	f := udpFrame(DefaultMAC, c.mac, c.ip, c.guest, 40000, kvGuestPort, []byte(req))
	setUDPChecksum(f)
	if _, err := c.conn.WriteToUDP(f, c.nic); err != nil {
		t.Fatalf("send: %v", err)
	}
	buf := make([]byte, 2048)
	for {
		c.conn.SetReadDeadline(time.Now().Add(kvReplyTimeout))
		n, _, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("no answer to %q: %v", req, err)
		}
		f := buf[:n]
		if n < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 17 {
			continue
		}
		return strings.TrimSpace(string(f[42:n]))
	}
}

// setUDPChecksum fills in the UDP checksum of a frame from udpFrame.
func setUDPChecksum(f []byte) {
	ip := f[14:]
	udp := ip[20:]
	udp[6], udp[7] = 0, 0
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ip[12:20])
	sum += 17 + uint32(len(udp))
	add(udp)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
}
