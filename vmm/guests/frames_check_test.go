package guests

import (
	"encoding/binary"
	"strings"
	"testing"
)

// TestParseUDPCatchesBrokenFrames proves the checker the kvstore tests rely
// on: every reply passes through parseUDP, so it must refuse a frame with
// any of the faults a buggy guest could produce.
func TestParseUDPCatchesBrokenFrames(t *testing.T) {
	good := packet("1 OK 1\n").frame()
	if _, err := parseUDP(good); err != nil {
		t.Fatalf("a valid frame was refused: %v", err)
	}
	cases := []struct {
		name   string
		mangle func(b []byte) []byte
		says   string
	}{
		{"IP header bit flip", func(b []byte) []byte { b[ethHdrLen+8] ^= 1; return b }, "IP header checksum"},
		{"payload bit flip", func(b []byte) []byte { b[len(b)-2] ^= 1; return b }, "UDP checksum does not verify"},
		{"UDP checksum left out", func(b []byte) []byte { binary.BigEndian.PutUint16(b[offUDPCsum:], 0); return b }, "checksum is 0"},
		{"not IPv4", func(b []byte) []byte { binary.BigEndian.PutUint16(b[12:], typeARP); return b }, "ethertype"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-3] }, "IP total length"},
	}
	for _, c := range cases {
		b := c.mangle(append([]byte(nil), good...))
		_, err := parseUDP(b)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: parseUDP error %v, want one mentioning %q", c.name, err, c.says)
		}
	}
}
