package e2e

import (
	"encoding/binary"
	"testing"
)

func TestInternetChecksum(t *testing.T) {
	// RFC 1071's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, so the
	// checksum is its complement.
	if got := internetChecksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Errorf("checksum = %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	if got := internetChecksum([]byte{0xff}); got != 0x00ff {
		t.Errorf("odd length: checksum = %#04x, want 0x00ff", got)
	}
}

func TestEchoRequestAndReply(t *testing.T) {
	req := appendEchoRequest([]byte("keep"), 0x1234, 7)
	if string(req[:4]) != "keep" {
		t.Fatalf("appendEchoRequest overwrote its prefix")
	}
	msg := req[4:]
	if msg[0] != 8 || binary.BigEndian.Uint16(msg[4:]) != 0x1234 || binary.BigEndian.Uint16(msg[6:]) != 7 {
		t.Fatalf("request header % x", msg[:8])
	}
	if internetChecksum(msg) != 0 {
		t.Fatalf("request checksum does not verify")
	}
	if isEchoReply(msg, 0x1234) {
		t.Errorf("a request was taken for a reply")
	}
	// The reply a host sends: type 0, same id, seq and payload, checksum
	// adjusted by the type change.
	reply := append([]byte(nil), msg...)
	reply[0] = 0
	binary.BigEndian.PutUint16(reply[2:], 0)
	binary.BigEndian.PutUint16(reply[2:], internetChecksum(reply))
	if !isEchoReply(reply, 0x1234) {
		t.Errorf("a good reply was refused")
	}
	if isEchoReply(reply, 0x4321) {
		t.Errorf("a reply to another id was taken")
	}
	reply[len(reply)-1] ^= 1
	if isEchoReply(reply, 0x1234) {
		t.Errorf("a corrupted reply was taken")
	}
}
