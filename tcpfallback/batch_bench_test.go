package tcpfallback

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSendBatch sends k acknowledgement-sized frames at a time to a
// peer over loopback that counts them, b.N times as one SendBatch and,
// as the baseline in the same run, b.N times as k Sends, and reports for
// each the time and the process's CPU (sender and receiver together) per
// frame, the CPU's ratio (cpu-x-send: a Send's over a batch's) and the
// writes per frame. ns/op covers both phases. The peer's reader ends a
// batch per read (OnBatchEnd set), as the daemon's does.
func BenchmarkSendBatch(b *testing.B) {
	dir := b.TempDir()
	if err := WriteTestCertificates(dir, "primary", "secondary"); err != nil {
		b.Fatal(err)
	}
	for _, auth := range []string{"psk", "tls"} {
		for _, k := range []int{1, 3, 8} {
			b.Run(fmt.Sprintf("%s/frames=%d", auth, k), func(b *testing.B) { benchSendBatch(b, dir, auth, k) })
		}
	}
}

func benchSendBatch(b *testing.B, dir, auth string, k int) {
	var got atomic.Int64
	cfg := func(host string) Config {
		c := Config{VMID: "vm-bench", OnFrame: func(Frame) { got.Add(1) }, OnBatchEnd: func(Lane) {},
			HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 5 * time.Second}
		if auth == "psk" {
			c.PSK = testPSK
		} else {
			var err error
			if c.TLS, err = LoadTLSConfig(dir, host); err != nil {
				b.Fatal(err)
			}
		}
		return c
	}
	l, err := Listen("127.0.0.1:0", cfg("secondary"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	d, err := Dial(ctx, l.Addr(), cfg("primary"))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := l.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	frames := make([]OutFrame, k)
	for i := range frames {
		frames[i] = OutFrame{Type: TypeAck, Payload: make([]byte, 40)}
	}
	wait := func(n int64) {
		deadline := time.Now().Add(hangGuard)
		for got.Load() < n {
			if time.Now().After(deadline) {
				b.Fatalf("the peer got %d of %d frames", got.Load(), n)
			}
			time.Sleep(10 * time.Microsecond)
		}
	}
	// Each phase sends b.N times k frames and waits for the peer to
	// have them all; its time and the process's CPU (both ends are in
	// it) are per frame.
	sent := int64(0)
	phase := func(send func()) (wall, cpu time.Duration, writes uint64) {
		w0, c0, t0 := dataWrites(d, LaneControl), cpuTime(b), time.Now()
		for range b.N {
			send()
		}
		sent += int64(b.N * k)
		wait(sent)
		return time.Since(t0), cpuTime(b) - c0, dataWrites(d, LaneControl) - w0
	}
	b.ResetTimer()
	batchT, batchC, batchW := phase(func() {
		if _, err := d.SendBatch(frames); err != nil {
			b.Fatal(err)
		}
	})
	sendT, sendC, sendW := phase(func() {
		for _, f := range frames {
			if err := d.Send(f.Type, f.Payload); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	n := float64(b.N * k)
	b.ReportMetric(float64(batchT.Nanoseconds())/n, "ns/frame-batch")
	b.ReportMetric(float64(sendT.Nanoseconds())/n, "ns/frame-send")
	b.ReportMetric(float64(batchC.Nanoseconds())/n, "cpu-ns/frame-batch")
	b.ReportMetric(float64(sendC.Nanoseconds())/n, "cpu-ns/frame-send")
	b.ReportMetric(float64(sendC)/float64(batchC), "cpu-x-send")
	b.ReportMetric(float64(batchW)/n, "writes/frame-batch")
	b.ReportMetric(float64(sendW)/n, "writes/frame-send")
}

// cpuTime is the process's user and system time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
