//go:build ftvm_rdma && cgo && linux

package verbs

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/rdma"
)

// rttMsgSize is the message of every RTT here, and of ib_write_lat's run.
const rttMsgSize = 64

// pingPong measures n round trips of an rttMsgSize WRITE_WITH_IMM from a
// to b and back, b answering from its own goroutine, both spinning on
// Poll (as perftest does). It returns the sorted round-trip times.
func pingPong(tb testing.TB, a, b rdma.Link, n int) []time.Duration {
	tb.Helper()
	echoErr := make(chan error, 1)
	go func() {
		buf := make([]uint32, 0, 1)
		for i := 0; i < n; {
			k, err := b.Poll(buf)
			if err != nil {
				echoErr <- err
				return
			}
			if k == 0 {
				continue
			}
			if err := b.WriteImm(0, rttMsgSize, buf[:1][0]); err != nil {
				echoErr <- err
				return
			}
			i++
		}
		echoErr <- nil
	}()
	rtts := make([]time.Duration, n)
	buf := make([]uint32, 0, 1)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := a.WriteImm(0, rttMsgSize, uint32(i)); err != nil {
			tb.Fatal(err)
		}
		for {
			k, err := a.Poll(buf)
			if err != nil {
				tb.Fatal(err)
			}
			if k == 1 {
				break
			}
		}
		rtts[i] = time.Since(t0)
		if buf[:1][0] != uint32(i) {
			tb.Fatalf("echo %d, want %d", buf[:1][0], i)
		}
	}
	if err := <-echoErr; err != nil {
		tb.Fatal(err)
	}
	slices.Sort(rtts)
	return rtts
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[int(q*float64(len(sorted)-1))]
}

// BenchmarkRTT: b.N round trips of a 64-byte WRITE_WITH_IMM and its echo
// over the verbs transport, two endpoints of one device in one process.
// ns/op is the mean round trip; p50 and p99 are reported beside it.
func BenchmarkRTT(b *testing.B) {
	p := newProvider(b)
	x, y := pair(b, p, 4096, 4096)
	pingPong(b, x, y, 100) // warm up
	b.ResetTimer()
	rtts := pingPong(b, x, y, b.N)
	b.ReportMetric(float64(quantile(rtts, 0.5).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(quantile(rtts, 0.99).Nanoseconds()), "p99-ns")
}

// perftestIters is the round trips of each side of the comparison.
const perftestIters = 500

// BenchmarkRTTvsIBWriteLat measures, in one run on one device, the verbs
// transport's round trip and perftest's ib_write_lat at the same message
// size, and reports their ratio at p50 and p99. ib_write_lat reports half
// a round trip, so its figures are doubled. Under QEMU TCG (the kvmbox)
// the absolute figures mean nothing; only the ratio is worth reading.
func BenchmarkRTTvsIBWriteLat(b *testing.B) {
	p := newProvider(b)
	tool, err := exec.LookPath("ib_write_lat")
	if err != nil {
		testutil.SkipMissing(b, fmt.Errorf("ib_write_lat is not installed (apt-get install perftest): %v", err), testutil.RDMA)
	}
	x, y := pair(b, p, 4096, 4096)
	for i := 0; i < b.N; i++ {
		pingPong(b, x, y, 100)
		rtts := pingPong(b, x, y, perftestIters)
		ours50, ours99 := quantile(rtts, 0.5), quantile(rtts, 0.99)
		typ, p99 := runIBWriteLat(b, tool, p)
		ib50, ib99 := 2*typ, 2*p99
		b.ReportMetric(float64(ours50.Nanoseconds()), "verbs-p50-ns")
		b.ReportMetric(float64(ours99.Nanoseconds()), "verbs-p99-ns")
		b.ReportMetric(float64(ib50.Nanoseconds()), "ib_write_lat-p50-ns")
		b.ReportMetric(float64(ib99.Nanoseconds()), "ib_write_lat-p99-ns")
		b.ReportMetric(float64(ours50)/float64(ib50), "p50-ratio")
		b.ReportMetric(float64(ours99)/float64(ib99), "p99-ratio")
		b.Logf("RTT of %d bytes, %d round trips: verbs p50 %v p99 %v; ib_write_lat (2 x its one-way figure) p50 %v p99 %v; ratio p50 %.2f p99 %.2f (TCG: correctness-grade, only the ratio means anything)",
			rttMsgSize, perftestIters, ours50, ours99, ib50, ib99, float64(ours50)/float64(ib50), float64(ours99)/float64(ib99))
	}
}

// ibLatLine matches ib_write_lat's result line: bytes, iterations, t_min,
// t_max, t_typical, t_avg, t_stdev, 99%, 99.9% (microseconds).
var ibLatLine = regexp.MustCompile(`^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$`)

// runIBWriteLat runs an ib_write_lat server and client on the provider's
// device, port and GID, and returns the client's typical and 99th
// percentile one-way latencies.
func runIBWriteLat(b *testing.B, tool string, p *Provider) (typical, p99 time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"-d", p.cfg.Device, "-i", strconv.Itoa(p.cfg.Port), "-x", strconv.Itoa(p.gidIndex),
		"-s", strconv.Itoa(rttMsgSize), "-n", strconv.Itoa(perftestIters), "-F", "-p", "18515"}
	env := os.Environ()
	if drv := os.Getenv("FTVM_RDMAV_DRIVERS"); drv != "" {
		// In the kvmbox, ib_write_lat's libibverbs finds the provider it
		// dlopens here (the test binary has it linked in).
		env = append(env, "RDMAV_DRIVERS="+drv)
	}
	server := exec.CommandContext(ctx, tool, args...)
	server.Env = env
	var serverOut strings.Builder
	server.Stdout, server.Stderr = &serverOut, &serverOut
	if err := server.Start(); err != nil {
		b.Fatalf("starting %s: %v", tool, err)
	}
	defer server.Wait()
	defer server.Process.Kill()
	var out []byte
	var err error
	for try := 0; try < 50; try++ { // until the server listens
		time.Sleep(100 * time.Millisecond)
		client := exec.CommandContext(ctx, tool, append(args, "127.0.0.1")...)
		client.Env = env
		out, err = client.CombinedOutput()
		if err == nil {
			break
		}
	}
	if err != nil {
		b.Fatalf("ib_write_lat client: %v\n%s\nserver:\n%s", err, out, serverOut.String())
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		m := ibLatLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != strconv.Itoa(rttMsgSize) {
			continue
		}
		us := func(s string) time.Duration {
			f, _ := strconv.ParseFloat(s, 64)
			return time.Duration(f * float64(time.Microsecond))
		}
		return us(m[5]), us(m[8])
	}
	b.Fatalf("no result line for %d bytes in ib_write_lat's output:\n%s", rttMsgSize, out)
	return 0, 0
}
