// Package netframe builds and checks the few packets ftvm makes by hand:
// the Internet checksum (RFC 1071), ICMP echo messages (the daemon's
// reachability check and the test bed's ping) and Ethernet/IPv4/UDP frames
// (tests that talk to a guest's NIC). It does no I/O and allocates only
// what it returns.
package netframe

import "encoding/binary"

var be = binary.BigEndian

// OnesSum adds b to the one's-complement sum s (RFC 1071), folded to 16
// bits; an odd last byte counts as its high half.
func OnesSum(s uint16, b []byte) uint16 {
	sum := uint32(s)
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(be.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// Checksum is the Internet checksum of b: the complement of its one's-
// complement sum. Over a header or message that carries its own checksum
// it is 0.
func Checksum(b []byte) uint16 { return ^OnesSum(0, b) }

// ICMP message types used here.
const (
	ICMPEchoReply   = 0
	ICMPEchoRequest = 8
)

// AppendEchoRequest appends an ICMP echo request (RFC 792) with the given
// identifier, sequence number and payload to b, checksum filled in.
func AppendEchoRequest(b []byte, id, seq uint16, payload []byte) []byte {
	start := len(b)
	b = append(b, ICMPEchoRequest, 0, 0, 0)
	b = be.AppendUint16(b, id)
	b = be.AppendUint16(b, seq)
	b = append(b, payload...)
	be.PutUint16(b[start+2:], Checksum(b[start:]))
	return b
}

// IsEchoReply reports whether msg (an ICMP message, IP header stripped) is
// an intact echo reply with identifier id that carries payload.
func IsEchoReply(msg []byte, id uint16, payload []byte) bool {
	return len(msg) >= 8+len(payload) &&
		msg[0] == ICMPEchoReply && msg[1] == 0 &&
		be.Uint16(msg[4:]) == id &&
		string(msg[8:8+len(payload)]) == string(payload) &&
		Checksum(msg) == 0
}

// StripIPv4 returns the payload of an IPv4 packet (as a raw socket reads
// it: header included), or nil when p is shorter than its header says.
func StripIPv4(p []byte) []byte {
	if len(p) < 20 {
		return nil
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl {
		return nil
	}
	return p[ihl:]
}

// UDPFrameHeaderBytes is the Ethernet, IPv4 (no options) and UDP headers
// of a frame UDP4 builds: its payload starts there.
const UDPFrameHeaderBytes = 14 + 20 + 8

// UDP4 builds an Ethernet frame from src to dst carrying an IPv4/UDP
// datagram from sip:sport to dip:dport, both checksums filled in.
func UDP4(dst, src [6]byte, sip, dip [4]byte, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, UDPFrameHeaderBytes+len(payload))
	copy(f, dst[:])
	copy(f[6:], src[:])
	be.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17 // version 4, 20-byte header; TTL; UDP
	be.PutUint16(ip[2:], uint16(28+len(payload)))
	copy(ip[12:], sip[:])
	copy(ip[16:], dip[:])
	be.PutUint16(ip[10:], Checksum(ip))
	udp := f[34:]
	be.PutUint16(udp, sport)
	be.PutUint16(udp[2:], dport)
	be.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	be.PutUint16(udp[6:], UDPChecksum(sip, dip, udp))
	return f
}

// UDPChecksum is the checksum of a UDP datagram (header and payload, its
// checksum field zero) under the IPv4 pseudo-header; 0 is sent as 0xffff,
// since 0 means none.
func UDPChecksum(sip, dip [4]byte, udp []byte) uint16 {
	pseudo := make([]byte, 0, 12)
	pseudo = append(append(pseudo, sip[:]...), dip[:]...)
	pseudo = be.AppendUint16(append(pseudo, 0, 17), uint16(len(udp)))
	sum := ^OnesSum(OnesSum(0, pseudo), udp)
	if sum == 0 {
		sum = 0xffff
	}
	return sum
}
