//go:build ftvm_rdma && cgo && linux

package verbs

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
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

// spinForever makes recvOne spin on Poll and never block, as perftest's
// latency tests do.
const spinForever = -1

// recvOne returns the next imm on l: it spins on Poll for spin, then
// blocks in Wait (the daemon's way, with rdma.DefaultWaitSpin), or spins
// without end for spinForever.
func recvOne(l rdma.Link, buf []uint32, spin time.Duration) (uint32, error) {
	for {
		start := time.Now()
		for {
			k, err := l.Poll(buf)
			if err != nil {
				return 0, err
			}
			if k == 1 {
				return buf[:1][0], nil
			}
			if spin >= 0 && time.Since(start) > spin {
				break
			}
		}
		if err := l.Wait(time.Second); err != nil {
			return 0, err
		}
	}
}

// pingPong measures n round trips of an rttMsgSize WRITE_WITH_IMM from a
// to b and back, b answering from its own goroutine, both receiving with
// recvOne(spin). It returns the sorted round-trip times.
func pingPong(tb testing.TB, a, b rdma.Link, n int, spin time.Duration) []time.Duration {
	tb.Helper()
	echoErr := make(chan error, 1)
	go func() {
		buf := make([]uint32, 0, 1)
		for i := 0; i < n; i++ {
			imm, err := recvOne(b, buf, spin)
			if err == nil {
				err = b.WriteImm(0, rttMsgSize, imm)
			}
			if err != nil {
				echoErr <- err
				return
			}
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
		imm, err := recvOne(a, buf, spin)
		if err != nil {
			tb.Fatal(err)
		}
		rtts[i] = time.Since(t0)
		if imm != uint32(i) {
			tb.Fatalf("echo %d, want %d", imm, i)
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
// over the verbs transport, two endpoints of one device in one process;
// "spin" receives by spinning on Poll, "wait" as the daemon does (spin
// rdma.DefaultWaitSpin, then Wait). ns/op is the mean round trip; p50 and
// p99 are reported beside it.
func BenchmarkRTT(b *testing.B) {
	for _, mode := range []struct {
		name string
		spin time.Duration
	}{{"spin", spinForever}, {"wait", rdma.DefaultWaitSpin}} {
		b.Run(mode.name, func(b *testing.B) {
			p := newProvider(b)
			x, y := pair(b, p, 4096, 4096)
			pingPong(b, x, y, 50, mode.spin) // warm up
			b.ResetTimer()
			rtts := pingPong(b, x, y, b.N, mode.spin)
			b.ReportMetric(float64(quantile(rtts, 0.5).Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(quantile(rtts, 0.99).Nanoseconds()), "p99-ns")
		})
	}
}

// perftestIters is the round trips of each side of the comparison.
const perftestIters = 500

// BenchmarkRTTvsIBWriteLat measures, in one run on one device, perftest's
// ib_write_lat and the verbs transport's round trip at the same message
// size, the transport both spinning on Poll (as ib_write_lat spins) and
// receiving as the daemon does (spin rdma.DefaultWaitSpin, then Wait), and
// reports the ratios at p50 and p99. ib_write_lat reports half a round
// trip, so its figures are doubled. Under QEMU TCG (the kvmbox) the
// absolute figures mean nothing; only the ratios are worth reading, and
// they too are correctness-grade.
func BenchmarkRTTvsIBWriteLat(b *testing.B) {
	p := newProvider(b)
	tool, err := exec.LookPath("ib_write_lat")
	if err != nil {
		testutil.SkipMissing(b, fmt.Errorf("ib_write_lat is not installed (apt-get install perftest): %v", err), testutil.RDMA)
	}
	x, y := pair(b, p, 4096, 4096)
	for i := 0; i < b.N; i++ {
		typ, p99 := runIBWriteLat(b, tool, p)
		ib50, ib99 := 2*typ, 2*p99
		b.ReportMetric(float64(ib50.Nanoseconds()), "ib_write_lat-p50-ns")
		b.ReportMetric(float64(ib99.Nanoseconds()), "ib_write_lat-p99-ns")
		for _, mode := range []struct {
			name  string
			spin  time.Duration
			procs bool
		}{
			{"spin", spinForever, false}, {"wait", rdma.DefaultWaitSpin, false},
			{"spin-2proc", spinForever, true}, {"wait-2proc", rdma.DefaultWaitSpin, true},
		} {
			var rtts []time.Duration
			if mode.procs {
				rtts = pingPongChild(b, p, perftestIters, mode.name, mode.spin)
			} else {
				pingPong(b, x, y, 50, mode.spin)
				rtts = pingPong(b, x, y, perftestIters, mode.spin)
			}
			ours50, ours99 := quantile(rtts, 0.5), quantile(rtts, 0.99)
			r50, r99 := float64(ours50)/float64(ib50), float64(ours99)/float64(ib99)
			b.ReportMetric(float64(ours50.Nanoseconds()), mode.name+"-p50-ns")
			b.ReportMetric(float64(ours99.Nanoseconds()), mode.name+"-p99-ns")
			b.ReportMetric(r50, mode.name+"-p50-ratio")
			b.ReportMetric(r99, mode.name+"-p99-ratio")
			b.Logf("RTT of %d bytes, %d round trips: verbs (%s) p50 %v p99 %v; ib_write_lat (2 x its one-way figure) p50 %v p99 %v; ratio p50 %.2f p99 %.2f (under TCG: correctness-grade)",
				rttMsgSize, perftestIters, mode.name, ours50, ours99, ib50, ib99, r50, r99)
		}
	}
}

// pingPongChild is pingPong with the echo in a child process, as
// ib_write_lat's two processes are, each with GOMAXPROCS 1 while it
// measures (ib_write_lat's processes are single-threaded).
func pingPongChild(b *testing.B, p *Provider, n int, name string, spin time.Duration) []time.Duration {
	b.Helper()
	mode := "echo-spin"
	if spin != spinForever {
		mode = "echo-wait"
	}
	l, child := startChild(b, p, fmt.Sprintf("%s:%d", mode, n), "GOMAXPROCS=1")
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	rtts := make([]time.Duration, n)
	buf := make([]uint32, 0, 1)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := l.WriteImm(0, rttMsgSize, uint32(i)); err != nil {
			b.Fatal(err)
		}
		imm, err := recvOne(l, buf, spin)
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		rtts[i] = time.Since(t0)
		if imm != uint32(i) {
			b.Fatalf("%s: echo %d, want %d", name, imm, i)
		}
	}
	if err := child(); err != nil {
		b.Fatalf("%s: child: %v", name, err)
	}
	slices.Sort(rtts)
	return rtts
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
