package kvclient

import (
	"context"
	"net"
	"testing"

	"github.com/ftvm/ftvm/bench/linearize"
)

// BenchmarkRoundTrip: one GET at a time against the loopback test fake,
// through Client.Do and, as the baseline in the same run, as a bare
// write/read on a connected UDP socket. The ratio is the client's overhead
// (id matching, timer, history record) over the network round trip.
func BenchmarkRoundTrip(b *testing.B) {
	f := startFakeKV(b)
	req := Request{Kind: linearize.Get, Key: "k"}
	b.Run("baseline=raw-udp", func(b *testing.B) {
		raddr, _ := net.ResolveUDPAddr("udp", f.addr())
		conn, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		datagram := AppendRequest(nil, 1, req)
		buf := make([]byte, replyBytesMax)
		for i := 0; i < b.N; i++ {
			if _, err := conn.Write(datagram); err != nil {
				b.Fatal(err)
			}
			if _, err := conn.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("client.Do", func(b *testing.B) {
		c, err := Dial(f.addr())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		for i := 0; i < b.N; i++ {
			op, err := c.Do(context.Background(), req, Retry{})
			if err != nil || op.Outcome != linearize.OK {
				b.Fatalf("%v %v", op.String(), err)
			}
		}
	})
}
