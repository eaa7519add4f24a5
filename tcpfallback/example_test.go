package tcpfallback_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/tcpfallback"
)

// A secondary listens, a primary dials; a log entry goes one way and its
// acknowledgement comes back, each handled on the receiving lane's
// goroutine.
func Example() {
	psk := []byte("example-key-use-32-random-bytes!")
	acked := make(chan string, 1)

	var secondary *tcpfallback.Transport
	secondary, err := tcpfallback.Listen("127.0.0.1:0", tcpfallback.Config{
		VMID: "web1",
		PSK:  psk,
		OnFrame: func(f tcpfallback.Frame) {
			if f.Type == tcpfallback.TypeLog {
				// Acknowledge from the reader: no hand-off on the path.
				secondary.Send(tcpfallback.TypeAck, append([]byte("ack "), f.Payload...))
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer secondary.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	primary, err := tcpfallback.Dial(ctx, secondary.Addr(), tcpfallback.Config{
		VMID: "web1",
		PSK:  psk,
		OnFrame: func(f tcpfallback.Frame) {
			acked <- string(f.Payload) // copy: the payload is only lent
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer primary.Close()
	if err := secondary.WaitConnected(ctx); err != nil {
		fmt.Println(err)
		return
	}

	span := tcpfallback.AppendRecord(nil, []byte("entry 1"))
	if _, err := primary.SendSpan(tcpfallback.TypeLog, span); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(<-acked)
	// Output: ack entry 1
}
