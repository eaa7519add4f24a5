package guests

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ftvm/ftvm/internal/netframe"
)

// Frames as the tests build and check them: Ethernet II, ARP for IPv4,
// IPv4 without options, UDP. Builders always produce valid frames; tests
// break them afterwards on purpose.

const (
	ethHdrLen  = 14
	ipHdrLen   = 20
	udpHdrLen  = 8
	arpLen     = 28
	typeIPv4   = 0x0800
	typeARP    = 0x0806
	typeIPv6   = 0x86dd
	protoUDP   = 17
	ipFlagMF   = 0x2000
	ipFlagDF   = 0x4000
	ipOffMask  = 0x1fff
	arpRequest = 1
	arpReply   = 2
)

type mac [6]byte
type ipv4 [4]byte

func (m mac) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 { return netframe.Checksum(b) }

func udpChecksum(src, dst ipv4, udp []byte) uint16 {
	pseudo := make([]byte, 0, 12+len(udp))
	pseudo = append(pseudo, src[:]...)
	pseudo = append(pseudo, dst[:]...)
	pseudo = append(pseudo, 0, protoUDP)
	pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
	pseudo = append(pseudo, udp...)
	return checksum(pseudo)
}

type udpPacket struct {
	SrcMAC, DstMAC   mac
	SrcIP, DstIP     ipv4
	SrcPort, DstPort uint16
	Proto            byte   // 0 means UDP
	FragField        uint16 // flags and fragment offset; 0 means DF
	Payload          []byte
}

// frame encodes p with correct checksums.
func (p udpPacket) frame() []byte {
	proto := p.Proto
	if proto == 0 {
		proto = protoUDP
	}
	frag := p.FragField
	if frag == 0 {
		frag = ipFlagDF
	}
	b := make([]byte, ethHdrLen+ipHdrLen+udpHdrLen+len(p.Payload))
	copy(b[0:], p.DstMAC[:])
	copy(b[6:], p.SrcMAC[:])
	binary.BigEndian.PutUint16(b[12:], typeIPv4)
	ip := b[ethHdrLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipHdrLen+udpHdrLen+len(p.Payload)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:], p.SrcIP[:])
	copy(ip[16:], p.DstIP[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip[:ipHdrLen]))
	udp := ip[ipHdrLen:]
	binary.BigEndian.PutUint16(udp[0:], p.SrcPort)
	binary.BigEndian.PutUint16(udp[2:], p.DstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpHdrLen+len(p.Payload)))
	copy(udp[udpHdrLen:], p.Payload)
	c := udpChecksum(p.SrcIP, p.DstIP, udp)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return b
}

// Offsets into a frame from udpPacket.frame, for tests that break one.
const (
	offIPCsum  = ethHdrLen + 10
	offUDPCsum = ethHdrLen + ipHdrLen + 6
)

// parseUDP decodes a frame the guest sent and checks everything a receiver
// would: Ethernet type, IPv4 header shape, header checksum, lengths, UDP
// length and checksum (which the guest must always compute).
func parseUDP(b []byte) (udpPacket, error) {
	var p udpPacket
	if len(b) < ethHdrLen+ipHdrLen+udpHdrLen {
		return p, fmt.Errorf("frame of %d bytes is too short for Ethernet+IPv4+UDP", len(b))
	}
	copy(p.DstMAC[:], b[0:])
	copy(p.SrcMAC[:], b[6:])
	if t := binary.BigEndian.Uint16(b[12:]); t != typeIPv4 {
		return p, fmt.Errorf("ethertype %#04x, want IPv4", t)
	}
	ip := b[ethHdrLen:]
	if ip[0] != 0x45 {
		return p, fmt.Errorf("IP version/IHL byte %#02x, want 0x45", ip[0])
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total < ipHdrLen+udpHdrLen || total > len(ip) {
		return p, fmt.Errorf("IP total length %d does not fit the %d bytes after the Ethernet header", total, len(ip))
	}
	ip = ip[:total]
	if c := checksum(ip[:ipHdrLen]); c != 0 {
		return p, fmt.Errorf("IP header checksum does not verify (residue %#04x)", c)
	}
	p.FragField = binary.BigEndian.Uint16(ip[6:])
	if p.FragField&(ipFlagMF|ipOffMask) != 0 {
		return p, errors.New("reply is a fragment")
	}
	if ip[8] == 0 {
		return p, errors.New("TTL 0")
	}
	p.Proto = ip[9]
	if p.Proto != protoUDP {
		return p, fmt.Errorf("IP protocol %d, want UDP", p.Proto)
	}
	copy(p.SrcIP[:], ip[12:])
	copy(p.DstIP[:], ip[16:])
	udp := ip[ipHdrLen:]
	if n := int(binary.BigEndian.Uint16(udp[4:])); n != len(udp) {
		return p, fmt.Errorf("UDP length %d, IP says %d", n, len(udp))
	}
	if binary.BigEndian.Uint16(udp[6:]) == 0 {
		return p, errors.New("UDP checksum is 0 (absent); the guest must compute it")
	}
	if c := udpChecksum(p.SrcIP, p.DstIP, udp); c != 0 {
		return p, fmt.Errorf("UDP checksum does not verify (residue %#04x)", c)
	}
	p.SrcPort = binary.BigEndian.Uint16(udp[0:])
	p.DstPort = binary.BigEndian.Uint16(udp[2:])
	p.Payload = append([]byte(nil), udp[udpHdrLen:]...)
	return p, nil
}

type arpPacket struct {
	EthSrc, EthDst mac
	Op             uint16
	SHA, THA       mac
	SPA, TPA       ipv4
}

func (a arpPacket) frame() []byte {
	b := make([]byte, ethHdrLen+arpLen)
	copy(b[0:], a.EthDst[:])
	copy(b[6:], a.EthSrc[:])
	binary.BigEndian.PutUint16(b[12:], typeARP)
	r := b[ethHdrLen:]
	binary.BigEndian.PutUint16(r[0:], 1)
	binary.BigEndian.PutUint16(r[2:], typeIPv4)
	r[4], r[5] = 6, 4
	binary.BigEndian.PutUint16(r[6:], a.Op)
	copy(r[8:], a.SHA[:])
	copy(r[14:], a.SPA[:])
	copy(r[18:], a.THA[:])
	copy(r[24:], a.TPA[:])
	return b
}

func parseARP(b []byte) (arpPacket, error) {
	var a arpPacket
	if len(b) < ethHdrLen+arpLen {
		return a, fmt.Errorf("frame of %d bytes is too short for ARP", len(b))
	}
	copy(a.EthDst[:], b[0:])
	copy(a.EthSrc[:], b[6:])
	if t := binary.BigEndian.Uint16(b[12:]); t != typeARP {
		return a, fmt.Errorf("ethertype %#04x, want ARP", t)
	}
	r := b[ethHdrLen:]
	if binary.BigEndian.Uint16(r[0:]) != 1 || binary.BigEndian.Uint16(r[2:]) != typeIPv4 || r[4] != 6 || r[5] != 4 {
		return a, fmt.Errorf("ARP header % x is not Ethernet/IPv4", r[:6])
	}
	a.Op = binary.BigEndian.Uint16(r[6:])
	copy(a.SHA[:], r[8:])
	copy(a.SPA[:], r[14:])
	copy(a.THA[:], r[18:])
	copy(a.TPA[:], r[24:])
	return a, nil
}
