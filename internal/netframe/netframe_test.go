package netframe

import (
	"bytes"
	"testing"
)

// RFC 1071's worked example: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
func TestChecksumRFC1071Example(t *testing.T) {
	if got := OnesSum(0, []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != 0xddf2 {
		t.Fatalf("sum %#04x, want 0xddf2", got)
	}
	if got := Checksum([]byte{0xff}); got != 0x00ff {
		t.Fatalf("checksum of one odd byte 0xff: %#04x, want 0x00ff", got)
	}
}

func TestEchoRequestAndReply(t *testing.T) {
	payload := []byte("ftvm")
	req := AppendEchoRequest([]byte{0xaa}, 0x1234, 7, payload)[1:]
	if Checksum(req) != 0 {
		t.Fatalf("echo request %x does not verify", req)
	}
	if IsEchoReply(req, 0x1234, payload) {
		t.Fatal("a request taken for a reply")
	}
	reply := bytes.Clone(req)
	reply[0] = ICMPEchoReply
	reply[2], reply[3] = 0, 0
	c := Checksum(reply)
	reply[2], reply[3] = byte(c>>8), byte(c)
	if !IsEchoReply(reply, 0x1234, payload) || IsEchoReply(reply, 0x1235, payload) {
		t.Fatal("IsEchoReply does not match on the identifier")
	}
	reply[9] ^= 1
	if IsEchoReply(reply, 0x1234, payload) {
		t.Fatal("a reply with a bad checksum taken as intact")
	}
	ip := append(make([]byte, 20), req...)
	ip[0] = 0x45
	if !bytes.Equal(StripIPv4(ip), req) || StripIPv4(ip[:10]) != nil {
		t.Fatal("StripIPv4 does not strip a 20-byte header, or accepts a runt")
	}
}

func TestUDP4ChecksumsVerify(t *testing.T) {
	sip, dip := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	for _, payload := range [][]byte{nil, []byte("odd"), []byte("even")} {
		f := UDP4([6]byte{1}, [6]byte{2}, sip, dip, 40000, 7000, payload)
		if len(f) != UDPFrameHeaderBytes+len(payload) || !bytes.Equal(f[UDPFrameHeaderBytes:], payload) {
			t.Fatalf("frame %x does not end in its payload %q", f, payload)
		}
		if Checksum(f[14:34]) != 0 {
			t.Fatalf("IPv4 header checksum does not verify in %x", f)
		}
		udp := bytes.Clone(f[34:])
		sum := be.Uint16(udp[6:])
		udp[6], udp[7] = 0, 0
		if UDPChecksum(sip, dip, udp) != sum || sum == 0 {
			t.Fatalf("UDP checksum %#04x does not verify", sum)
		}
	}
}
